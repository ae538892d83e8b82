"""SFT: next-token loss on the assistant turns of demonstrations."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from rlhfkit.algorithms.sft import selected_nll_sum
from rlhfkit.config import SFTConfig
from rlhfkit.data.batching import PadCollator, hidden_size_of, keeps_packed_apart, pack
from rlhfkit.data.prepare import tokenize_sft
from rlhfkit.models.heads import labelled_logits
from rlhfkit.models.loading import load_causal_lm, lora_spec
from rlhfkit.training.loop import LossOutput, Trainer, TrainResult
from rlhfkit.training.run import prepare_stage, tokenize_splits

log = logging.getLogger("rlhfkit")


class SFTObjective:
    """Items are completion tokens: the loss is a token mean over the optimizer step."""

    def count(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch
        }
        logits, targets, _ = labelled_logits(model, inputs, batch["labels"])
        return LossOutput(selected_nll_sum(logits, targets))

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(means["loss"], 50.0))}


def run_sft(cfg: SFTConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; writes the run folder ``cfg.out``."""
    s = prepare_stage(cfg, "sft", resume=resume, overwrite=overwrite)
    train, evals = tokenize_splits(tokenize_sft, s, cfg.max_length)
    rows: list[Any] = pack(train, cfg.max_length) if cfg.packing else train
    if cfg.packing:
        log.info(
            "packed %d examples into %d rows of <= %d tokens", len(train), len(rows), cfg.max_length
        )
    model = load_causal_lm(
        cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, lora=lora_spec(cfg)
    )
    # Unpacked, each batch is still packed into as few rows as it needs (the same
    # examples and tokens per step) when the model keeps packed sequences apart.
    free = not cfg.packing and keeps_packed_apart(
        model.to(s.accelerator.device), train[:64], s.tokenizer.pad_token_id
    )
    if not cfg.packing:
        log.info("padding-free batches: %s", "on" if free else "off")
    collate = PadCollator(
        s.tokenizer.pad_token_id, padding_free=free, hidden_size=hidden_size_of(model)
    )
    trainer = Trainer(
        cfg, model, s.tokenizer, SFTObjective(), rows, collate, evals, "sft", s.accelerator
    )
    return trainer.fit(resume=resume)
