"""Per-token log-probabilities and entropies of sampled tokens, without a full
``(B, T, V)`` log-softmax in memory."""

from __future__ import annotations

import torch


def token_logps(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)[target]`` per position, float32 ``(B, T)``.

    ``logits`` is ``(B, T, V)`` aligned with ``targets`` ``(B, T)`` (the caller shifts).
    Dividing by the sampling temperature makes the log-probs those of the distribution
    the tokens were drawn from. Computed one row at a time (``logit[y] - logsumexp``),
    so the temporary is ``(T, V)``, not ``(B, T, V)``.
    """
    rows = []
    for i in range(logits.size(0)):
        row = logits[i].float()
        if temperature != 1.0:
            row = row / temperature
        picked = row.gather(-1, targets[i].unsqueeze(-1)).squeeze(-1)
        rows.append(picked - torch.logsumexp(row, dim=-1))
    if not rows:
        return logits.new_zeros(targets.shape, dtype=torch.float32)
    return torch.stack(rows)
