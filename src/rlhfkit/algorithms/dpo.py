"""Direct preference losses on sequence log-probabilities: DPO and its variants, and CPL.

Inputs are per-pair *summed* log-probabilities of the completion tokens (see
:func:`sequence_logps`) of the preferred (``chosen``) and dispreferred (``rejected``)
response, under the policy and, for the DPO family, a frozen reference model. Every
loss is returned per pair, shape ``(P,)``, so callers choose the reduction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlhfkit.algorithms import logprobs

IGNORE_INDEX = -100

DPO_LOSSES = ("sigmoid", "robust", "ipo", "hinge")


@dataclass(frozen=True)
class DPOOutput:
    """Per-pair DPO losses and the implicit rewards ``beta * log(pi / pi_ref)`` (detached)."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


@dataclass(frozen=True)
class CPLOutput:
    """Per-pair CPL losses and the scores ``alpha * S`` of each response (detached)."""

    losses: torch.Tensor
    chosen_scores: torch.Tensor
    rejected_scores: torch.Tensor


def _lengths(lengths: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Token counts as ``like``'s dtype, at least 1 (an empty completion has logp 0)."""
    return lengths.to(device=like.device, dtype=like.dtype).clamp(min=1.0)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOOutput:
    """DPO-family loss per pair.

    With the log-ratio margin
    ``h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))``
    and ``eps = label_smoothing``:

    - ``"sigmoid"``: DPO (Rafailov et al. 2023, eq. 7) ``-log sigmoid(beta * h)``; with
      ``eps > 0`` conservative DPO (cDPO, Mitchell 2023), the BCE against labels flipped
      with probability ``eps``: ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``.
    - ``"robust"``: provably robust DPO (Chowdhury et al. 2024), the unbiased loss under
      label noise ``eps``:
      ``(-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)``;
      requires ``0 <= eps < 0.5``.
    - ``"ipo"``: IPO (Azar et al. 2023, eq. 17) ``(h_avg - 1 / (2 beta))^2``, where, as in
      TRL, ``h_avg`` uses length-averaged log-probs:
      ``(logp_c - ref_logp_c) / |y_c| - (logp_r - ref_logp_r) / |y_r|``; requires
      ``chosen_lengths`` and ``rejected_lengths``.
    - ``"hinge"``: SLiC (Zhao et al. 2023) ``max(0, 1 - beta * h)``.

    ``label_smoothing`` is ignored by ``"ipo"`` and ``"hinge"``. The returned rewards are
    ``beta * (logp - ref_logp)`` of each response, detached.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; valid: {', '.join(DPO_LOSSES)}")
    eps = label_smoothing
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio

    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
        if eps != 0.0:
            losses = (1.0 - eps) * losses - eps * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"robust DPO requires 0 <= label_smoothing < 0.5, got {eps}")
        losses = (-(1.0 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (
            1.0 - 2.0 * eps
        )
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo loss requires chosen_lengths and rejected_lengths")
        h_avg = chosen_ratio / _lengths(chosen_lengths, chosen_ratio) - rejected_ratio / _lengths(
            rejected_lengths, rejected_ratio
        )
        losses = (h_avg - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1.0 - beta * h)

    return DPOOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_ratio).detach(),
        rejected_rewards=(beta * rejected_ratio).detach(),
    )


def cpl_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    *,
    alpha: float = 0.1,
    lam: float = 0.5,
    bc_weight: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
) -> CPLOutput:
    """Contrastive Preference Learning loss per pair (Hejna et al. 2023).

    With ``S = sum_t log pi(a_t | s_t)`` (discount 1 for language), eq. 5 with the
    conservative weight ``lam`` of sec. 3.2 on the rejected segment:
    ``P(c > r) = exp(alpha S_c) / (exp(alpha S_c) + exp(lam alpha S_r))`` and
    ``loss = -log P = -log sigmoid(alpha S_c - lam alpha S_r)``. ``lam = 1`` is plain
    CPL, ``lam < 1`` the conservative variant. No reference model.

    ``bc_weight > 0`` adds the behaviour-cloning regulariser (CPL-BC)
    ``bc_weight * (-S_c / |y_c|)``, the mean NLL per chosen token; it requires
    ``chosen_lengths``. Scores ``alpha * S`` are returned detached.
    """
    chosen_scores = alpha * chosen_logps
    rejected_scores = alpha * rejected_logps
    losses = -F.logsigmoid(chosen_scores - lam * rejected_scores)
    if bc_weight != 0.0:
        if chosen_lengths is None:
            raise ValueError("cpl_loss with bc_weight > 0 requires chosen_lengths")
        losses = losses + bc_weight * (-chosen_logps / _lengths(chosen_lengths, chosen_logps))
    return CPLOutput(
        losses=losses,
        chosen_scores=chosen_scores.detach(),
        rejected_scores=rejected_scores.detach(),
    )


def token_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every labelled next token: ``log p(y_{t+1} | y_<=t)`` at ``[:, t]``.

    ``logits[:, t]`` predicts ``labels[:, t + 1]`` (shapes ``(B, T, V)`` and ``(B, T)``).
    Only the labelled positions go through :func:`selected_token_logps` (float32,
    chunked), so the full ``(B, T, V)`` log-softmax is never materialised. Returns
    float32 ``(B, T - 1)`` log-probs (0 where the label is ``ignore_index``,
    differentiable) and the bool mask of labelled positions.
    """
    mask = labels[:, 1:] != ignore_index
    out = logits.new_zeros(mask.shape, dtype=torch.float32)
    if mask.any():
        out = out.masked_scatter(
            mask, selected_token_logps(logits[:, :-1][mask], labels[:, 1:][mask])
        )
    return out, mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-prob of the labelled next tokens per row, and their count per row.

    ``log pi(y) = sum_t [y_{t+1} != ignore] * log p(y_{t+1} | y_<=t)`` (see
    :func:`token_logps`). Returns ``(logps, counts)``: float32 ``(B,)``
    (differentiable) and long ``(B,)``.
    """
    per_token, mask = token_logps(logits, labels, ignore_index)
    return per_token.sum(dim=-1), mask.sum(dim=-1)


def selected_token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[target]`` of ``N`` selected positions: ``(N, V)`` logits
    and ``(N,)`` targets in, float32 ``(N,)`` out (differentiable); the chunked
    ``logit[y] - logsumexp(logits)`` of :func:`rlhfkit.algorithms.logprobs.token_logps`
    with one position per row."""
    return logprobs.token_logps(logits[:, None], targets[:, None])[:, 0]


def grouped_logps(
    logits: torch.Tensor, targets: torch.Tensor, owner: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs and token counts per sequence of ``N`` selected positions:
    position ``i`` (logits ``(N, V)``, target ``(N,)``) counts for sequence
    ``owner[i]`` in ``0 .. n - 1``. Returns float32 ``(n,)`` and long ``(n,)``."""
    per_token = selected_token_logps(logits, targets)
    logps = per_token.new_zeros(n).index_add(0, owner, per_token)
    return logps, torch.bincount(owner, minlength=n)


def segment_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    segments: torch.Tensor,
    n_segments: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sequence_logps` of packed rows: sums per sequence, not per row.

    ``segments[r, t]`` is the sequence (``0 .. n_segments - 1``) token ``t`` of row
    ``r`` belongs to; a labelled token ``labels[r, t + 1]`` counts for sequence
    ``segments[r, t + 1]``. The first token of every sequence must be unlabelled
    (it would be predicted from the sequence before it). Returns float32
    ``(n_segments,)`` log-probs and long ``(n_segments,)`` token counts.
    """
    mask = labels[:, 1:] != ignore_index
    return grouped_logps(
        logits[:, :-1][mask], labels[:, 1:][mask], segments[:, 1:][mask], n_segments
    )
