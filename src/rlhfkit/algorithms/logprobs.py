"""Per-token log-probabilities and entropies of sampled tokens, without a full
``(B, T, V)`` log-softmax in memory."""

from __future__ import annotations

import torch

# Elements of logits per ``logsumexp`` call: bounds its temporaries on large vocabularies.
LOGSUMEXP_CHUNK = 1 << 24


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
    b, t, v = logits.shape
    if b == 0 or t == 0:
        return logits.new_zeros(targets.shape, dtype=torch.float32)
    rows = max(1, LOGSUMEXP_CHUNK // (t * v))
    parts = []
    for start in range(0, b, rows):
        chunk = logits[start : start + rows].float()
        if temperature != 1.0:
            chunk = chunk / temperature
        picked = chunk.gather(-1, targets[start : start + rows].unsqueeze(-1)).squeeze(-1)
        parts.append(picked - torch.logsumexp(chunk, dim=-1))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def token_logps_and_entropy(
    logits: torch.Tensor, targets: torch.Tensor, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logps` (temperature 1) and the entropy ``-sum_v p_v log p_v`` per
    position, both float32 ``(B, T)``, from one ``logsumexp``: the entropy is
    ``lse - sum_v softmax_v * logit_v`` with the log-probs' own ``lse``, so it is
    bitwise :func:`rlhfkit.algorithms.ppo.entropy_from_logits` without computing the
    normaliser a second time. Chunked like :func:`token_logps`. The entropy is recorded
    for backward only with ``entropy_grad`` (a loss term, as PPO's entropy bonus); as a
    metric it keeps no ``(B, T, V)`` tensors alive."""
    b, t, v = logits.shape
    if b == 0 or t == 0:
        empty = logits.new_zeros(targets.shape, dtype=torch.float32)
        return empty, empty.clone()
    rows = max(1, LOGSUMEXP_CHUNK // (t * v))
    logps, entropy = [], []
    for start in range(0, b, rows):
        chunk = logits[start : start + rows].float()
        lse = torch.logsumexp(chunk, dim=-1, keepdim=True)
        picked = chunk.gather(-1, targets[start : start + rows].unsqueeze(-1))
        logps.append((picked - lse).squeeze(-1))
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            probs = torch.exp(chunk - lse)
            entropy.append(lse.squeeze(-1) - (probs * chunk).sum(dim=-1))
    if len(logps) == 1:
        return logps[0], entropy[0]
    return torch.cat(logps), torch.cat(entropy)
