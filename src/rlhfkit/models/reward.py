"""Scalar-head reward models on any causal LM backbone.

A reward model is ``AutoModelForSequenceClassification`` with ``num_labels=1``:
the SFT model's backbone with its LM head replaced by a one-output linear head
(``score``). It is saved as such, so ``from_pretrained`` loads it anywhere.

Rewards are read at the last non-padding token, found from the attention mask
rather than from ``pad_token_id`` (which breaks when pad and eos are the same
token), with left or right padding alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from rlhfkit.data.types import Conversation, Message
from rlhfkit.errors import ConfigError, InputNotFoundError


def load_reward_model(
    name_or_path: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    pad_token_id: int | None = None,
):
    """A one-output sequence-classification model; from an SFT folder the head is new."""
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models.loading import _check_exists, torch_dtype

    _check_exists(name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path,
            num_labels=1,
            dtype=torch_dtype(dtype),
            trust_remote_code=trust_remote_code,
        )
    except OSError as e:
        raise InputNotFoundError(f"model {name_or_path!r}: {e}") from e
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    _head(model)
    return model


def _unwrap(model):
    """The transformers model under a peft wrapper (its LoRA layers stay in place);
    any other model as it is. ``PeftModel.base_model`` is the LoRA tuner, not the
    backbone, so the backbone and head are looked up on this model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _head(model) -> torch.nn.Module:
    """The linear ``score`` head; under LoRA (task SEQ_CLS) peft wraps it in a
    ``ModulesToSaveWrapper`` around the original ``Linear``, which is accepted too."""
    head = getattr(_unwrap(model), "score", None)
    linear = getattr(head, "original_module", head)
    if not isinstance(linear, torch.nn.Linear):
        raise ConfigError(
            f"{type(model).__name__} has no linear 'score' head; rlhfkit reward models need "
            "an AutoModelForSequenceClassification of a decoder-only LM"
        )
    return head


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-padding token of each row (left or right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=1)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding
    does not shift absolute position embeddings (GPT-2) - what ``generate`` does too."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def token_scores(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's output at every position, shape ``(batch, length)``. Packed rows
    (:func:`rlhfkit.data.batching.pack_batch`) pass their restarting ``position_ids``
    and no ``attention_mask``."""
    if position_ids is None:
        assert attention_mask is not None
        position_ids = positions_from_mask(attention_mask)
    hidden = _unwrap(model).base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    )
    head = _head(model)
    h = hidden.last_hidden_state.to(next(head.parameters()).dtype)
    return head(h).squeeze(-1)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One scalar per row, read at its last non-padding token."""
    scores = token_scores(model, input_ids, attention_mask)
    idx = last_token_index(attention_mask)
    return scores.gather(1, idx[:, None]).squeeze(1)


def segment_last_index(segments: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Flat index (into ``segments.flatten()``) of the last token of each segment of a
    packed batch; ``segments`` is -1 on the pad tail."""
    flat = segments.flatten()
    pos = torch.arange(flat.numel(), device=flat.device)
    keep = flat >= 0
    last = torch.zeros(n_segments, dtype=torch.long, device=flat.device)
    return last.scatter_reduce(0, flat[keep], pos[keep], reduce="amax", include_self=False)


def packed_sequence_rewards(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segments: torch.Tensor,
    n_segments: int,
) -> torch.Tensor:
    """One scalar per example of a packed batch (:func:`rlhfkit.data.batching.pack_batch`),
    read at the last token of its segment: the same values as :func:`sequence_rewards`
    on the padded batch, when the model keeps packed sequences apart."""
    scores = token_scores(model, input_ids, None, position_ids)
    return scores.flatten()[segment_last_index(segments, n_segments)]


def batch_rewards(model, batch: dict) -> torch.Tensor:
    """Per-example rewards of a padded batch (one per row) or a packed one (per segment)."""
    if "segments" in batch:
        return packed_sequence_rewards(
            model,
            batch["input_ids"],
            batch["position_ids"],
            batch["segments"],
            int(batch["n_segments"]),
        )
    return sequence_rewards(model, batch["input_ids"], batch["attention_mask"])


def as_conversation(prompt: str | Sequence[Message]) -> Conversation:
    if isinstance(prompt, str):
        return (Message("user", prompt),)
    return tuple(prompt)


class RewardModel:
    """Scores (prompt, response) pairs with a trained reward model folder.

    >>> rm = RewardModel.from_pretrained("runs/rm/final")
    >>> rm.score(["What is 2 + 3?"], ["5"])  # tensor([...])
    """

    def __init__(
        self,
        model,
        tokenizer,
        template: str,
        max_length: int = 1024,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        template: str = "auto",
        max_length: int = 1024,
        dtype: str = "float32",
        device: str | None = None,
    ) -> RewardModel:
        from rlhfkit.data.templates import resolve_template
        from rlhfkit.models.loading import load_tokenizer

        tok = load_tokenizer(str(path))
        model = load_reward_model(str(path), dtype=dtype, pad_token_id=tok.pad_token_id)
        return cls(model, tok, resolve_template(tok, template), max_length, device)

    def encode(self, prompt: str | Sequence[Message], response: str) -> list[int]:
        from rlhfkit.data.templates import tokenize_conversation

        conv = (*as_conversation(prompt), Message("assistant", response))
        return tokenize_conversation(self.tokenizer, self.template, conv, self.max_length).input_ids

    @torch.no_grad()
    def score_ids(
        self, rows: Sequence[list[int]], batch_size: int = 64, progress=None
    ) -> torch.Tensor:
        """Rewards for token-id rows, batched by length (sorted) to limit padding."""
        from rlhfkit.rollout.generation import left_pad

        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out = torch.empty(len(rows), dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = left_pad([rows[i] for i in idx], self.tokenizer.pad_token_id)
            r = sequence_rewards(self.model, ids.to(self.device), mask.to(self.device))
            out[idx] = r.float().cpu()
            if progress is not None:
                progress(len(idx))
        return out

    def score(
        self,
        prompts: Sequence[str | Sequence[Message]],
        responses: Sequence[str],
        batch_size: int = 64,
    ) -> torch.Tensor:
        """One reward per (prompt, response), shape ``(N,)``."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        rows = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        return self.score_ids(rows, batch_size)
