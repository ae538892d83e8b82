"""Rollouts for online stages: batched sampling with Hugging Face ``generate`` (KV cache
on) or the token-for-token equal decoding loop of :mod:`rlhfkit.rollout.sampler`
(``backend="fast"``), returning token tensors ready for batched log-prob / value forwards.

Prompts are left-padded, responses right-padded; a response ends at its first EOS,
which belongs to it (its log-prob is an action and the reward sits on it). A response
that hits ``max_new_tokens`` without EOS is marked ``truncated``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlhfkit.config import OnlineKeys
from rlhfkit.data.templates import tokenize_prompt
from rlhfkit.data.types import Message
from rlhfkit.rollout.generation import SamplingParams, left_pad

log = logging.getLogger("rlhfkit")


@dataclass
class Rollout:
    """One batch of sampled responses.

    ``prompt_ids`` / ``prompt_mask``: ``(B, P)`` left-padded; ``response_ids`` /
    ``response_mask``: ``(B, R)`` right-padded (mask 1 up to and including EOS);
    ``truncated``: ``(B,)`` True where no EOS was produced; ``texts``: the decoded
    responses without special tokens.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    truncated: torch.Tensor
    texts: list[str]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)

    def __len__(self) -> int:
        return int(self.prompt_ids.shape[0])


def response_mask(
    response_ids: torch.Tensor, eos_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of each row up to and including its first EOS, and which rows have none."""
    is_eos = response_ids == eos_token_id
    has_eos = is_eos.any(dim=1)
    first = torch.where(has_eos, is_eos.float().argmax(dim=1), response_ids.shape[1] - 1)
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)
    mask = (positions[None, :] <= first[:, None]).long()
    return mask, ~has_eos


class Generator:
    """Samples responses from a causal LM for chat prompts.

    >>> gen = Generator(tokenizer, template, SamplingParams(max_new_tokens=32, do_sample=True))
    >>> rollout = gen.generate(policy, [[Message("user", "What is 2 + 3?")]])

    ``backend``: ``"hf"`` calls ``model.generate``; ``"fast"`` runs the decoding loop of
    :func:`rlhfkit.rollout.sampler.fast_generate` (the same tokens for the same seed),
    which hands back to ``generate`` for models and configs it does not cover.
    """

    def __init__(
        self,
        tokenizer,
        template: str,
        params: SamplingParams,
        max_prompt_length: int = 512,
        backend: str = "hf",
    ) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("generation needs a tokenizer with eos and pad tokens")
        if backend not in OnlineKeys.GENERATION_BACKENDS:
            choices = ", ".join(OnlineKeys.GENERATION_BACKENDS)
            raise ValueError(f"generation_backend {backend!r}: expected one of {choices}")
        self.backend = backend
        self.tokenizer = tokenizer
        self.template = template
        self.params = params
        self.max_prompt_length = max_prompt_length
        self.truncated_prompts = 0  # prompts left-truncated so far (counted, warned)

    def encode(self, prompts: Sequence[Sequence[Message]]) -> list[list[int]]:
        """Token ids of each prompt, left-truncated to ``max_prompt_length`` (the cut
        prompts are counted in ``truncated_prompts`` and warned about)."""
        full = [tokenize_prompt(self.tokenizer, self.template, p, sys.maxsize) for p in prompts]
        cut = sum(len(ids) > self.max_prompt_length for ids in full)
        if cut:
            self.truncated_prompts += cut
            log.warning(
                "%d of %d prompts were longer than max_prompt_length=%d tokens and lost their "
                "start (%d so far); raise max_prompt_length to keep them whole",
                cut, len(full), self.max_prompt_length, self.truncated_prompts,
            )  # fmt: skip
        return [ids[-self.max_prompt_length :] for ids in full]

    def generate(self, model, prompts: Sequence[Sequence[Message]]) -> Rollout:
        """Sample one response per prompt conversation."""
        return self.generate_ids(model, self.encode(prompts))

    @torch.no_grad()
    def generate_ids(self, model, rows: Sequence[list[int]]) -> Rollout:
        """Sample one response per encoded prompt (token ids, unpadded)."""
        tok, p = self.tokenizer, self.params
        ids, mask = left_pad(rows, tok.pad_token_id)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        kwargs: dict = {"max_new_tokens": p.max_new_tokens, "do_sample": p.do_sample}
        if p.do_sample:
            kwargs.update(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        was_training = model.training
        model.eval()
        kwargs.update(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, use_cache=True)
        try:
            seqs = None
            if self.backend == "fast":
                from rlhfkit.rollout.sampler import fast_generate  # imports transformers

                seqs = fast_generate(model, ids, mask, **kwargs)
            if seqs is None:
                seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        finally:
            model.train(was_training)
        response = seqs[:, ids.shape[1] :]
        if response.shape[1] == 0:  # nothing generated (max_new_tokens 0)
            response = torch.full((len(rows), 1), tok.eos_token_id, device=device)
        r_mask, truncated = response_mask(response, tok.eos_token_id)
        response = torch.where(r_mask.bool(), response, tok.pad_token_id)
        texts = [
            t.strip()
            for t in tok.batch_decode(
                [row[m.bool()] for row, m in zip(response, r_mask, strict=True)],
                skip_special_tokens=True,
            )
        ]
        return Rollout(ids, mask, response, r_mask, truncated, texts)
