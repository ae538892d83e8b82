"""What the admin pages show: annotator progress, flags, agreement, gold accuracy,
and a leaderboard of the policies that wrote the responses."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from rlhfkit.feedback.agreement import kendall_tau, krippendorff_alpha, majority, mean, mean_ranks
from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.reading import FIRST, SECOND, Label, LabeledTask, iter_labeled_tasks
from rlhfkit.feedback.store.schema import (
    FLAG,
    PAIRWISE,
    Annotator,
    Assignment,
    Judgment,
    Prompt,
    Task,
)
from rlhfkit.feedback.store.work import live_judgment


@dataclass
class AnnotatorRow:
    id: int
    name: str
    is_admin: bool
    active: bool
    counts: dict[str, int]
    median_seconds: float | None
    last_active: str | None


def annotator_rows(store: Store) -> list[AnnotatorRow]:
    with store.read() as s:
        counts: dict[int, dict[str, int]] = {}
        for aid, status, n in s.execute(
            select(Assignment.annotator_id, Assignment.status, func.count()).group_by(
                Assignment.annotator_id, Assignment.status
            )
        ):
            counts.setdefault(aid, {})[status] = n
        times: dict[int, list[int]] = {}
        last: dict[int, Any] = {}
        for aid, ms, at in s.execute(
            select(Judgment.annotator_id, Judgment.time_spent_ms, Judgment.created_at).where(
                live_judgment()
            )
        ):
            times.setdefault(aid, []).append(ms)
            last[aid] = max(last.get(aid, at), at)
        return [
            AnnotatorRow(
                a.id,
                a.name,
                a.is_admin,
                a.active,
                counts.get(a.id, {}),
                statistics.median(times[a.id]) / 1000 if a.id in times else None,
                last[a.id].strftime("%Y-%m-%d %H:%M UTC") if a.id in last else None,
            )
            for a in s.scalars(select(Annotator).order_by(Annotator.id))
        ]


def flags(store: Store, limit: int = 200) -> list[dict[str, Any]]:
    with store.read() as s:
        rows = s.execute(
            select(Judgment, Annotator.name, Prompt.conversation)
            .join(Annotator, Annotator.id == Judgment.annotator_id)
            .join(Task, Task.id == Judgment.task_id)
            .join(Prompt, Prompt.id == Task.prompt_id)
            .where(Judgment.action == FLAG, live_judgment())
            .order_by(Judgment.created_at.desc())
            .limit(limit)
        ).all()
        return [
            {
                "task": j.task_id,
                "annotator": name,
                "reason": j.reason,
                "prompt": conv[-1]["content"],
                "at": j.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            }
            for j, name, conv in rows
        ]


# ---------------------------------------------------------------- agreement


@dataclass
class Agreement:
    """Per dimension: alpha of the pairwise choice (nominal) and of the signed
    margin (ordinal, -4..4), alpha of ranks (ordinal, one unit per response),
    and per annotator their agreement with the others' consensus."""

    dimensions: list[str]
    choice_alpha: dict[str, float] = field(default_factory=dict)
    margin_alpha: dict[str, float] = field(default_factory=dict)
    rank_alpha: dict[str, float] = field(default_factory=dict)
    pairwise_units: dict[str, int] = field(default_factory=dict)
    ranking_units: dict[str, int] = field(default_factory=dict)
    # annotator -> dimension -> {"pairwise": share agreeing, "tau": mean Kendall tau, "n": ...}
    per_annotator: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # annotator -> {"correct", "total", "tau"} on gold tasks
    gold: dict[str, dict[str, float]] = field(default_factory=dict)


