"""SFT: next-token loss on the assistant turns of demonstrations."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import torch

from rlhfkit.algorithms.sft import token_nll_sum
from rlhfkit.config import SFTConfig
from rlhfkit.data.batching import PadCollator, pack
from rlhfkit.data.load import load_records
from rlhfkit.data.prepare import tokenize_sft
from rlhfkit.data.templates import resolve_template
from rlhfkit.models.loading import LoraSpec, load_causal_lm, load_tokenizer
from rlhfkit.training.loop import LossOutput, Trainer, TrainResult, make_accelerator
from rlhfkit.training.run import prepare_run_dir

log = logging.getLogger("rlhfkit")


class SFTObjective:
    """Items are completion tokens: the loss is a token mean over the optimizer step."""

    def count(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        inputs = {
            k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch
        }
        logits = model(**inputs, use_cache=False).logits
        total, _ = token_nll_sum(logits, batch["labels"])
        return LossOutput(total)

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(means["loss"], 50.0))}


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    n_eval = int(len(records) * fraction)
    if n_eval == 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def run_sft(cfg: SFTConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; writes the run folder ``cfg.out``."""
    records = load_records(cfg.data, "sft", split=cfg.split, skip_invalid=cfg.skip_invalid).records
    if cfg.eval_data:
        train_recs = records
        eval_recs = load_records(cfg.eval_data, "sft", skip_invalid=cfg.skip_invalid).records
    else:
        train_recs, eval_recs = split_eval(records, cfg.eval_fraction, cfg.seed)
    accelerator = make_accelerator(cfg)
    prepare_run_dir(cfg, accelerator, resume=resume, overwrite=overwrite)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    template = resolve_template(tokenizer, cfg.template)
    train, stats = tokenize_sft(train_recs, tokenizer, template, cfg.max_length)
    stats.report("train", cfg.max_length)
    evals, estats = tokenize_sft(eval_recs, tokenizer, template, cfg.max_length)
    estats.report("eval", cfg.max_length)
    train_rows: list[Any] = pack(train, cfg.max_length) if cfg.packing else train
    if cfg.packing:
        log.info(
            "packed %d examples into %d rows of <= %d tokens",
            len(train),
            len(train_rows),
            cfg.max_length,
        )

    lora = LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
    if lora.target_modules == ["all-linear"]:
        lora = LoraSpec(lora.r, lora.alpha, lora.dropout, "all-linear")
    model = load_causal_lm(
        cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, lora=lora
    )
    trainer = Trainer(
        cfg,
        model,
        tokenizer,
        SFTObjective(),
        train_rows,
        PadCollator(tokenizer.pad_token_id),
        evals,
        name="sft",
        accelerator=accelerator,
    )
    return trainer.fit(resume=resume)
