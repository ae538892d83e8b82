"""Krippendorff's alpha and Kendall's tau against published and independent values."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import kendalltau

from rlhfkit.feedback.agreement import (
    dense_ranks,
    kendall_tau,
    krippendorff_alpha,
    majority,
    mean,
    mean_ranks,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C:
# 4 coders, 12 units, missing values as None.
CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
UNITS = [[v for v in unit if v is not None] for unit in zip(*CODERS, strict=True)]


@pytest.mark.parametrize(
    ("level", "published"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_alpha_matches_krippendorffs_worked_example(level, published):
    assert krippendorff_alpha(UNITS, level) == pytest.approx(published, abs=5e-4)


def test_alpha_extremes_and_undefined_cases():
    assert krippendorff_alpha([["a", "a"], ["b", "b"], ["c", "c", "c"]]) == 1.0
    # two coders who always disagree systematically: alpha below 0
    assert krippendorff_alpha([[1, 2], [2, 1], [1, 2], [2, 1]]) < 0
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))  # no variation
    assert math.isnan(krippendorff_alpha([["a"], ["b"]]))  # nothing pairable
    with pytest.raises(ValueError, match="level"):
        krippendorff_alpha(UNITS, "ratio")  # type: ignore[arg-type]


def test_alpha_near_zero_for_random_coders():
    rng = random.Random(0)
    units = [[rng.choice("ABCD") for _ in range(3)] for _ in range(3000)]
    assert abs(krippendorff_alpha(units)) < 0.03


def test_ordinal_alpha_punishes_far_disagreements_more():
    near = [[1, 2], [4, 5], [3, 3], [1, 1], [5, 5]]  # the same values, paired differently
    far = [[1, 5], [4, 2], [3, 3], [1, 1], [5, 5]]
    assert krippendorff_alpha(near, "ordinal") > krippendorff_alpha(far, "ordinal")
    assert krippendorff_alpha(near, "nominal") == krippendorff_alpha(far, "nominal")


def test_kendall_tau_b_equals_scipy_with_ties():
    rng = random.Random(1)
    for _ in range(200):
        k = rng.randint(2, 9)
        x = [rng.randint(1, 4) for _ in range(k)]
        y = [rng.randint(1, 4) for _ in range(k)]
        expected = kendalltau(x, y).statistic
        got = kendall_tau(x, y)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    with pytest.raises(ValueError, match="different lengths"):
        kendall_tau([1, 2], [1])


def test_consensus_helpers():
    assert majority(["a", "b", "a"]) == "a"
    assert majority(["a", "b"]) is None and majority([]) is None
    assert mean_ranks([[1, 2, 3], [2, 1, 3]]) == [1.5, 1.5, 3.0]
    assert dense_ranks([1.5, 1.5, 3.0]) == [1, 1, 2]
    assert dense_ranks([0.2, -1.0, 0.2], higher_is_better=True) == [1, 2, 1]
    assert mean([1.0, float("nan"), 3.0]) == 2.0 and math.isnan(mean([]))
