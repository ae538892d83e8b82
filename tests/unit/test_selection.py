"""Best-of-K, top fraction and threshold selection (ties, NaNs) and ReST's threshold
schedule, with hand-worked numbers."""

from __future__ import annotations

import math

import pytest

from rlhfkit.rollout.selection import (
    SelectionRule,
    at_least,
    best_of,
    check_schedule,
    quantile,
    ranked,
    resolve_thresholds,
    select,
    top_fraction,
)

NAN = float("nan")


def test_best_of_takes_the_highest_and_the_first_of_equal_scores():
    assert best_of([0.1, 0.7, 0.3]) == 1
    assert best_of([0.2, 0.9, 0.9, 0.5]) == 1  # tie between samples 1 and 2: the earlier
    assert best_of([0.9, 0.2, 0.9]) == 0
    assert best_of([-3.0, -1.0, -1.0]) == 1  # negative rewards (reward-model logits)


def test_nan_scores_are_never_selected():
    assert best_of([NAN, 0.1, NAN]) == 1
    assert best_of([NAN, NAN]) is None
    assert best_of([]) is None
    assert ranked([0.5, NAN, 0.7, 0.5]) == [2, 0, 3]


def test_top_fraction_rounds_up_keeps_one_and_breaks_ties_by_order():
    scores = [0.3, 0.8, 0.8, 0.1, 0.5, 0.8, 0.2, 0.4]
    # ceil(0.25 * 8) = 2: the three 0.8s tie, the earliest two (1, 2) win
    assert top_fraction(scores, 0.25) == [1, 2]
    # ceil(0.5 * 8) = 4: the 0.8s (1, 2, 5), then 0.5 (4)
    assert top_fraction(scores, 0.5) == [1, 2, 5, 4]
    # ceil(0.1 * 8) = 1
    assert top_fraction(scores, 0.1) == [1]
    # ceil(0.3 * 3) = ceil(0.9) = 1; 1/3 of 3 is exactly 1, not 2 (float error)
    assert top_fraction([1.0, 2.0, 3.0], 1 / 3) == [2]
    assert top_fraction([1.0, 2.0, 3.0], 1.0) == [2, 1, 0]
    with pytest.raises(ValueError):
        top_fraction([1.0], 0.0)


def test_at_least_is_inclusive():
    assert at_least([0.5, 1.0, 0.49, NAN, 0.5], 0.5) == [0, 1, 4]


def test_rule_best_then_threshold():
    groups = [[0.2, 0.9, 0.9], [0.1, 0.3, 0.2], [NAN, NAN, NAN], [0.0, 0.5, 0.4]]
    assert select(groups, SelectionRule("best")) == [[1], [1], [], [1]]
    # min reward 0.4: the second prompt's best (0.3) is dropped, not replaced
    assert select(groups, SelectionRule("best", threshold=0.4)) == [[1], [], [], [1]]


def test_rule_top_fraction_and_all():
    groups = [[0.2, 0.9, 0.9, 0.1], [0.4, 0.4, 0.4, 0.4]]
    rule = SelectionRule("top_fraction", fraction=0.5)
    assert select(groups, rule) == [[1, 2], [0, 1]]
    rule = SelectionRule("top_fraction", fraction=0.5, threshold=0.5)
    assert select(groups, rule) == [[1, 2], []]
    assert select(groups, SelectionRule("all", threshold=0.3)) == [[1, 2], [0, 1, 2, 3]]
    with pytest.raises(ValueError):
        SelectionRule("worst")


def test_quantile_interpolates_linearly():
    xs = [4.0, 1.0, 3.0, 2.0]  # sorted 1 2 3 4, positions 0..3
    assert quantile(xs, 0.0) == 1.0
    assert quantile(xs, 1.0) == 4.0
    assert quantile(xs, 0.5) == pytest.approx(2.5)  # position 1.5
    assert quantile(xs, 0.75) == pytest.approx(3.25)  # position 2.25
    assert quantile([1.0, NAN, 3.0], 0.5) == pytest.approx(2.0)
    # a 0/1 reward: every quantile above the share of zeros is 1
    assert quantile([0, 0, 1, 1, 1], 0.5) == 1.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_schedule_must_not_decrease():
    check_schedule([0.5, 0.5, 0.9], "quantile")
    check_schedule([-1.0, 0.0, 2.5], "value")
    with pytest.raises(ValueError, match="must not decrease"):
        check_schedule([0.7, 0.6], "value")
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        check_schedule([0.5, 1.5], "quantile")
    with pytest.raises(ValueError, match="at least one"):
        check_schedule([], "value")


def test_resolve_thresholds_values_and_quantiles():
    rewards = [0.0, 1.0, 2.0, 3.0, 4.0]  # positions 0..4
    assert resolve_thresholds([1.0, 2.5], "value", rewards) == [1.0, 2.5]
    got = resolve_thresholds([0.5, 0.75, 0.9], "quantile", rewards)
    assert got == pytest.approx([2.0, 3.0, 3.6])
    # each Improve step keeps a subset of the one before
    kept = [set(at_least(rewards, t)) for t in got]
    assert kept[0] >= kept[1] >= kept[2] and kept[2] == {4}
    assert not math.isnan(got[0])
