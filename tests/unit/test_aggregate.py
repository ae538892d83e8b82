"""Elo and Bradley–Terry aggregation of pairwise comparisons, and reading them."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from rlhfkit.errors import DataError
from rlhfkit.feedback.aggregate import (
    ELO_SCALE,
    HINT,
    BTResult,
    Comparison,
    bradley_terry,
    elo,
    format_leaderboard,
    leaderboard,
    read_comparisons,
    to_elo,
)

C = Comparison
TRUE_STRENGTHS = [-1.5, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.25]
ROW_KEYS = ["item", "bt_score", "ci_low", "ci_high", "elo", "wins", "losses", "ties", "n"]


def simulate(strengths: list[float], n: int, seed: int, tie_rate: float = 0.0) -> list[Comparison]:
    """``n`` comparisons between random pairs, drawn from the Bradley–Terry model
    (a fraction ``tie_rate`` of them recorded as ties instead)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i, j = rng.sample(range(len(strengths)), 2)
        p = 1.0 / (1.0 + math.exp(strengths[j] - strengths[i]))
        tie, win = rng.random() < tie_rate, rng.random() < p
        outcome = 0.5 if tie else float(win)
        out.append(C(f"m{i}", f"m{j}", outcome))
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (no tied values)."""

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


@pytest.fixture(scope="module")
def simulated() -> list[Comparison]:
    return simulate(TRUE_STRENGTHS, 4000, seed=0)


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """torch.optim imports torch._dynamo on first use (~1-2 s, once per process);
    pay it here rather than inside the first timed test."""
    bradley_terry([C("x", "y", 1.0)])


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- Comparison


def test_comparison_validates_its_fields() -> None:
    assert C("x", "y", 1.0).swapped() == C("y", "x", 0.0)
    with pytest.raises(ValueError, match="itself"):
        C("x", "x", 1.0)
    with pytest.raises(ValueError, match="outcome"):
        C("x", "y", 1.5)
    with pytest.raises(ValueError, match="outcome"):
        C("x", "y", math.nan)
    with pytest.raises(ValueError, match="weight"):
        C("x", "y", 1.0, weight=0.0)
    with pytest.raises(TypeError):
        C("x", 3, 1.0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Elo


def test_elo_single_update_by_hand() -> None:
    ratings = elo([C("x", "y", 1.0)])
    assert ratings == {"x": 1016.0, "y": 984.0}
    # 1016 vs 984 at k=32: E_x = 1 / (1 + 10 ** (-32 / 400)), and y wins this time
    e_x = 1.0 / (1.0 + 10.0 ** (-32.0 / 400.0))
    again = elo([C("x", "y", 1.0), C("x", "y", 0.0)])
    assert again["x"] == pytest.approx(1016.0 - 32.0 * e_x, abs=1e-12)
    assert again["y"] == pytest.approx(984.0 + 32.0 * e_x, abs=1e-12)
    assert elo([C("x", "y", 1.0, weight=0.5)], k=10.0, start=0.0) == {"x": 2.5, "y": -2.5}


def test_elo_tie_between_equals_changes_nothing() -> None:
    assert elo([C("x", "y", 0.5)]) == {"x": 1000.0, "y": 1000.0}
    # ... but a tie with a stronger player gains points
    after = elo([C("x", "y", 1.0), C("x", "y", 0.5)])
    assert after["y"] > 984.0


def test_elo_is_zero_sum_and_symmetric(simulated: list[Comparison]) -> None:
    games = simulated[:500]
    ratings = elo(games)
    assert sum(ratings.values()) == pytest.approx(1000.0 * len(ratings), abs=1e-8)
    before = {"x": 1000.0, "y": 1000.0}
    one = elo([C("x", "y", 1.0)])
    assert one["x"] - before["x"] == pytest.approx(before["y"] - one["y"])
    swapped = elo([c.swapped() for c in games])
    assert swapped.keys() == ratings.keys()
    for item in ratings:
        assert swapped[item] == pytest.approx(ratings[item], abs=1e-9)


def test_order_changes_elo_but_not_bradley_terry(simulated: list[Comparison]) -> None:
    games = simulated[:300]
    shuffled = list(games)
    random.Random(1).shuffle(shuffled)
    elo_a, elo_b = elo(games), elo(shuffled)
    assert max(abs(elo_a[i] - elo_b[i]) for i in elo_a) > 1.0  # order matters for Elo
    bt_a, bt_b = bradley_terry(games), bradley_terry(shuffled)
    for item in bt_a.scores:
        assert bt_b.scores[item] == pytest.approx(bt_a.scores[item], abs=1e-7)


# ---------------------------------------------------------------- Bradley–Terry


def test_bradley_terry_recovers_true_strengths(simulated: list[Comparison]) -> None:
    fit = bradley_terry(simulated)
    assert isinstance(fit, BTResult)
    assert fit.converged
    assert fit.n_comparisons == 4000
    items = [f"m{i}" for i in range(len(TRUE_STRENGTHS))]
    fitted = [fit.scores[i] for i in items]
    assert spearman(fitted, TRUE_STRENGTHS) > 0.95
    mean = sum(TRUE_STRENGTHS) / len(TRUE_STRENGTHS)
    for got, true in zip(fitted, TRUE_STRENGTHS, strict=True):
        assert got == pytest.approx(true - mean, abs=0.15)
    assert sum(fitted) == pytest.approx(0.0, abs=1e-9)  # identified by mean 0
    assert fit.ranking()[0] == "m7"
    assert fit.ranking()[-1] == "m0"


def test_normalized_scores_and_elo_scale(simulated: list[Comparison]) -> None:
    fit = bradley_terry(simulated[:1000])
    values = list(fit.normalized.values())
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    assert mean == pytest.approx(0.0, abs=1e-9)
    assert std == pytest.approx(1.0, abs=1e-9)
    # normalized is an increasing affine map of the scores
    order = sorted(fit.items, key=fit.scores.__getitem__)
    assert order == sorted(fit.items, key=fit.normalized.__getitem__)
    elo_scores = fit.elo_scale()
    for item, s in fit.scores.items():
        assert elo_scores[item] == pytest.approx(s * 400.0 / math.log(10.0) + 1000.0)
        assert to_elo(s) == pytest.approx(elo_scores[item])
    # the Elo scale and the BT scale give the same win probability
    a, b = fit.items[0], fit.items[1]
    p_elo = 1.0 / (1.0 + 10.0 ** ((elo_scores[b] - elo_scores[a]) / 400.0))
    assert fit.probability(a, b) == pytest.approx(p_elo, abs=1e-12)
    assert abs(ELO_SCALE - 173.7177927613007) < 1e-9


def _reference_fit(comparisons: list[Comparison], l2: float, centered: bool) -> dict[str, float]:
    """The same objective minimized by scipy's L-BFGS-B on an explicit design matrix.

    ``centered=False``: the last item is the reference (score 0; only with l2 = 0).
    ``centered=True``: free parameters, scores = theta - mean(theta), as in rlhfkit.
    """
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    items = sorted({c.a for c in comparisons} | {c.b for c in comparisons})
    col = {item: j for j, item in enumerate(items)}
    x = np.zeros((len(comparisons), len(items)))
    for k, c in enumerate(comparisons):
        x[k, col[c.a]] += 1.0
        x[k, col[c.b]] -= 1.0
    y = np.array([c.outcome for c in comparisons])
    w = np.array([c.weight for c in comparisons])
    total = w.sum()
    if not centered:
        x = x[:, :-1]  # drop the reference item's column

    def to_scores(theta: object) -> object:
        if centered:
            return theta - theta.mean()  # type: ignore[operator, union-attr]
        return theta

    def objective(theta: object) -> tuple[float, object]:
        s = to_scores(theta)
        d = x @ s
        nll = y * np.logaddexp(0.0, -d) + (1.0 - y) * np.logaddexp(0.0, d)
        f = (w @ nll + l2 * (s @ s)) / total
        grad_s = (x.T @ (w * (1.0 / (1.0 + np.exp(-d)) - y)) + 2.0 * l2 * s) / total
        if centered:
            grad_s = grad_s - grad_s.mean()
        return f, grad_s

    res = optimize.minimize(
        objective,
        np.zeros(x.shape[1]),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000},
    )
    s = list(to_scores(res.x))
    if not centered:
        s.append(0.0)
    return dict(zip(items, s, strict=True))


def _with_ties_and_weights(comparisons: list[Comparison]) -> list[Comparison]:
    rng = random.Random(3)
    return [
        C(c.a, c.b, 0.5 if rng.random() < 0.15 else c.outcome, weight=rng.choice([0.5, 1, 2]))
        for c in comparisons
    ]


def test_bradley_terry_matches_reference_logistic_regression(
    simulated: list[Comparison],
) -> None:
    data = _with_ties_and_weights(simulated[:1500])
    assert any(c.outcome == 0.5 for c in data)
    fit = bradley_terry(data, l2=0.0)
    ref = _reference_fit(data, l2=0.0, centered=False)
    items = sorted(fit.items)
    for i in items:
        for j in items:
            got = fit.scores[i] - fit.scores[j]
            assert got == pytest.approx(ref[i] - ref[j], abs=1e-4)


def test_l2_penalty_matches_reference(simulated: list[Comparison]) -> None:
    # a strong penalty, so that a wrong scaling of it would show
    data = _with_ties_and_weights(simulated[:300])
    fit = bradley_terry(data, l2=20.0)
    ref = _reference_fit(data, l2=20.0, centered=True)
    for item in fit.items:
        assert fit.scores[item] == pytest.approx(ref[item], abs=1e-5)
    plain = bradley_terry(data, l2=0.0)
    spread = max(plain.scores.values()) - min(plain.scores.values())
    assert max(fit.scores.values()) - min(fit.scores.values()) < spread  # shrinks


def test_ties_are_half_wins_and_weights_are_counts() -> None:
    tie_twice = [C("x", "y", 0.5, weight=2.0), C("y", "z", 1.0), C("x", "z", 0.0)]
    win_and_loss = [C("x", "y", 1.0), C("y", "x", 1.0), C("y", "z", 1.0), C("z", "x", 1.0)]
    a, b = bradley_terry(tie_twice), bradley_terry(win_and_loss)
    for item in a.scores:
        assert a.scores[item] == pytest.approx(b.scores[item], abs=1e-7)
    assert bradley_terry([C("x", "y", 0.5)]).scores == {"x": 0.0, "y": 0.0}
    even = bradley_terry([C("x", "y", 0.5)])
    assert even.normalized == {"x": 0.0, "y": 0.0}  # no spread: no division by 0


def test_separable_data_stays_finite() -> None:
    chain = [C("x", "y", 1.0)] * 5 + [C("y", "z", 1.0)] * 5
    fit = bradley_terry(chain)
    assert fit.converged
    assert all(math.isfinite(s) for s in fit.scores.values())
    assert fit.scores["x"] > fit.scores["y"] > fit.scores["z"]
    assert fit.scores["x"] < 50.0
    # a bigger l2 pulls the scores in
    assert bradley_terry(chain, l2=1.0).scores["x"] < fit.scores["x"]


def test_bradley_terry_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one"):
        bradley_terry([])
    with pytest.raises(ValueError, match="l2"):
        bradley_terry([C("x", "y", 1.0)], l2=-1.0)
    with pytest.raises(ValueError, match="ci"):
        bradley_terry([C("x", "y", 1.0)], bootstrap=5, ci=1.0)


def test_bradley_terry_leaves_torch_threads_alone() -> None:
    before = torch.get_num_threads()
    bradley_terry([C("x", "y", 1.0), C("y", "z", 0.0)], bootstrap=3)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded_and_contains_the_estimate(simulated: list[Comparison]) -> None:
    data = simulated[:2000]
    one = bradley_terry(data, bootstrap=100, seed=7)
    two = bradley_terry(data, bootstrap=100, seed=7)
    other = bradley_terry(data, bootstrap=100, seed=8)
    assert one.ci_low == two.ci_low and one.ci_high == two.ci_high
    assert one.ci_low != other.ci_low
    assert one.ci == 0.95 and one.bootstrap == 100 and one.bootstrap_converged
    assert one.ci_low is not None and one.ci_high is not None
    for item in one.items:
        assert one.ci_low[item] < one.scores[item] < one.ci_high[item]
    assert bradley_terry(data).ci_low is None


def test_bootstrap_is_wider_with_fewer_comparisons(simulated: list[Comparison]) -> None:
    def widths(n: int) -> dict[str, float]:
        fit = bradley_terry(simulated[:n], bootstrap=100, seed=0)
        assert fit.ci_low is not None and fit.ci_high is not None
        return {i: fit.ci_high[i] - fit.ci_low[i] for i in fit.items}

    many, few = widths(4000), widths(400)
    for item in many:
        assert few[item] > many[item]
    # ~ 1 / sqrt(n): ten times fewer comparisons, about three times wider
    ratio = sum(few.values()) / sum(many.values())
    assert 2.0 < ratio < 4.5


def test_narrower_interval_level_is_inside_wider(simulated: list[Comparison]) -> None:
    data = simulated[:800]
    wide = bradley_terry(data, bootstrap=100, seed=0, ci=0.95)
    narrow = bradley_terry(data, bootstrap=100, seed=0, ci=0.5)
    assert wide.ci_low and wide.ci_high and narrow.ci_low and narrow.ci_high
    for item in wide.items:
        assert wide.ci_low[item] <= narrow.ci_low[item] <= narrow.ci_high[item]
        assert narrow.ci_high[item] <= wide.ci_high[item]


# ---------------------------------------------------------------- reading


def test_read_both_formats(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "comparisons.jsonl",
        [
            {"a": "gpt", "b": "llama", "winner": "a"},
            {"a": "gpt", "b": "llama", "winner": "b", "weight": 2},
            {"a": 1, "b": 2.0, "winner": "tie"},
            {"chosen": "llama", "rejected": "gpt"},
            {"chosen": "x", "rejected": "y", "tie": True, "weight": 0.5},
            {"chosen": "x", "rejected": "y", "tie": False, "weight": None},
        ],
    )
    assert read_comparisons(path) == [
        C("gpt", "llama", 1.0),
        C("gpt", "llama", 0.0, 2.0),
        C("1", "2", 0.5),
        C("llama", "gpt", 1.0),
        C("x", "y", 0.5, 0.5),
        C("x", "y", 1.0),
    ]


def test_read_reports_every_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [
        {"a": "x", "b": "y", "winner": "a"},
        {"a": "x", "b": "y", "winner": "c"},
        {"a": "x", "b": "x", "winner": "a"},
        {"chosen": "p", "rejected": "p"},
        {"a": "", "b": True, "winner": "b", "weight": -1},
        {"chosen": "p", "rejected": "q", "tie": "yes"},
        {"prompt": "hi"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + "{not json\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_comparisons(path)
    err = info.value
    messages = [str(i) for i in err.issues]
    assert messages == [
        f"{path}:2: field 'winner': expected one of 'a', 'b', 'tie', got \"c\" (string)",
        f"{path}:3: field 'b': expected an item different from 'a', got \"x\" (string)",
        f"{path}:4: field 'rejected': expected an item different from 'chosen', got \"p\" (string)",
        f"{path}:5: field 'a': expected an item id (a non-empty string or a number), "
        f'got "" (empty string)',
        f"{path}:5: field 'b': expected an item id (a non-empty string or a number), "
        f"got true (boolean)",
        f"{path}:5: field 'weight': expected a positive finite number, got -1 (number)",
        f"{path}:6: field 'tie': expected true or false, got \"yes\" (string)",
        f"{path}:7: expected fields 'a', 'b' and 'winner', or 'chosen' and 'rejected'; "
        f"got 'prompt'",
        f"{path}:8: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
    ]
    assert err.total == 7  # bad records
    assert str(err).endswith(HINT)
    assert err.exit_code == 65


def test_read_missing_winner(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", [{"a": "x", "b": "y"}])
    with pytest.raises(DataError) as info:
        read_comparisons(path)
    assert [str(i) for i in info.value.issues] == [
        f"{path}:1: field 'winner': expected one of 'a', 'b', 'tie', "
        "got nothing (the field is missing)"
    ]


# ---------------------------------------------------------------- leaderboard


def test_leaderboard_counts_and_order() -> None:
    games = [
        C("x", "y", 1.0),
        C("x", "y", 1.0),
        C("y", "x", 1.0),
        C("x", "z", 0.5),
        C("z", "y", 1.0),
        C("z", "x", 0.0),
        C("y", "z", 0.5),
    ]
    rows = leaderboard(games, bootstrap=50, seed=0)
    assert [r["item"] for r in rows] == ["x", "z", "y"]
    by_item = {r["item"]: r for r in rows}
    counts = {i: (r["wins"], r["losses"], r["ties"], r["n"]) for i, r in by_item.items()}
    assert counts == {"x": (3, 1, 1, 5), "y": (1, 3, 1, 5), "z": (1, 1, 2, 4)}
    scores = [r["bt_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    fit = bradley_terry(games)
    for r in rows:
        assert list(r) == ROW_KEYS
        assert r["bt_score"] == pytest.approx(fit.scores[r["item"]])
        assert r["elo"] == pytest.approx(to_elo(r["bt_score"]))
        assert r["ci_low"] <= r["bt_score"] <= r["ci_high"]
    assert leaderboard(games, bootstrap=0)[0]["ci_low"] is None


def test_format_leaderboard() -> None:
    from rich.console import Console

    rows = leaderboard([C("x", "y", 1.0), C("y", "x", 1.0), C("x", "y", 1.0)], bootstrap=20)
    table = format_leaderboard(rows, title="ranking")
    assert table.row_count == 2
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "ranking" in text and "x" in text and "Elo" in text
    plain = format_leaderboard(leaderboard([C("x", "y", 1.0)], bootstrap=0))
    assert plain.row_count == 2
