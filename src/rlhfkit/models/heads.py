"""Logits only where a loss reads them.

An SFT, DPO or HIR loss reads the log-probability of the labelled next tokens
only (the completion, not the prompt nor the padding), yet a causal LM's forward
runs its output head on every position. :func:`labelled_logits` runs the same
forward with the head applied to the labelled positions only: the same loss, the
same gradients, and the ``(positions, vocab)`` projection and log-softmax shrink
by the unlabelled share (a prompt of 15 tokens before a 4-token answer: 80%).

The selection is a forward pre-hook on ``get_output_embeddings()``, so the
model's own ``forward`` still runs (DDP's gradient hooks, peft adapters, logit
soft-capping or scaling after the head all apply). A model whose forward does not
pass ``(batch, length, hidden)`` states through that module once, or reshapes its
logits afterwards, is detected on the first call and gets full logits from then on.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rlhfkit.data.templates import IGNORE_INDEX

log = logging.getLogger("rlhfkit")
_FULL = "_rlhfkit_full_logits"  # set on a model whose head cannot be narrowed


def _head(model: torch.nn.Module) -> torch.nn.Module | None:
    inner = getattr(model, "module", model)  # DDP / FSDP wrappers
    get = getattr(inner, "get_output_embeddings", None)
    return get() if callable(get) else None


def _narrowed_forward(
    model: torch.nn.Module, head: torch.nn.Module, inputs: dict[str, Any], keep: torch.Tensor
) -> torch.Tensor | None:
    """``model(**inputs)`` logits at the ``keep`` positions ``(N, V)``, or None when the
    model's head does not see one ``(B, T, H)`` tensor whose rows it can narrow."""
    seen: list[bool] = []

    def narrow(_module: torch.nn.Module, args: tuple) -> tuple | None:
        hidden = args[0] if args else None
        if seen or not torch.is_tensor(hidden) or hidden.shape[:2] != keep.shape:
            seen.append(False)
            return None
        seen.append(True)
        return (hidden[keep], *args[1:])

    handle = head.register_forward_pre_hook(narrow)
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    n = int(keep.sum())
    if seen == [True] and logits.dim() == 2 and logits.size(0) == n:
        return logits
    return None


def labelled_logits(
    model: torch.nn.Module, inputs: dict[str, Any], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of the positions whose next token is labelled, and those tokens.

    ``labels`` is ``(B, T)`` aligned with ``inputs["input_ids"]`` (``-100`` where
    there is no loss); position ``t`` predicts ``labels[:, t + 1]``. Returns
    ``(logits (N, V), targets (N,), mask (B, T - 1))`` with ``mask`` the labelled
    next tokens, in row-major order (``labels[:, 1:][mask] == targets``).
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:][mask]
    head = None if getattr(model, _FULL, False) else _head(model)
    if head is not None:
        keep = torch.nn.functional.pad(mask, (0, 1))
        logits = _narrowed_forward(model, head, inputs, keep)
        if logits is not None:
            return logits, targets, mask
        setattr(model, _FULL, True)
        log.warning(
            "%s: its output head does not run position by position on (batch, length, "
            "hidden) states; computing logits at every position",
            type(getattr(model, "module", model)).__name__,
        )
    logits = model(**inputs, use_cache=False).logits[:, :-1][mask]
    return logits, targets, mask
