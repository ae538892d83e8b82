"""Batched generation with Hugging Face ``generate`` (KV cache on, left padding)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.data.types import Message


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def sampled(cls, cfg: Any) -> SamplingParams:
        """Sampling with a stage config's ``max_new_tokens``, ``temperature``, ``top_p``
        and ``top_k`` (the online stages, best-of-n and self-training rounds)."""
        return cls(
            max_new_tokens=cfg.max_new_tokens,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
        )


def left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def generate_texts(
    model,
    tokenizer,
    template: str,
    prompts: Sequence[Sequence[Message]],
    params: SamplingParams = SamplingParams(),
    batch_size: int = 64,
    max_prompt_length: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Completions (special tokens removed) for each prompt conversation;
    ``progress(n)`` is called after each batch of ``n``."""
    from rlhfkit.rollout.generator import Generator

    gen = Generator(tokenizer, template, params, max_prompt_length)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out.extend(gen.generate(model, prompts[start : start + batch_size]).texts)
        if progress is not None:
            progress(min(batch_size, len(prompts) - start))
    return out
