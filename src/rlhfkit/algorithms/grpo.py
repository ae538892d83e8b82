"""Group-relative policy optimisation (GRPO, Shao et al. 2024, DeepSeekMath) and the
leave-one-out baseline (RLOO, Ahmadian et al. 2024) as pure tensor functions.

Rewards arrive as one flat ``(N * G,)`` vector whose consecutive blocks of ``G`` are the
samples of one prompt. Advantages are per sequence, ``(N * G,)``; the trainer broadcasts
them over the response tokens. Per-token tensors are ``(B, T)`` with ``mask`` 1 on real
response tokens.
"""

from __future__ import annotations

import torch

from rlhfkit.algorithms.ppo import clipped_surrogate

__all__ = [
    "aggregate_loss",
    "clipped_surrogate",
    "group_advantages",
    "loss_denominator",
    "rloo_advantages",
    "sequence_loss_sum",
]

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
ADVANTAGE_ESTIMATORS = ("grpo", "rloo")


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not split into groups of {group_size} samples"
        )
    return rewards.float().view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's outcome advantages: ``A_i = (r_i - mean(group)) / (std + eps)``.

    ``scale`` picks the std: ``group`` (the paper: the std of the prompt's own ``G``
    samples), ``batch`` (one std over the whole batch: groups with a small spread are
    not blown up), or ``none`` (Dr. GRPO, Liu et al. 2025: no division at all, which
    removes the bias toward prompts that are too easy or too hard). Stds are the
    unbiased sample std (``torch.std``), as TRL computes them.

    Returns the advantages and a ``(N,)`` bool mask of groups whose rewards are all
    equal: their advantages are exactly 0, so they teach nothing.
    """
    if scale not in SCALE_REWARDS:
        raise ValueError(f"unknown scale_rewards {scale!r}; expected one of {SCALE_REWARDS}")
    g = _groups(rewards, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    zero_spread = (g.max(dim=1).values - g.min(dim=1).values) == 0
    if scale == "group":
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g[:, :1])
        centred = centred / (std + eps)
    elif scale == "batch":
        std = g.std() if g.numel() > 1 else g.new_zeros(())
        centred = centred / (std + eps)
    centred = torch.where(zero_spread[:, None], torch.zeros_like(centred), centred)
    return centred.reshape(-1), zero_spread


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO: each sample's baseline is the mean reward of the *other* ``G - 1`` samples
    of its prompt, ``A_i = r_i - (sum_j r_j - r_i) / (G - 1)`` - unbiased, no std.
    Returns the advantages and the zero-spread mask as :func:`group_advantages` does."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt (num_generations >= 2)")
    g = _groups(rewards, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    zero_spread = (g.max(dim=1).values - g.min(dim=1).values) == 0
    return (g - baseline).reshape(-1), zero_spread


def sequence_loss_sum(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The numerator of the aggregated loss of a (micro-)batch:

    * ``grpo`` - sum over sequences of each sequence's token mean;
    * ``dapo`` / ``dr_grpo`` - sum over all tokens.
    """
    if loss_type == "grpo":
        per_seq = (per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        return per_seq.sum()
    if loss_type in ("dapo", "dr_grpo"):
        return (per_token * mask).sum()
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def loss_denominator(mask: torch.Tensor, loss_type: str, max_length: int) -> float:
    """The denominator that goes with :func:`sequence_loss_sum` over the same batch:

    * ``grpo`` - the number of sequences (mean of per-sequence means, the paper's
      ``1/G sum_i 1/|o_i| sum_t``): every sequence weighs the same, so a token of a
      long response counts less than one of a short response - long wrong answers are
      penalised less per token, a bias toward length on failures (Dr. GRPO, sec. 3.1);
    * ``dapo`` - the number of tokens (DAPO, Yu et al. 2025): every token weighs the
      same; a long response counts in proportion to its length;
    * ``dr_grpo`` - sequences x ``max_length`` (Dr. GRPO): a constant, so no length
      bias at all and the gradient scale does not depend on how long the batch is.
    """
    if loss_type == "grpo":
        return float(mask.shape[0])
    if loss_type == "dapo":
        return float(mask.sum())
    if loss_type == "dr_grpo":
        return float(mask.shape[0] * max_length)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")


def aggregate_loss(
    per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_length: int
) -> torch.Tensor:
    """The batch loss under ``loss_type``: ``sequence_loss_sum / loss_denominator``."""
    return sequence_loss_sum(per_token, mask, loss_type) / max(
        loss_denominator(mask, loss_type, max_length), 1.0
    )
