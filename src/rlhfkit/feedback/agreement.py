"""Inter-annotator agreement: Krippendorff's alpha, Kendall's tau, consensus.

Pure Python, no database: the labeling service's admin page and export call
these on labels read back from the store.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

Level = Literal["nominal", "ordinal", "interval"]
LEVELS = ("nominal", "ordinal", "interval")


def krippendorff_alpha(units: Iterable[Sequence[Hashable]], level: Level = "nominal") -> float:
    """Krippendorff's alpha over ``units``, each the values the coders gave one unit
    (missing values left out). Krippendorff (2011), "Computing Krippendorff's
    Alpha-Reliability":

        alpha = 1 - (n - 1) * sum_ck o_ck d2(c, k) / sum_ck n_c n_k d2(c, k)

    where ``o`` is the coincidence matrix (each unit with m >= 2 values adds
    1 / (m - 1) for every ordered pair of its values from different coders),
    ``n_c`` its margins and ``n`` their total. ``d2`` is 0/1 (nominal),
    ``(c - k)^2`` (interval), or for ordinal values
    ``(sum_{g from c to k} n_g - (n_c + n_k) / 2)^2``. Units with fewer than two
    values cannot be paired and are dropped. Returns NaN when there is nothing to
    compare or every value is the same (no variation: alpha is undefined).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    o: Counter[tuple[Hashable, Hashable]] = Counter()
    for unit in units:
        values = list(unit)
        m = len(values)
        if m < 2:
            continue
        for i, c in enumerate(values):
            for j, k in enumerate(values):
                if i != j:
                    o[(c, k)] += 1.0 / (m - 1)
    n_c: Counter[Hashable] = Counter()
    for (c, _), w in o.items():
        n_c[c] += w
    n = sum(n_c.values())
    if n <= 1:
        return math.nan
    d2 = _distance(level, n_c)
    observed = sum(w * d2(c, k) for (c, k), w in o.items())
    expected = sum(n_c[c] * n_c[k] * d2(c, k) for c in n_c for k in n_c)
    if expected == 0:
        return math.nan
    return 1.0 - (n - 1) * observed / expected


def _distance(level: Level, n_c: Counter[Hashable]):
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: (float(c) - float(k)) ** 2  # type: ignore[arg-type]
    order = sorted(n_c)  # type: ignore[type-var]
    cumulative = {}
    running = 0.0
    for v in order:
        cumulative[v] = (running, running + n_c[v])  # mass before v, through v
        running += n_c[v]

    def ordinal(c: Hashable, k: Hashable) -> float:
        if c == k:
            return 0.0
        lo, hi = (c, k) if order.index(c) < order.index(k) else (k, c)
        between = cumulative[hi][1] - cumulative[lo][0]  # sum of n_g for g in [lo, hi]
        return (between - (n_c[c] + n_c[k]) / 2.0) ** 2

    return ordinal


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two rankings of the same items (ties allowed):
    ``(P - Q) / sqrt((P + Q + T_x) (P + Q + T_y))`` with P concordant and Q
    discordant pairs, T_x pairs tied only in x, T_y only in y (Kendall 1945).
    NaN when either side is all ties."""
    if len(x) != len(y):
        raise ValueError(f"rankings of different lengths: {len(x)} and {len(y)}")
    p = q = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                p += 1
            else:
                q += 1
    denom = math.sqrt((p + q + tx) * (p + q + ty))
    return (p - q) / denom if denom else math.nan


def majority(values: Iterable[Hashable]) -> Hashable | None:
    """The most common value, or None when two or more share the top count."""
    top = Counter(values).most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]


def mean_ranks(rankings: Sequence[Sequence[int]]) -> list[float]:
    """Each item's mean rank over ``rankings`` (1 = best)."""
    if not rankings:
        raise ValueError("mean_ranks needs at least one ranking")
    k = len(rankings[0])
    return [sum(r[i] for r in rankings) / len(rankings) for i in range(k)]


def dense_ranks(scores: Sequence[float], higher_is_better: bool = False) -> list[int]:
    """Dense ranks 1..: equal scores share a rank (``scores`` are mean ranks by default)."""
    distinct = sorted(set(scores), reverse=higher_is_better)
    position = {v: i + 1 for i, v in enumerate(distinct)}
    return [position[v] for v in scores]


def mean(values: Iterable[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan
