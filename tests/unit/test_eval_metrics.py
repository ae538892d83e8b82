"""Evaluation metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.evaluation.metrics import (
    bleu,
    bootstrap_ci,
    outcomes,
    rouge_l,
    sequence_kl,
    win_rate,
)


def test_outcomes_count_ties_as_half():
    assert outcomes([1.0, 2.0, 3.0], [1.0, 1.0, 4.0]) == [0.5, 1.0, 0.0]
    with pytest.raises(ValueError, match="2 scores but 1"):
        outcomes([1.0, 2.0], [1.0])


def test_win_rate_with_ties():
    # outcomes 1, 0.5, 0, 1 -> (1 + 0.5 + 0 + 1) / 4
    wr = win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 1.0, 3.0, 0.0], n_resamples=200)
    assert wr.rate == 0.625
    assert (wr.wins, wr.ties, wr.losses) == (2, 1, 1)
    assert wr.low <= wr.rate <= wr.high


def test_win_rate_all_ties_is_one_half_with_no_spread():
    wr = win_rate([0.7] * 10, [0.7] * 10)
    assert (wr.rate, wr.low, wr.high, wr.ties) == (0.5, 0.5, 0.5, 10)


def test_bootstrap_ci_is_seeded():
    values = [float(i % 3 == 0) for i in range(50)]
    assert bootstrap_ci(values, 500, seed=3) == bootstrap_ci(values, 500, seed=3)
    assert bootstrap_ci(values, 500, seed=3) != bootstrap_ci(values, 500, seed=4)


def test_bootstrap_ci_percentiles_by_hand():
    # [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5% and 97.5% quantiles of many resamples are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], 4000) == (0.0, 1.0)
    # [0, 0, 0, 1]: the mean is k/4 with k ~ Binomial(4, 1/4): P(k <= 2) = 0.949 < 0.975
    # <= P(k <= 3) = 0.996, so the upper end is 3/4; P(k = 0) = 0.316 > 0.025 -> lower 0.
    assert bootstrap_ci([0.0, 0.0, 0.0, 1.0], 4000) == (0.0, 0.75)


def test_bootstrap_ci_matches_the_normal_approximation():
    # 400 coin flips at 1/2: standard error sqrt(0.25 / 400) = 0.025, 95% CI 0.5 +- 0.049
    values = [float(i % 2) for i in range(400)]
    low, high = bootstrap_ci(values, 4000, seed=0)
    assert abs(low - (0.5 - 1.96 * 0.025)) < 0.006 and abs(high - (0.5 + 1.96 * 0.025)) < 0.006


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci([])
    with pytest.raises(ValueError):
        bootstrap_ci([1.0], confidence=1.0)


def test_sequence_kl_sums_log_ratios_over_the_mask():
    logps = torch.tensor([[-0.1, -0.2, -9.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-0.3, -0.1, -1.0], [-2.0, -0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # row 0: 0.2 - 0.1 (the third token is padding); row 1: 1.0 - 0.5 + 0
    assert torch.allclose(sequence_kl(logps, ref, mask), torch.tensor([0.1, 0.5]))


def test_sequence_kl_on_samples_estimates_kl_of_policy_from_reference():
    # p = [0.9, 0.05, 0.05], q = [0.3, 0.35, 0.35]:
    # KL(p||q) = 0.9 ln 3 + 0.1 ln(1/7) = 0.7942;  KL(q||p) = 1.0326 (the wrong direction)
    p = torch.tensor([0.9, 0.05, 0.05])
    q = torch.tensor([0.3, 0.35, 0.35])
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 40000, replacement=True, generator=g).view(-1, 1)
    kl = sequence_kl(p.log()[y], q.log()[y], torch.ones_like(y, dtype=torch.float)).mean()
    assert abs(float(kl) - (0.9 * math.log(3) + 0.1 * math.log(1 / 7))) < 0.02


def test_bleu_by_hand():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty):
    # BLEU = (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** 0.25
    got = bleu(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert got == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)


def test_rouge_l_by_hand():
    # LCS 3 of 3 (precision 1) and 6 (recall 1/2): F1 = 2/3; the second pair is exact.
    got = rouge_l(
        ["the cat sat", "I can't help with that."],
        ["the cat sat on the mat", "I can't help with that."],
    )
    assert got == pytest.approx((2 / 3 + 1.0) / 2)
    with pytest.raises(ValueError, match="2 hypotheses but 1"):
        rouge_l(["a", "b"], ["a"])
