"""Synthetic preference data on the built-in task: candidates judged by simulated labelers.

Used by tests and benchmarks before a policy exists; the demo samples the
candidates from the SFT policy instead.
"""

from __future__ import annotations

import random

from rlhfkit.data.types import PreferenceRecord, RankingRecord
from rlhfkit.demo.task import SimulatedLabeler, Task


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
) -> list[PreferenceRecord | RankingRecord]:
    """``n`` records per dimension: pairs (``k == 2``) or rankings of ``k`` candidates.

    Candidates come from :meth:`Task.candidates` of prompts of ``split`` (and
    ``kind``, if given): ``k`` of them with distinct gold scores on the dimension, so
    every record carries a preference. By default they are drawn uniformly from the
    candidates; ``balanced`` draws ``k`` distinct quality levels uniformly first, so
    every contrast is equally common (a harder set: half its arithmetic pairs can
    only be told apart by checking the sum).
    """
    rng = random.Random(f"rlhfkit-prefs:{split}:{seed}")
    prompts = task.prompts(split, kind)  # type: ignore[arg-type]
    out: list[PreferenceRecord | RankingRecord] = []
    for d_i, dim in enumerate(dimensions):
        labeler = SimulatedLabeler(
            task, dim, temperature=temperature, noise=noise, seed=seed * 31 + d_i
        )
        made = 0
        while made < n:
            p = rng.choice(prompts)
            scored = [(labeler.score(p, c), c) for c in task.candidates(p)]
            picked = _balanced_pick(rng, scored, k) if balanced else _distinct_pick(rng, scored, k)
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
