"""Per-token log-probabilities and entropies of sampled tokens, without a full
``(B, T, V)`` log-softmax in memory."""

from __future__ import annotations

import torch

# Elements of logits per ``logsumexp`` call: bounds its temporaries on large vocabularies.
LOGSUMEXP_CHUNK = 1 << 24


def _row_chunks(logits: torch.Tensor, temperature: float = 1.0):
    """``(rows, chunk)`` over slices of ``logits`` of at most :data:`LOGSUMEXP_CHUNK`
    elements: the float32 (temperature-scaled) chunk, and its slice of rows."""
    b, t, v = logits.shape
    step = max(1, LOGSUMEXP_CHUNK // max(t * v, 1))
    for start in range(0, b, step):
        chunk = logits[start : start + step].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        yield slice(start, start + step), chunk


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _entropy(logits: torch.Tensor, log_z: torch.Tensor) -> torch.Tensor:
    """``-sum_v p_v log p_v`` from float32 logits and their ``logsumexp`` (keepdim)."""
    probs = torch.exp(logits - log_z)
    return log_z.squeeze(-1) - (probs * logits).sum(dim=-1)


def token_logps(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)[target]`` per position, float32 ``(B, T)``.

    ``logits`` is ``(B, T, V)`` aligned with ``targets`` ``(B, T)`` (the caller shifts).
    Dividing by the sampling temperature makes the log-probs those of the distribution
    the tokens were drawn from. Computed as ``logit[y] - logsumexp`` over chunks of
    rows of at most :data:`LOGSUMEXP_CHUNK` logits (one chunk for a rollout batch of a
    small vocabulary), so the float32 temporary is bounded, never ``(B, T, V)`` of a
    large vocabulary, and there is no Python loop per row.
    """
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        return logits.new_zeros(targets.shape, dtype=torch.float32)
    parts = []
    for rows, chunk in _row_chunks(logits, temperature):
        picked = chunk.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1)
        parts.append(picked - torch.logsumexp(chunk, dim=-1))
    return _cat(parts)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy ``-sum_v p_v log p_v`` of the categorical over the last dim."""
    logits = logits.float()
    return _entropy(logits, torch.logsumexp(logits, dim=-1, keepdim=True))


def token_logps_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logps` (temperature 1) and :func:`entropy_from_logits` per position,
    both float32 ``(B, T)`` and bitwise what those give, from one ``logsumexp`` per
    chunk of rows instead of two. The entropy is recorded for backward only with
    ``entropy_grad`` (a loss term, as PPO's entropy bonus); as a metric it keeps no
    ``(B, T, V)`` tensors alive."""
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        empty = logits.new_zeros(targets.shape, dtype=torch.float32)
        return empty, empty.clone()
    logps, entropy = [], []
    for rows, chunk in _row_chunks(logits):
        lse = torch.logsumexp(chunk, dim=-1, keepdim=True)
        picked = chunk.gather(-1, targets[rows].unsqueeze(-1))
        logps.append((picked - lse).squeeze(-1))
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy.append(_entropy(chunk, lse))
    return _cat(logps), _cat(entropy)
