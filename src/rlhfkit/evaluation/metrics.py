"""Evaluation metrics: win rate with ties, a seeded bootstrap interval, KL to a
reference from sampled responses, and BLEU / ROUGE-L through maintained libraries
(``sacrebleu``, ``rouge-score``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def outcomes(scores: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Per prompt: 1.0 where ``scores`` beats ``reference``, 0.5 on a tie, 0.0 on a loss."""
    if len(scores) != len(reference):
        raise ValueError(f"{len(scores)} scores but {len(reference)} reference scores")
    return [
        1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores, reference, strict=True)
    ]


def bootstrap_ci(
    values: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (Efron & Tibshirani 1993):
    ``n_resamples`` resamples of the items with replacement, drawn by
    ``torch.Generator().manual_seed(seed)``; the interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their means.
    The same inputs and seed always give the same interval."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            f"n_resamples must be >= 1 and 0 < confidence < 1, got {n_resamples}, {confidence}"
        )
    x = torch.tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (n_resamples, len(values)), generator=g)
    means = x[idx].mean(dim=1)
    q = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
    low, high = torch.quantile(means, q).tolist()
    return low, high


@dataclass(frozen=True)
class WinRate:
    """Share of prompts where the policy's response beats the reference's (ties half)."""

    rate: float
    low: float
    high: float
    wins: int
    ties: int
    losses: int

    def __str__(self) -> str:
        return f"{self.rate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def win_rate(
    scores: Sequence[float],
    reference: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of ``scores`` over ``reference`` (paired per prompt), with a bootstrap
    interval over prompts (:func:`bootstrap_ci`)."""
    o = outcomes(scores, reference)
    if not o:
        raise ValueError("win_rate needs at least one prompt")
    low, high = bootstrap_ci(o, n_resamples, confidence, seed)
    return WinRate(
        rate=sum(o) / len(o),
        low=low,
        high=high,
        wins=sum(v == 1.0 for v in o),
        ties=sum(v == 0.5 for v in o),
        losses=sum(v == 0.0 for v in o),
    )


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence ``sum_t mask_t * (log pi(y_t) - log pi_ref(y_t))``, shape ``(B,)``.

    For ``y`` sampled from ``pi`` its mean over sequences is the k1 (unbiased) estimate
    of ``KL(pi || pi_ref)`` per response (Schulman 2020, "Approximating KL divergence"),
    the quantity PPO's ``kl`` metric reports during training."""
    return ((logps - ref_logps) * mask).sum(dim=1)


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults (13a tokenizer, exponential
    smoothing off, one reference per hypothesis)."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (0-1) of each hypothesis against its reference (``rouge-score``)."""
    from rouge_score import rouge_scorer

    _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    f1 = [
        scorer.score(ref, hyp)["rougeL"].fmeasure
        for hyp, ref in zip(hypotheses, references, strict=True)
    ]
    return sum(f1) / len(f1)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
