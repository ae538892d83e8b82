"""Supervised fine-tuning loss: next-token negative log-likelihood on labelled tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of next-token NLL over labelled positions.

    ``L = -sum_t [y_{t+1} != -100] * log p(y_{t+1} | y_<=t)``, the causal-LM
    objective of GPT / InstructGPT SFT with the prompt masked out (labels set to
    ``-100`` on prompt and padding tokens). ``logits[:, t]`` predicts
    ``labels[:, t + 1]``. Returns ``(sum, count)`` so callers can normalise over
    any number of micro-batches and processes.
    """
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    return selected_nll_sum(logits[:, :-1][mask], shift_labels[mask]), mask.sum()


def selected_nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """:func:`token_nll_sum`'s sum on logits already narrowed to the labelled
    positions: ``(N, V)`` logits, ``(N,)`` next tokens (see
    :func:`rlhfkit.models.heads.labelled_logits`)."""
    return F.cross_entropy(logits.float(), targets, reduction="sum")
