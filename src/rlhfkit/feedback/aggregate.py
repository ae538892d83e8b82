"""Turn many pairwise comparisons among many items into one scalar ranking.

An *item* is anything compared two at a time: responses to one prompt, or whole
models. Each :class:`Comparison` says which of two items won (or that they tied).
Two aggregators are provided:

* :func:`elo` — the online Elo system (Elo 1978), for quick display. Ratings are
  updated one game at a time, so the result **depends on the order** of the games.
* :func:`bradley_terry` — the maximum-likelihood Bradley–Terry model (Bradley &
  Terry 1952), which is order-independent and gives the scores to use as rewards.
  With ``bootstrap=N`` it also gives percentile confidence intervals, which is the
  approach of the Chatbot Arena leaderboard (Chiang et al. 2024).

:func:`leaderboard` combines both into rows for ``rlhfkit rank``;
:func:`format_leaderboard` renders them as a ``rich`` table.

Bradley–Terry model. Every item *i* has a log-strength ``s_i`` and::

    P(a beats b) = sigmoid(s_a - s_b) = 1 / (1 + exp(-(s_a - s_b)))

The fit minimizes the weighted binary cross-entropy, with a comparison's outcome
``y`` (1 = a wins, 0 = b wins, 0.5 = tie) used as a soft label — so a tie counts
as half a win each way — plus a tiny L2 penalty::

    L(s) = ( sum_k w_k [ -y_k log sigmoid(d_k) - (1 - y_k) log sigmoid(-d_k) ]
             + l2 * sum_i s_i^2 ) / sum_k w_k,          d_k = s_{a_k} - s_{b_k}

Only differences ``s_a - s_b`` are identifiable, so the scores are fixed to have
mean 0 (``s = theta - mean(theta)``). The penalty (a Gaussian prior with variance
``1 / (2 * l2)``, whatever the number of comparisons) exists only so that
separable data — an item that won every game — has a finite optimum. With the
default ``l2 = 1e-4`` (prior sd ~70 log-units) it shrinks the score of an item
with ``n`` games by a relative ~``8 * l2 / n``, far below its standard error.
The problem is strictly convex; it is solved by L-BFGS in float64. Near-separable,
sparse data (many items with one or two games) is the hard case: its scores are
large, set by ``l2``, and slow to converge (see ``BTResult.converged``); a larger
``l2`` (0.01 to 1) then gives a well-behaved regularized (MAP) fit instead.

Elo uses the same logistic curve in base 10: a BT score ``s`` is ``s * 400 /
ln(10) + 1000`` on the Elo scale (:func:`to_elo`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit.data.sources import Row, iter_rows
from rlhfkit.errors import MISSING, DataError, DataIssue, Location, field_issue

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "ELO_SCALE",
    "ELO_START",
    "BTResult",
    "Comparison",
    "bradley_terry",
    "comparisons_from_rows",
    "elo",
    "format_leaderboard",
    "leaderboard",
    "read_comparisons",
    "to_elo",
]

ELO_START = 1000.0
ELO_SCALE = 400.0 / math.log(10.0)  # one BT log-strength unit in Elo points (~173.7)

WINNERS = ("a", "b", "tie")
HINT = (
    "each comparison needs 'a', 'b' and 'winner' ('a', 'b' or 'tie'), or 'chosen' "
    "and 'rejected' (optionally 'tie': true); both may have a 'weight' > 0"
)
_ID = "an item id (a non-empty string or a number)"
_WEIGHT = "a positive finite number"

_GRAD_TOL = 1e-12  # L-BFGS stops when every preconditioned |dL/du| is below this
_CONVERGED_SE = 1e-4  # converged: gradient * sqrt(comparisons) (~ error / std. error) below this
_SINGLE_THREAD_MAX = 1 << 21  # fits with fewer (replicates x distinct pairs) use one thread


@dataclass(frozen=True)
class Comparison:
    """One pairwise judgment between items ``a`` and ``b``.

    ``outcome`` is the score of ``a``: 1.0 = a wins, 0.0 = b wins, 0.5 = tie (any
    value in [0, 1] is accepted as a soft label). ``weight`` > 0 scales its
    influence in both :func:`elo` and :func:`bradley_terry`.
    """

    a: str
    b: str
    outcome: float
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.a, str) or not isinstance(self.b, str):
            raise TypeError(f"item ids must be strings, got {self.a!r} and {self.b!r}")
        if self.a == self.b:
            raise ValueError(f"an item cannot be compared with itself: {self.a!r}")
        if not 0.0 <= self.outcome <= 1.0:  # also rejects NaN
            raise ValueError(f"outcome must be in [0, 1], got {self.outcome!r}")
        if not (self.weight > 0.0 and math.isfinite(self.weight)):
            raise ValueError(f"weight must be a positive finite number, got {self.weight!r}")

    def swapped(self) -> Comparison:
        """The same judgment with the two sides exchanged."""
        return Comparison(self.b, self.a, 1.0 - self.outcome, self.weight)


# ---------------------------------------------------------------- reading


def read_comparisons(source: str | Path, split: str = "train") -> list[Comparison]:
    """Read comparisons from any source :func:`~rlhfkit.data.sources.iter_rows` reads.

    Each row is either ``{"a": id, "b": id, "winner": "a" | "b" | "tie"}`` or
    ``{"chosen": id, "rejected": id}`` (chosen wins; ``"tie": true`` makes it a
    tie). Both accept an optional ``"weight"`` > 0. Ids are strings; numbers are
    converted to strings (``3`` and ``3.0`` both become ``"3"``).

    Raises :class:`~rlhfkit.errors.DataError` listing every bad row.
    """
    return comparisons_from_rows(iter_rows(source, split))


def comparisons_from_rows(rows: Iterable[Row]) -> list[Comparison]:
    """Validate ``(Location, row)`` pairs (as from ``iter_rows``) into comparisons."""
    comparisons: list[Comparison] = []
    issues: list[DataIssue] = []
    for loc, row in rows:
        if isinstance(row, DataIssue):
            issues.append(row)
            continue
        found = _parse_row(row, loc, issues)
        if found is not None:
            comparisons.append(found)
    if issues:
        raise DataError(issues, HINT)
    return comparisons


def _parse_row(row: dict[str, Any], loc: Location, issues: list[DataIssue]) -> Comparison | None:
    before = len(issues)
    if any(k in row for k in ("a", "b", "winner")):
        a = _item_id(row, "a", loc, issues)
        b = _item_id(row, "b", loc, issues)
        winner = row.get("winner", MISSING)
        outcome = {"a": 1.0, "b": 0.0, "tie": 0.5}.get(winner) if isinstance(winner, str) else None
        if outcome is None:
            expected = "one of " + ", ".join(f"'{w}'" for w in WINNERS)
            issues.append(field_issue(loc, "winner", expected, winner))
        first, second = "a", "b"
    elif any(k in row for k in ("chosen", "rejected")):
        a = _item_id(row, "chosen", loc, issues)
        b = _item_id(row, "rejected", loc, issues)
        tie = row.get("tie")
        if tie is not None and not isinstance(tie, bool):
            issues.append(field_issue(loc, "tie", "true or false", tie))
        outcome = 0.5 if tie is True else 1.0
        first, second = "chosen", "rejected"
    else:
        got = ", ".join(f"'{k}'" for k in row) or "no fields"
        issues.append(
            DataIssue(
                loc,
                f"expected fields 'a', 'b' and 'winner', or 'chosen' and 'rejected'; got {got}",
            )
        )
        return None
    weight = _weight(row, loc, issues)
    if a is not None and a == b:
        issues.append(field_issue(loc, second, f"an item different from '{first}'", row[second]))
    if len(issues) > before or a is None or b is None or outcome is None:
        return None
    return Comparison(a, b, outcome, weight)


def _item_id(row: dict[str, Any], key: str, loc: Location, issues: list[DataIssue]) -> str | None:
    value = row.get(key, MISSING)
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    issues.append(field_issue(loc, key, _ID, value))
    return None


def _weight(row: dict[str, Any], loc: Location, issues: list[DataIssue]) -> float:
    value = row.get("weight")
    if value is None:
        return 1.0
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return float(value)
    issues.append(field_issue(loc, "weight", _WEIGHT, value))
    return 1.0


# ---------------------------------------------------------------- Elo


def elo(
    comparisons: Iterable[Comparison],
    k: float = 32.0,
    base: float = 400.0,
    start: float = ELO_START,
) -> dict[str, float]:
    """Online Elo ratings (Elo 1978), processing ``comparisons`` in order.

    Every item starts at ``start``. For each comparison with score ``S`` of ``a``
    (1 win, 0 loss, 0.5 tie) and weight ``w``::

        E_a  = 1 / (1 + 10 ** ((R_b - R_a) / base))
        R_a += k * w * (S - E_a)
        R_b -= k * w * (S - E_a)

    so the winner gains exactly what the loser loses and the mean stays ``start``.
    The result is deterministic but **order-dependent**: the same games in another
    order give other ratings (recent games count more). Use :func:`bradley_terry`
    for an order-independent ranking. Returns ratings in order of first appearance.
    """
    if not base > 0:
        raise ValueError(f"base must be positive, got {base!r}")
    ratings: dict[str, float] = {}
    for c in comparisons:
        ra = ratings.setdefault(c.a, start)
        rb = ratings.setdefault(c.b, start)
        expected = 1.0 / (1.0 + 10.0 ** ((rb - ra) / base))
        delta = k * c.weight * (c.outcome - expected)
        ratings[c.a] = ra + delta
        ratings[c.b] = rb - delta
    return ratings


def to_elo(score: float, scale: float = ELO_SCALE, start: float = ELO_START) -> float:
    """A Bradley–Terry log-strength on the Elo scale: ``score * 400 / ln(10) + 1000``."""
    return score * scale + start


# ---------------------------------------------------------------- Bradley–Terry


@dataclass
class BTResult:
    """A Bradley–Terry fit.

    ``scores`` are log-strengths with mean 0 (``P(a beats b) = sigmoid(s_a - s_b)``);
    ``normalized`` are the same scores standardized to mean 0 and (population)
    standard deviation 1, for use as scalar rewards (all 0 when every score is equal).
    ``ci_low`` / ``ci_high`` are bootstrap percentile intervals of ``scores`` (None
    without ``bootstrap``). Dicts follow ``items``: order of first appearance.
    """

    items: list[str]
    scores: dict[str, float]
    normalized: dict[str, float]
    ci_low: dict[str, float] | None = None
    ci_high: dict[str, float] | None = None
    ci: float | None = None  # confidence level of ci_low / ci_high
    bootstrap: int = 0  # number of bootstrap refits
    n_comparisons: int = 0
    loss: float = math.nan  # the minimized objective L(s)
    iterations: int = 0  # L-BFGS iterations of the main fit
    converged: bool = True  # the main fit's optimization error is << its standard errors
    l2: float = 0.0
    bootstrap_converged: bool | None = None  # whether every bootstrap refit converged

    def elo_scale(self, scale: float = ELO_SCALE, start: float = ELO_START) -> dict[str, float]:
        """``scores`` on the Elo scale (``s * 400 / ln(10) + 1000``), for display."""
        return {i: to_elo(s, scale, start) for i, s in self.scores.items()}

    def probability(self, a: str, b: str) -> float:
        """The fitted ``P(a beats b) = sigmoid(s_a - s_b)``."""
        return 1.0 / (1.0 + math.exp(self.scores[b] - self.scores[a]))

    def ranking(self) -> list[str]:
        """Items from best to worst (ties broken by id)."""
        return sorted(self.items, key=lambda i: (-self.scores[i], i))


def bradley_terry(
    comparisons: Sequence[Comparison],
    l2: float = 1e-4,
    bootstrap: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    max_iter: int = 1000,
) -> BTResult:
    """Fit Bradley–Terry log-strengths by maximum likelihood (Bradley & Terry 1952).

    Minimizes the objective in the module docstring (weighted soft-label logistic
    loss, ties as 0.5, mean-zero scores, ``l2 * sum s_i^2``) with
    ``torch.optim.LBFGS`` (float64, strong-Wolfe line search, gradient tolerance
    1e-12). The result does not depend on the order of ``comparisons``.

    With ``bootstrap=N`` > 0 the comparisons are resampled with replacement ``N``
    times (seeded by ``seed``, so results are reproducible), each resample is
    refitted and ``ci_low`` / ``ci_high`` are the ``(1 - ci) / 2`` and
    ``(1 + ci) / 2`` percentiles of each item's score — the Chatbot Arena recipe
    (Chiang et al. 2024). An item absent from a resample is left out of that
    resample's percentiles. All resamples are fitted together as one batched
    problem (the objective is a sum of independent per-resample objectives), to a
    looser tolerance than the main fit.

    Small fits (under ~2M replicate x pair entries) temporarily set
    ``torch.set_num_threads(1)`` — threads only slow their many tiny ops down —
    and restore the previous setting afterwards.
    """
    comparisons = list(comparisons)
    if not comparisons:
        raise ValueError("bradley_terry needs at least one comparison")
    if not (l2 >= 0 and math.isfinite(l2)):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap!r}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be between 0 and 1, got {ci!r}")

    items, a_idx, b_idx, y, w, group_of = _design(comparisons)
    n = len(items)
    good_enough = _CONVERGED_SE / math.sqrt(len(comparisons))
    with _threads_for(w.numel()):
        theta, loss, iterations, gmax = _fit(
            a_idx, b_idx, y, w[None, :], n, l2, None, max_iter, good_enough
        )
    scores = theta[0]
    result = BTResult(
        items=items,
        scores=dict(zip(items, scores.tolist(), strict=True)),
        normalized=dict(zip(items, _standardize(scores).tolist(), strict=True)),
        n_comparisons=len(comparisons),
        loss=loss,
        iterations=iterations,
        converged=gmax <= good_enough,
        l2=l2,
    )
    if bootstrap:
        comp_w = torch.tensor([c.weight for c in comparisons], dtype=torch.float64)
        with _threads_for(w.numel() * bootstrap):
            low, high, ok = _bootstrap(
                a_idx, b_idx, y, comp_w, group_of, n, l2, scores, bootstrap, seed, ci, max_iter
            )
        result.ci_low = dict(zip(items, low.tolist(), strict=True))
        result.ci_high = dict(zip(items, high.tolist(), strict=True))
        result.ci = ci
        result.bootstrap = bootstrap
        result.bootstrap_converged = ok
    return result


def _design(
    comparisons: list[Comparison],
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group identical ``(a, b, outcome)`` comparisons: their weights add up.

    Returns the items, per-group a/b indices, soft labels and total weights, and
    for each comparison its group (used to resample comparisons).
    """
    index: dict[str, int] = {}
    groups: dict[tuple[int, int, float], int] = {}
    weights: list[float] = []
    group_of: list[int] = []
    for c in comparisons:
        ia = index.setdefault(c.a, len(index))
        ib = index.setdefault(c.b, len(index))
        key = (ia, ib, float(c.outcome))
        g = groups.setdefault(key, len(groups))
        if g == len(weights):
            weights.append(0.0)
        weights[g] += c.weight
        group_of.append(g)
    keys = list(groups)
    f64 = torch.float64
    return (
        list(index),
        torch.tensor([k[0] for k in keys], dtype=torch.long),
        torch.tensor([k[1] for k in keys], dtype=torch.long),
        torch.tensor([k[2] for k in keys], dtype=f64),
        torch.tensor(weights, dtype=f64),
        torch.tensor(group_of, dtype=torch.long),
    )


