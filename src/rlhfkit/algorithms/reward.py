"""Reward-model losses on pairs of scalar rewards, and their grouping by prompt.

All functions take rewards of the preferred (``chosen``) and dispreferred
(``rejected``) responses of each pair and return a per-pair loss, so callers
decide how pairs are averaged (InstructGPT averages the C(K,2) pairs of one
prompt into one batch element: :func:`group_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry pairwise loss, per pair.

    InstructGPT (Ouyang et al. 2022, eq. 1): ``-log sigmoid(r_c - r_r)``.
    Llama 2 (Touvron et al. 2023, eq. 2) adds a margin from the annotators'
    margin label: ``-log sigmoid(r_c - r_r - m(r))``; pass ``margin`` for it.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def hinge_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """``max(0, m - (r_c - r_r))`` per pair: ``torch.nn.MarginRankingLoss`` with target 1."""
    return torch.clamp(margin - (chosen - rejected), min=0.0)


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """``(r_c + r_r)^2`` per pair: pulls rewards toward zero mean (Eisenstein et al. 2023,
    as TRL's ``center_rewards_coefficient``); the caller multiplies by the coefficient."""
    return (chosen + rejected) ** 2


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of per-pair ``values`` within each group (``groups[i]`` in ``0..n_groups-1``).

    InstructGPT: ``loss = -1/C(K,2) * sum over the pairs of one prompt``, each prompt one
    batch element. Groups without pairs get 0.
    """
    sums = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(
        0, groups, values
    )
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(
        0, groups, torch.ones_like(values)
    )
    return sums / counts.clamp(min=1.0)
