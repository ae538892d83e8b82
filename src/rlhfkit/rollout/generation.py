"""Batched generation with Hugging Face ``generate`` (KV cache on, left padding)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhfkit.data.templates import tokenize_prompt
from rlhfkit.data.types import Message


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


@torch.no_grad()
def generate_texts(
    model,
    tokenizer,
    template: str,
    prompts: Sequence[Sequence[Message]],
    params: SamplingParams = SamplingParams(),
    batch_size: int = 64,
    max_prompt_length: int = 512,
) -> list[str]:
    """Completions (special tokens removed) for each prompt conversation."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    kwargs: dict = {"max_new_tokens": params.max_new_tokens, "do_sample": params.do_sample}
    if params.do_sample:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    for start in range(0, len(prompts), batch_size):
        rows = [
            tokenize_prompt(tokenizer, template, p, max_prompt_length)
            for p in prompts[start : start + batch_size]
        ]
        ids, mask = left_pad(rows, tokenizer.pad_token_id)
        seqs = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
        new = seqs[:, ids.shape[1] :]
        out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    model.train(was_training)
    return out