def agreement(store: Store) -> Agreement:
    dims = list(store.settings()["dimensions"])
    result = Agreement(dimensions=dims)
    choice: dict[str, list[list[str]]] = {d: [] for d in dims}
    signed: dict[str, list[list[int]]] = {d: [] for d in dims}
    ranks: dict[str, list[list[int]]] = {d: [] for d in dims}
    vs: dict[tuple[str, str], dict[str, list[float]]] = {}
    gold: dict[str, dict[str, list[float]]] = {}
    for task in iter_labeled_tasks(store):
        for dim in dims:
            labels = task.for_dimension(dim)
            if task.is_gold and task.gold and dim in task.gold:
                _score_gold(task, task.gold[dim], labels, gold)
            if task.is_gold or len(labels) < 2:
                continue
            if task.kind == PAIRWISE:
                choice[dim].append([lab.outcome for lab in labels])  # type: ignore[misc]
                signed[dim].append([lab.signed for lab in labels])
            else:
                for i in range(len(task.responses)):
                    ranks[dim].append([lab.ranks[i] for lab in labels])  # type: ignore[index]
            _versus_others(dim, labels, task.kind, vs)
    for dim in dims:
        result.choice_alpha[dim] = krippendorff_alpha(choice[dim], "nominal")
        result.margin_alpha[dim] = krippendorff_alpha(signed[dim], "ordinal")
        result.rank_alpha[dim] = krippendorff_alpha(ranks[dim], "ordinal")
        result.pairwise_units[dim] = len(choice[dim])
        result.ranking_units[dim] = len(ranks[dim])
    for (name, dim), got in sorted(vs.items()):
        result.per_annotator.setdefault(name, {})[dim] = {
            "pairwise": mean(got["agree"]),
            "pairwise_n": len(got["agree"]),
            "tau": mean(got["tau"]),
            "tau_n": len(got["tau"]),
        }
    for name, got in sorted(gold.items()):
        result.gold[name] = {
            "correct": sum(got["correct"]),
            "total": len(got["correct"]),
            "accuracy": mean(got["correct"]),
            "tau": mean(got["tau"]),
        }
    return result


def _versus_others(
    dim: str, labels: list[Label], kind: str, vs: dict[tuple[str, str], dict[str, list[float]]]
) -> None:
    """Each label against the consensus of the other labels of the same task."""
    for i, lab in enumerate(labels):
        others = labels[:i] + labels[i + 1 :]
        got = vs.setdefault((lab.annotator, dim), {"agree": [], "tau": []})
        if kind == PAIRWISE:
            consensus = majority(o.outcome for o in others)
            if consensus is not None:
                got["agree"].append(float(lab.outcome == consensus))
        else:
            consensus_ranks = mean_ranks([o.ranks for o in others if o.ranks])
            tau = kendall_tau(lab.ranks or (), consensus_ranks)
            if not math.isnan(tau):
                got["tau"].append(tau)


def _score_gold(
    task: LabeledTask,
    answer: list[int],
    labels: list[Label],
    gold: dict[str, dict[str, list[float]]],
) -> None:
    for lab in labels:
        got = gold.setdefault(lab.annotator, {"correct": [], "tau": []})
        if task.kind == PAIRWISE:
            expected = FIRST if answer[0] < answer[1] else SECOND
            got["correct"].append(float(lab.outcome == expected))
        elif lab.ranks is not None:
            tau = kendall_tau(lab.ranks, answer)
            got["tau"].append(tau)
            got["correct"].append(float(lab.ranks.index(min(lab.ranks)) == answer.index(1)))


# ---------------------------------------------------------------- leaderboard


def policy_comparisons(store: Store, dimension: str):
    """Every labeled preference between responses of two different policies, as
    :class:`~rlhfkit.feedback.aggregate.Comparison` (ties and "both bad" count half)."""
    from rlhfkit.feedback.aggregate import Comparison

    out = []
    for task in iter_labeled_tasks(store, include_gold=False):
        policies = [p or "(unknown)" for p in task.policies]
        for lab in task.for_dimension(dimension):
            if lab.ranks is not None:
                r = lab.ranks
                pairs = [(i, j) for i in range(len(r)) for j in range(i + 1, len(r))]
                outcomes = [0.5 if r[i] == r[j] else float(r[i] < r[j]) for i, j in pairs]
            else:
                pairs = [(0, 1)]
                outcomes = [{FIRST: 1.0, SECOND: 0.0}.get(lab.outcome or "", 0.5)]
            for (i, j), outcome in zip(pairs, outcomes, strict=True):
                if policies[i] != policies[j]:
                    out.append(Comparison(policies[i], policies[j], outcome))
    return out


def policy_leaderboard(store: Store, dimension: str, bootstrap: int = 100) -> list[dict[str, Any]]:
    from rlhfkit.feedback.aggregate import leaderboard

    comparisons = policy_comparisons(store, dimension)
    return leaderboard(comparisons, bootstrap=bootstrap) if comparisons else []
