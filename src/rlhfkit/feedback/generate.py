"""Sample candidate responses with one or more policies, for labeling."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.load import load_records
from rlhfkit.data.records import MAX_RESPONSES
from rlhfkit.data.types import PromptRecord
from rlhfkit.feedback.store.content import CandidateSet

log = logging.getLogger("rlhfkit")


@dataclass(frozen=True)
class Sampling:
    k: int = 4  # samples per prompt and policy
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64


def sample_candidates(
    models: Sequence[str],
    prompts_source: str | Path,
    sampling: Sampling = Sampling(),
    policy_names: Sequence[str] | None = None,
) -> tuple[list[CandidateSet], int]:
    """``sampling.k`` samples per prompt from each model; identical texts are kept
    once (at most 9 per prompt). Returns the candidate sets and the number of prompts
    left out because fewer than 2 distinct responses came back."""
    import torch

    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.generation import SamplingParams, generate_texts

    if sampling.k < 1:
        raise ValueError(f"k must be >= 1, got {sampling.k}")
    names = list(policy_names) if policy_names else [Path(m).name or m for m in models]
    if len(names) != len(models):
        raise ValueError(f"{len(models)} models but {len(names)} policy names")
    records = [
        r for r in load_records(prompts_source, "prompt").records if isinstance(r, PromptRecord)
    ]
    samples: list[list[tuple[str, str]]] = [[] for _ in records]
    params = SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
    )
    for model_name, policy in zip(models, names, strict=True):
        tokenizer = load_tokenizer(model_name)
        model = load_causal_lm(model_name)
        torch.manual_seed(sampling.seed)
        repeated = [r.prompt for r in records for _ in range(sampling.k)]
        texts = generate_texts(
            model, tokenizer, resolve_template(tokenizer), repeated, params, sampling.batch_size
        )
        for i, text in enumerate(texts):
            samples[i // sampling.k].append((text.strip(), policy))
        del model
    out: list[CandidateSet] = []
    dropped = 0
    for record, got in zip(records, samples, strict=True):
        first: dict[str, str] = {}
        for text, policy in got:
            if text and text not in first:
                first[text] = policy  # the first policy that wrote it
        unique = list(first.items())[:MAX_RESPONSES]
        if len(unique) < 2:
            dropped += 1
            continue
        out.append(
            CandidateSet(
                prompt=record.prompt,
                responses=tuple(t for t, _ in unique),
                policies=tuple(p for _, p in unique),
                location=record.location,
            )
        )
    if dropped:
        log.warning("%d prompt(s) got fewer than 2 distinct responses and were left out", dropped)
    return out, dropped
