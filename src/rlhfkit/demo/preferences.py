"""Synthetic preference data on the built-in task: candidates judged by simulated labelers.

Used by tests and benchmarks before a policy exists; the demo samples the
candidates from the SFT policy instead.
"""

from __future__ import annotations

import random

from rlhfkit.data.types import PreferenceRecord, RankingRecord
from rlhfkit.demo.task import SimulatedLabeler, Task, TaskPrompt


def synthetic_preferences(
    task: Task,
    split: str = "train",
    n: int = 1000,
    dimensions: tuple[str, ...] = ("helpfulness",),
    k: int = 2,
    temperature: float = 0.1,
    noise: float = 0.0,
    seed: int = 0,
    kind: str | None = None,
    balanced: bool = False,
    distinct: bool = True,
) -> list[PreferenceRecord | RankingRecord]:
    """``n`` records per dimension: pairs (``k == 2``) or rankings of ``k`` candidates.

    Candidates come from :meth:`Task.candidates` of prompts of ``split`` (and
    ``kind``, if given): ``k`` of them with distinct gold scores on the dimension, so
    every record carries a preference. By default they are drawn uniformly from the
    candidates; ``balanced`` draws ``k`` distinct quality levels uniformly first, so
    every contrast is equally common (a harder set: half its arithmetic pairs can
    only be told apart by checking the sum).

    ``distinct=False`` (rankings) draws ``k`` of a prompt's candidates whatever their
    gold scores, all of them when it has fewer, as InstructGPT's labelers ranked 4-9
    sampled responses: an arithmetic prompt has 11 candidates on 4 quality levels,
    so ``k = 9`` puts nearly every contrast of one prompt in one record, and responses
    of equal quality are ranked by the labeler's noise.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, not {k}")
    if balanced and not distinct:
        raise ValueError("balanced draws distinct quality levels: it needs distinct=True")
    rng = random.Random(f"rlhfkit-prefs:{split}:{seed}")
    prompts = task.prompts(split, kind)  # type: ignore[arg-type]
    out: list[PreferenceRecord | RankingRecord] = []
    for d_i, dim in enumerate(dimensions):
        labeler = SimulatedLabeler(
            task, dim, temperature=temperature, noise=noise, seed=seed * 31 + d_i
        )
        if distinct and k > 2:
            levels = quality_levels(task, dim, prompts)
            if levels < k:
                raise ValueError(
                    f"k={k}: no {split} prompt has {k} candidates of distinct {dim} "
                    f"(at most {levels}); pass distinct=False to rank candidates of equal quality"
                )
        made = 0
        while made < n:
            p = rng.choice(prompts)
            candidates = task.candidates(p)
            if not distinct:
                picked = rng.sample(candidates, min(k, len(candidates)))
            else:
                scored = [(labeler.score(p, c), c) for c in candidates]
                pick = _balanced_pick if balanced else _distinct_pick
                picked = pick(rng, scored, k)
            if picked is None:
                continue
            if k == 2:
                rec = labeler.preference(p, picked[0], picked[1])
                if rec is None:
                    continue
                out.append(rec)
            else:
                out.append(labeler.ranking(p, picked))
            made += 1
    return out


def quality_levels(task: Task, dimension: str, prompts: list[TaskPrompt]) -> int:
    """The most distinct gold scores on ``dimension`` among one prompt's candidates:
    the largest ``k`` that :func:`synthetic_preferences` draws with ``distinct=True``."""
    return max(
        len({float(getattr(task.gold(p, c), dimension)) for c in task.candidates(p)})
        for p in prompts
    )


def _balanced_pick(rng: random.Random, scored: list[tuple[float, str]], k: int) -> list[str] | None:
    levels: dict[float, list[str]] = {}
    for score, text in scored:
        levels.setdefault(score, []).append(text)
    if len(levels) < k:
        return None
    chosen = rng.sample(sorted(levels), k)
    return [rng.choice(levels[level]) for level in chosen]


def _distinct_pick(rng: random.Random, scored: list[tuple[float, str]], k: int) -> list[str] | None:
    if len({score for score, _ in scored}) < k:
        return None
    while True:
        picked = rng.sample(scored, k)
        if len({score for score, _ in picked}) == k:
            return [text for _, text in picked]
