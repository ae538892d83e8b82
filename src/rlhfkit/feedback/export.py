"""Export labels as training data that ``rlhfkit rm`` and ``rlhfkit dpo`` read unchanged.

Formats (one JSON object per line):

- ``preference``: ``{"prompt", "chosen", "rejected", "margin_label" | "margin", "dimension"}``;
  a ranking becomes its C(K,2) ordered pairs (``margin`` = rank gap);
- ``ranking``: ``{"prompt", "responses", "rank", "dimension"}``; a pairwise
  label is a ranking of two;
- ``hh``: Anthropic HH-style ``{"chosen", "rejected"}`` transcripts
  (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``).

Per task, the annotators' labels are combined by ``majority`` vote (pairwise:
the side most annotators preferred; ranking: responses ordered by mean rank) or
by a ``bt`` Bradley-Terry fit over all their pairwise preferences; ``raw`` writes
one row per annotator instead (with ``annotator`` and ``judgment`` fields).
Ties, "both bad" and tasks without a majority carry no preference and are
counted, not written. Rows are written as tasks are read (pages of 500 tasks)
to a temporary file that replaces ``out`` at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.types import DIMENSIONS, MARGIN_LABELS, Message, RankingRecord
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.agreement import dense_ranks, majority, mean_ranks
from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.reading import FIRST, SECOND, Label, LabeledTask, iter_labeled_tasks
from rlhfkit.feedback.store.schema import PAIRWISE

Format = Literal["preference", "ranking", "hh"]
Consensus = Literal["majority", "bt", "raw"]
FORMATS = ("preference", "ranking", "hh")
CONSENSUS = ("majority", "bt", "raw")


@dataclass
class ExportSummary:
    tasks: int = 0
    rows: int = 0
    no_preference: int = 0  # tasks (or raw labels) with a tie, both bad or no majority

    def __str__(self) -> str:
        return (
            f"{self.rows} rows from {self.tasks} labeled tasks "
            f"({self.no_preference} without a preference left out)"
        )


@dataclass(frozen=True)
class _Ordered:
    """One exportable result: responses in task order with ranks, plus provenance."""

    ranks: list[int]
    margin_label: str | None
    extra: dict[str, Any]


def export_labels(
    store: Store,
    out: str | Path,
    *,
    format: Format = "preference",
    dimension: str = "helpfulness",
    consensus: Consensus = "majority",
    include_gold: bool = False,
) -> ExportSummary:
    """Write the labels of ``dimension`` to ``out``; returns what was written."""
    if format not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if dimension not in DIMENSIONS:
        raise ConfigError(
            f"--dimension: expected one of {', '.join(DIMENSIONS)}, got {dimension!r}"
        )
    if consensus not in CONSENSUS:
        raise ConfigError(f"--consensus: expected one of {', '.join(CONSENSUS)}, got {consensus!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    summary = ExportSummary()
    with tmp.open("w", encoding="utf-8") as f:
        for task in iter_labeled_tasks(store, include_gold=include_gold):
            labels = task.for_dimension(dimension)
            if not labels:
                continue
            summary.tasks += 1
            for row in export_rows(task, labels, format, dimension, consensus, summary):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                summary.rows += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return summary


def export_rows(
    task: LabeledTask,
    labels: list[Label],
    format: Format,
    dimension: str,
    consensus: Consensus,
    summary: ExportSummary,
) -> Iterator[dict[str, Any]]:
    if consensus == "raw":
        results = [r for r in (_single(task, lab) for lab in labels) if r is not None]
        summary.no_preference += len(labels) - len(results)
    else:
        combined = _combined(task, labels, consensus)
        results = [combined] if combined is not None else []
        summary.no_preference += combined is None
    prompt = tuple(Message(m["role"], m["content"]) for m in task.prompt)
    for result in results:
        extra = {"task": task.id, **result.extra}
        if task.kind == PAIRWISE and len(set(result.ranks)) == 2:
            winner = 0 if result.ranks[0] < result.ranks[1] else 1
            chosen, rejected = task.responses[winner], task.responses[1 - winner]
            yield from _pair_rows(
                prompt, chosen, rejected, result.margin_label, None, format, dimension, extra
            )
            continue
        record = RankingRecord(prompt, tuple(task.responses), tuple(result.ranks), dimension)
        if format == "ranking":
            yield {**record.to_dict(), **extra}
            continue
        for pair in record.pairs():
            yield from _pair_rows(
                prompt,
                task.responses[pair.better],
                task.responses[pair.worse],
                None,
                float(pair.gap),
                format,
                dimension,
                extra,
            )


def _pair_rows(
    prompt: tuple[Message, ...],
    chosen: str,
    rejected: str,
    margin_label: str | None,
    margin: float | None,
    format: Format,
    dimension: str,
    extra: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    size = {"margin_label": margin_label} if margin_label else {"margin": margin}
    if format == "hh":
        head = hh_transcript(prompt)
        yield {
            "chosen": f"{head}\n\nAssistant: {chosen}",
            "rejected": f"{head}\n\nAssistant: {rejected}",
            **size,
            "dimension": dimension,
            **extra,
        }
    elif format == "ranking":
        record = RankingRecord(prompt, (chosen, rejected), (1, 2), dimension)
        yield {**record.to_dict(), **extra}
    else:
        yield {
            "prompt": [m.as_dict() for m in prompt],
            "chosen": chosen,
            "rejected": rejected,
            **size,
            "dimension": dimension,
            **extra,
        }


def hh_transcript(prompt: tuple[Message, ...]) -> str:
    """``\\n\\nHuman: ...\\n\\nAssistant: ...`` (system and tool turns are written as Human)."""
    role = {"assistant": "Assistant"}
    return "".join(f"\n\nHuman: {m.content}" if role.get(m.role) is None else
                   f"\n\nAssistant: {m.content}" for m in prompt)  # fmt: skip


def _single(task: LabeledTask, lab: Label) -> _Ordered | None:
    extra = {"annotator": lab.annotator, "judgment": lab.judgment_id}
    if lab.ranks is not None:
        return _Ordered(list(lab.ranks), None, extra) if len(set(lab.ranks)) > 1 else None
    if lab.outcome not in (FIRST, SECOND):
        return None
    ranks = [1, 2] if lab.outcome == FIRST else [2, 1]
    return _Ordered(ranks, lab.margin, extra)


def _combined(task: LabeledTask, labels: list[Label], consensus: Consensus) -> _Ordered | None:
    extra = {"annotators": len(labels)}
    if consensus == "bt":
        ranks = bt_ranks(task, labels)
    elif task.kind == PAIRWISE:
        winner = majority(
            lab.outcome if lab.outcome in (FIRST, SECOND) else "none" for lab in labels
        )
        ranks = {FIRST: [1, 2], SECOND: [2, 1]}.get(winner)  # type: ignore[arg-type]
    else:
        ranks = dense_ranks(mean_ranks([lab.ranks for lab in labels if lab.ranks]))
    if ranks is None or len(set(ranks)) < 2:
        return None
    margin = None
    if task.kind == PAIRWISE:
        won = FIRST if ranks[0] < ranks[1] else SECOND
        margin = median_margin([lab.margin for lab in labels if lab.outcome == won and lab.margin])
    return _Ordered(ranks, margin, extra)


def median_margin(labels: list[str]) -> str | None:
    """The median margin label (the lower median: the smaller margin of the two)."""
    if not labels:
        return None
    ordered = sorted(labels, key=MARGIN_LABELS.index)
    return ordered[len(ordered) // 2]


def bt_ranks(task: LabeledTask, labels: list[Label]) -> list[int] | None:
    """Ranks from a Bradley-Terry fit over every annotator's pairwise preferences on
    the task's responses (ties count half); None when nothing was compared."""
    from rlhfkit.feedback.aggregate import Comparison, bradley_terry

    comparisons = []
    for lab in labels:
        if lab.ranks is not None:
            r = lab.ranks
            for i in range(len(r)):
                for j in range(i + 1, len(r)):
                    outcome = 0.5 if r[i] == r[j] else float(r[i] < r[j])
                    comparisons.append(Comparison(str(i), str(j), outcome))
        elif lab.outcome is not None:
            outcome = {FIRST: 1.0, SECOND: 0.0}.get(lab.outcome, 0.5)
            comparisons.append(Comparison("0", "1", outcome))
    if not comparisons:
        return None
    fit = bradley_terry(comparisons, l2=1e-3)
    scores = [round(fit.scores.get(str(i), 0.0), 6) for i in range(len(task.responses))]
    return dense_ranks(scores, higher_is_better=True)
