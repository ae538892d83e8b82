"""Inference-time best-of-K (``rlhfkit best-of-n``): K samples per prompt, the one the
reward scores highest is the answer (Nakano et al. 2021's best-of-n; Llama 2's
rejection sampling without the fine-tuning).

The output JSONL has one row per prompt: the prompt record's fields, ``response`` and
``score`` (the best), and all ``responses`` / ``scores`` with the kept index
``best``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.config import BestOfNConfig
from rlhfkit.rollout.candidates import (
    eligible_scores,
    prompt_row,
    sample_candidates,
    score_candidates,
)
from rlhfkit.rollout.selection import best_of

log = logging.getLogger("rlhfkit")


@dataclass(frozen=True)
class BestOfNSummary:
    """``best_mean``: mean reward of the chosen responses; ``sample_mean``: of all
    samples (what one sample per prompt scores on average); ``first_mean``: of each
    prompt's first sample."""

    prompts: int
    k: int
    best_mean: float
    sample_mean: float
    first_mean: float
    seconds: float
    out: Path


def _mean(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def run_best_of_n(cfg: BestOfNConfig) -> BestOfNSummary:
    """Sample, score, pick the best of each prompt's K, write ``cfg.out``."""
    from rlhfkit.data.load import load_records
    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.rollout.generation import SamplingParams
    from rlhfkit.rollout.generator import Generator
    from rlhfkit.rollout.rewards import reward_from_config

    cfg.validate()
    t0 = time.perf_counter()
    records = load_records(cfg.prompts, "prompt", split=cfg.split, skip_invalid=cfg.skip_invalid)
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu")
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    model = load_causal_lm(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    reward = reward_from_config(cfg, device)
    params = SamplingParams.sampled(cfg)
    generator = Generator(
        tokenizer, resolve_template(tokenizer, cfg.template), params, cfg.max_prompt_length
    )
    torch.manual_seed(cfg.seed)
    cands = sample_candidates(
        model.to(device), generator, records.records, cfg.samples_per_prompt,  # type: ignore[arg-type]
        cfg.generation_batch_size, "best-of-n: sampling",
    )  # fmt: skip
    score_candidates(cands, reward, cfg.score_batch_size, cfg.missing_eos_penalty)
    scores, empty = eligible_scores(cands)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    best_scores, none = [], 0
    with out.open("w", encoding="utf-8") as f:
        for rec, texts, row in zip(cands.records, cands.texts, scores, strict=True):
            best = best_of(row)
            none += best is None
            best_scores.append(row[best] if best is not None else float("nan"))
            f.write(
                json.dumps(
                    {
                        **prompt_row(rec),
                        "response": texts[best] if best is not None else "",
                        "score": row[best] if best is not None else None,
                        "best": best,
                        "responses": texts,
                        "scores": [None if math.isnan(s) else s for s in row],
                    }
                )
                + "\n"
            )
    if empty:
        log.warning("best-of-n: %d empty response(s) were never chosen", empty)
    if none:
        log.warning('best-of-n: %d prompt(s) got no non-empty response (response "")', none)
    return BestOfNSummary(
        prompts=len(cands),
        k=cfg.samples_per_prompt,
        best_mean=_mean(best_scores),
        sample_mean=_mean([s for row in scores for s in row]),
        first_mean=_mean([row[0] for row in scores]),
        seconds=time.perf_counter() - t0,
        out=out,
    )