def _fit(
    a_idx: torch.Tensor,
    b_idx: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,  # (R, G): one row of group weights per independent problem
    n: int,
    l2: float,
    init: torch.Tensor | None,
    max_iter: int,
    good_enough: float,
    tolerance_grad: float = _GRAD_TOL,
) -> tuple[torch.Tensor, float, int, float]:
    """Minimize the sum over rows of the BT objective; returns mean-zero scores (R, n),
    the final objective, the L-BFGS iterations and the largest (preconditioned)
    gradient entry. L-BFGS is restarted (at most twice) while that entry is above
    ``good_enough``; it usually stops long before, when the loss stops changing.

    L-BFGS runs on ``u`` with ``theta = init + u / sqrt(h)``, where ``h`` is the
    diagonal of the Hessian at ``s = 0`` (``(games * 1/4 + 2 * l2) / total weight``
    per item, games weighted): this diagonal preconditioning makes rarely compared items as easy to
    fit as frequent ones.
    """
    f64 = torch.float64
    rows = weights.shape[0]
    total = weights.sum(dim=1, keepdim=True)
    share = weights / total
    penalty = l2 / total  # the objective is divided by the total weight, to be O(1)
    games = torch.zeros(rows, n, dtype=f64)
    games.index_add_(1, a_idx, share)
    games.index_add_(1, b_idx, share)
    scale = (0.25 * games + 2.0 * penalty).clamp_min(1e-12).rsqrt()
    base = torch.zeros(rows, n, dtype=f64) if init is None else init.to(f64).expand(rows, n)
    u = torch.zeros(rows, n, dtype=f64, requires_grad=True)
    softplus = torch.nn.functional.softplus

    def scores() -> torch.Tensor:
        theta = base + u * scale
        return theta - theta.mean(dim=1, keepdim=True)

    opt = torch.optim.LBFGS(
        [u],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 2,
        tolerance_grad=tolerance_grad,
        tolerance_change=1e-18,  # i.e. stop once the loss no longer changes at all
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        s = scores()
        d = s[:, a_idx] - s[:, b_idx]
        nll = y * softplus(-d) + (1.0 - y) * softplus(d)
        loss = (share * nll).sum() + (penalty * s * s).sum()
        loss.backward()
        return loss

    iterations, gmax, loss = 0, math.inf, math.nan
    for _ in range(3):  # a restart clears a stale curvature history; rarely needed
        opt.step(closure)
        iterations += int(opt.state[u].get("n_iter", 0))
        opt.state.clear()
        loss = float(closure().detach())
        gmax = float(u.grad.abs().max()) if u.grad is not None else 0.0
        if gmax <= good_enough or iterations >= max_iter:
            break
    with torch.no_grad():
        return scores(), loss, iterations, gmax


@contextmanager
def _threads_for(numel: int) -> Iterator[None]:
    """Run small problems on one thread: their many tiny ops only lose time to
    thread hand-offs (badly so on a busy machine). Restores the setting after."""
    before = torch.get_num_threads()
    if numel > _SINGLE_THREAD_MAX or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _bootstrap(
    a_idx: torch.Tensor,
    b_idx: torch.Tensor,
    y: torch.Tensor,
    comp_w: torch.Tensor,  # the weight of each comparison
    group_of: torch.Tensor,  # the group of each comparison
    n: int,
    l2: float,
    scores: torch.Tensor,
    replicates: int,
    seed: int,
    ci: float,
    max_iter: int,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Percentile intervals from ``replicates`` resamples of the comparisons."""
    gen = torch.Generator().manual_seed(seed)
    n_comp, n_groups = group_of.numel(), y.numel()
    weights = torch.empty(replicates, n_groups, dtype=comp_w.dtype)  # (R, G)
    for r in range(replicates):
        pick = torch.randint(n_comp, (n_comp,), generator=gen)
        weights[r] = torch.bincount(group_of[pick], comp_w[pick], minlength=n_groups)
    good_enough = _CONVERGED_SE / math.sqrt(n_comp)
    # intervals need far less precision than the point estimate: stop at good_enough
    fits, _, _, gmax = _fit(
        a_idx, b_idx, y, weights, n, l2, scores[None, :], max_iter, good_enough, good_enough
    )
    present = torch.zeros(replicates, n, dtype=comp_w.dtype)
    present.index_add_(1, a_idx, weights)
    present.index_add_(1, b_idx, weights)
    fits = torch.where(present > 0, fits, torch.full_like(fits, math.nan))
    alpha = (1.0 - ci) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=comp_w.dtype)
    low, high = torch.nanquantile(fits, q, dim=0)
    return low, high, gmax <= good_enough


def _standardize(scores: torch.Tensor) -> torch.Tensor:
    centered = scores - scores.mean()
    std = float(centered.pow(2).mean().sqrt())
    if std <= 1e-12:
        return torch.zeros_like(scores)
    return centered / std


# ---------------------------------------------------------------- leaderboard


def leaderboard(
    comparisons: Sequence[Comparison],
    bootstrap: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    l2: float = 1e-4,
) -> list[dict[str, Any]]:
    """One row per item, best first (by Bradley–Terry score, then id).

    Keys: ``item``; ``bt_score`` (mean-zero log-strength); ``ci_low`` / ``ci_high``
    (its bootstrap interval, None when ``bootstrap=0``); ``elo`` (``bt_score`` on
    the Elo scale, order-independent — not the online :func:`elo`); ``wins``,
    ``losses``, ``ties`` and ``n`` (unweighted counts of comparisons; a soft
    outcome above 0.5 counts as a win, below as a loss).
    """
    comparisons = list(comparisons)
    fit = bradley_terry(comparisons, l2=l2, bootstrap=bootstrap, seed=seed, ci=ci)
    tally = {item: [0, 0, 0] for item in fit.items}  # wins, losses, ties
    for c in comparisons:
        if c.outcome > 0.5:
            tally[c.a][0] += 1
            tally[c.b][1] += 1
        elif c.outcome < 0.5:
            tally[c.a][1] += 1
            tally[c.b][0] += 1
        else:
            tally[c.a][2] += 1
            tally[c.b][2] += 1
    rows = []
    for item in fit.ranking():
        wins, losses, ties = tally[item]
        rows.append(
            {
                "item": item,
                "bt_score": fit.scores[item],
                "ci_low": fit.ci_low[item] if fit.ci_low is not None else None,
                "ci_high": fit.ci_high[item] if fit.ci_high is not None else None,
                "elo": to_elo(fit.scores[item]),
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "n": wins + losses + ties,
            }
        )
    return rows


def format_leaderboard(rows: Sequence[dict[str, Any]], title: str | None = None) -> Table:
    """A ``rich`` table of :func:`leaderboard` rows; the interval is shown in Elo points."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("Elo", justify="right")
    table.add_column("CI (Elo)", justify="right")
    table.add_column("BT score", justify="right")
    for name in ("wins", "losses", "ties", "n"):
        table.add_column(name, justify="right")
    for rank, row in enumerate(rows, 1):
        if row.get("ci_low") is not None and row.get("ci_high") is not None:
            low, high = to_elo(row["ci_low"]), to_elo(row["ci_high"])
            interval = f"{high - row['elo']:+.0f} / {low - row['elo']:+.0f}"
        else:
            interval = "-"
        table.add_row(
            str(rank),
            str(row["item"]),
            f"{row['elo']:.0f}",
            interval,
            f"{row['bt_score']:+.3f}",
            *(str(row[k]) for k in ("wins", "losses", "ties", "n")),
        )
    return table
