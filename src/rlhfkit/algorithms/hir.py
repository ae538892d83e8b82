"""Hindsight instruction relabeling (HIR, Zhang et al. 2023): the contrastive term.

After relabeling, each output ``o_i`` has an instruction ``p_i`` it is right for. Besides
the supervised loss ``-log pi(o_i | p_i)``, HIR adds a contrastive loss: the output must
be more likely under its own instruction than under the other instructions it is
contrasted with (HIR sec. 3.3, an InfoNCE over instructions).
"""

from __future__ import annotations

import torch


def hir_contrastive_loss(logps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-output contrastive loss over instructions.

    ``logps[i, c] = log pi(o_i | p_c)``: the summed log-probability of output ``i``
    given candidate instruction ``c`` (shape ``(n, m)``, one column per *distinct*
    instruction, so a duplicate is never its own negative); ``target[i]`` is the
    column of output ``i``'s relabeled instruction. Then

        ``L_i = -log( exp(P_{i, t_i}) / sum_c exp(P_{i, c}) )
              = logsumexp_c P_{i, c} - P_{i, t_i}``,

    the cross-entropy of the row's log-probs taken as logits. ``L_i >= 0``; it is 0
    when there is a single instruction (``m == 1``: nothing to contrast with). Its
    gradient raises ``log pi(o_i | p_{t_i})`` and lowers ``log pi(o_i | p_c)`` for the
    other instructions, weighted by their softmax share. Returns ``(n,)``.
    """
    if logps.dim() != 2 or target.shape != (logps.shape[0],):
        raise ValueError(
            f"expected logps (n, m) and target (n,), got {tuple(logps.shape)} and "
            f"{tuple(target.shape)}"
        )
    logps = logps.float()
    own = logps.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return torch.logsumexp(logps, dim=1) - own
