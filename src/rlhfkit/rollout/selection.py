"""Which of K scored samples per prompt to keep: the selection step that rejection
sampling, best-of-n, ReST and HIR share.

Pure functions of the scores (lists of floats, one list per prompt). Tie rule,
everywhere: among equal scores the earlier sample wins (stable order), so a run is
deterministic given its samples. A NaN score is never kept.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

KEEP_RULES = ("best", "top_fraction", "all")
THRESHOLD_MODES = ("value", "quantile")


def ranked(scores: Sequence[float]) -> list[int]:
    """Indices of ``scores`` from the highest to the lowest, ties in sample order,
    NaN scores left out."""
    valid = [i for i, s in enumerate(scores) if not math.isnan(s)]
    return sorted(valid, key=lambda i: -scores[i])


def best_of(scores: Sequence[float]) -> int | None:
    """The index of the highest score (the first of equal ones); None when every score
    is NaN or there are none. Best-of-K: Llama 2's rejection sampling, Nakano et al.'s
    best-of-n."""
    order = ranked(scores)
    return order[0] if order else None


def top_fraction(scores: Sequence[float], fraction: float) -> list[int]:
    """The ``ceil(fraction * K)`` highest-scoring samples (at least one), best first;
    equal scores at the cut go to the earlier samples."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, math.ceil(fraction * len(scores) - 1e-9))
    return ranked(scores)[:n]


def at_least(scores: Sequence[float], threshold: float) -> list[int]:
    """Indices whose score is ``>= threshold``, in sample order."""
    return [i for i, s in enumerate(scores) if not math.isnan(s) and s >= threshold]


@dataclass(frozen=True)
class SelectionRule:
    """``keep``: ``best`` (one per prompt), ``top_fraction`` (the best ``fraction`` of
    the K) or ``all``; then, when ``threshold`` is set, only scores ``>= threshold``."""

    keep: str = "best"
    fraction: float = 1.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"keep must be one of {KEEP_RULES}, got {self.keep!r}")

    def apply(self, scores: Sequence[float]) -> list[int]:
        """The kept indices of one prompt's samples, best first (``all``: sample order)."""
        if self.keep == "best":
            best = best_of(scores)
            kept = [] if best is None else [best]
        elif self.keep == "top_fraction":
            kept = top_fraction(scores, self.fraction)
        else:
            kept = [i for i, s in enumerate(scores) if not math.isnan(s)]
        if self.threshold is not None:
            kept = [i for i in kept if scores[i] >= self.threshold]
        return kept


def select(groups: Sequence[Sequence[float]], rule: SelectionRule) -> list[list[int]]:
    """``rule`` applied to each prompt's scores."""
    return [rule.apply(g) for g in groups]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` with linear interpolation between order
    statistics (numpy's default): position ``q * (n - 1)`` in the sorted values.
    NaNs are ignored."""
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    xs = sorted(v for v in values if not math.isnan(v))
    if not xs:
        raise ValueError("quantile of no values")
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def check_schedule(thresholds: Sequence[float], mode: str) -> None:
    """ReST's schedule: one threshold per Improve step, never decreasing (Gulcehre et al.
    2023, Algorithm 1: ``tau_{i+1} > tau_i``; equal steps are allowed here). Quantiles
    must lie in [0, 1]."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    if not thresholds:
        raise ValueError("the schedule needs at least one threshold (one per Improve step)")
    for a, b in itertools.pairwise(thresholds):
        if b < a:
            raise ValueError(f"thresholds must not decrease: {a} then {b}")
    if mode == "quantile" and not all(0 <= t <= 1 for t in thresholds):
        raise ValueError(f"quantile thresholds must lie in [0, 1], got {list(thresholds)}")


def resolve_thresholds(
    thresholds: Sequence[float], mode: str, rewards: Sequence[float]
) -> list[float]:
    """The reward thresholds of the Improve steps: the values themselves (``value``), or
    those quantiles of the Grow dataset's rewards (``quantile``: scale-free, so the same
    schedule suits a reward model's logits and a 0/1 checker)."""
    check_schedule(thresholds, mode)
    if mode == "value":
        return [float(t) for t in thresholds]
    return [quantile(rewards, t) for t in thresholds]
