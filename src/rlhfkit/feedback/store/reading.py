"""Read labels back, task by task, in the task's own response order.

Judgments are stored as the annotator saw them (sides swapped, rankings
shuffled); :func:`iter_labeled_tasks` maps them back to the task's
``response_ids`` order and streams tasks in pages, so exports and reports of
large projects run in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from rlhfkit.data.types import MARGIN_LABELS
from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.schema import (
    JUDGE,
    PAIRWISE,
    Annotator,
    Judgment,
    Prompt,
    Response,
    Task,
)
from rlhfkit.feedback.store.work import live_judgment

PAGE = 500
FIRST, SECOND, TIE, BOTH_BAD = "first", "second", "tie", "both_bad"


@dataclass(frozen=True)
class Label:
    """One annotator's answer on one dimension, in task order.

    Pairwise: ``outcome`` is first / second / tie / both_bad and ``signed`` is the
    margin on a -4..4 scale (4 = the first response significantly better, 0 = no
    preference). Ranking: ``ranks`` aligned with the task's responses (1 = best).
    """

    judgment_id: str
    annotator: str
    dimension: str
    outcome: str | None = None
    signed: int = 0
    margin: str | None = None
    ranks: tuple[int, ...] | None = None


@dataclass
class LabeledTask:
    id: int
    kind: str
    is_gold: bool
    gold: dict[str, list[int]] | None
    prompt: list[dict[str, str]]
    responses: list[str]
    policies: list[str | None]
    labels: list[Label] = field(default_factory=list)

    def for_dimension(self, dimension: str) -> list[Label]:
        return [lab for lab in self.labels if lab.dimension == dimension]


def canonical_labels(
    judgment: Judgment, annotator: str, response_ids: list[int], kind: str
) -> list[Label]:
    """The judgment's answer per dimension, mapped from shown order to task order."""
    out = []
    shown = list(judgment.shown_order)
    for dim, value in (judgment.answer or {}).items():
        if kind == PAIRWISE:
            choice, margin = value["choice"], value.get("margin")
            if choice in ("A", "B"):
                winner = shown[0] if choice == "A" else shown[1]
                first = winner == response_ids[0]
                size = len(MARGIN_LABELS) - MARGIN_LABELS.index(margin)
                out.append(
                    Label(
                        judgment.id,
                        annotator,
                        dim,
                        outcome=FIRST if first else SECOND,
                        signed=size if first else -size,
                        margin=margin,
                    )
                )
            else:
                out.append(Label(judgment.id, annotator, dim, outcome=choice))
        else:
            ranks = tuple(value[shown.index(rid)] for rid in response_ids)
            out.append(Label(judgment.id, annotator, dim, ranks=ranks))
    return out


def iter_labeled_tasks(
    store: Store, *, include_gold: bool = True, only_labeled: bool = True
) -> Iterator[LabeledTask]:
    """Every task with its live judgments (skips and flags left out), by task id."""
    last = 0
    while True:
        with store.read() as s:
            query = select(Task).where(Task.id > last).order_by(Task.id).limit(PAGE)
            if not include_gold:
                query = query.where(Task.is_gold.is_(False))
            tasks = s.scalars(query).all()
            if not tasks:
                return
            last = tasks[-1].id
            yield from _page(s, tasks, only_labeled)


def _page(s, tasks: list[Task], only_labeled: bool) -> Iterator[LabeledTask]:
    ids = [t.id for t in tasks]
    rows = s.execute(
        select(Judgment, Annotator.name)
        .join(Annotator, Annotator.id == Judgment.annotator_id)
        .where(Judgment.task_id.in_(ids), Judgment.action == JUDGE, live_judgment())
        .order_by(Judgment.created_at, Judgment.id)
    ).all()
    by_task: dict[int, list[tuple[Judgment, str]]] = {}
    for j, name in rows:
        by_task.setdefault(j.task_id, []).append((j, name))
    if only_labeled:
        tasks = [t for t in tasks if t.id in by_task]
    if not tasks:
        return
    prompts = {
        p.id: p.conversation
        for p in s.scalars(select(Prompt).where(Prompt.id.in_({t.prompt_id for t in tasks})))
    }
    wanted = {rid for t in tasks for rid in t.response_ids}
    responses: dict[int, Any] = {
        r.id: r for r in s.scalars(select(Response).where(Response.id.in_(wanted)))
    }
    for t in tasks:
        item = LabeledTask(
            id=t.id,
            kind=t.kind,
            is_gold=t.is_gold,
            gold=t.gold,
            prompt=prompts[t.prompt_id],
            responses=[responses[rid].text for rid in t.response_ids],
            policies=[responses[rid].policy for rid in t.response_ids],
        )
        for j, name in by_task.get(t.id, []):
            item.labels.extend(canonical_labels(j, name, list(t.response_ids), t.kind))
        yield item
