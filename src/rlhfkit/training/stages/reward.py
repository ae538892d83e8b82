"""Reward model: a scalar head trained on preference pairs and rankings.

Each batch element is one prompt with its K responses (K = 2 for a preference
record); all responses of a micro-batch go through one forward, and the pairs
of one prompt are averaged into one item (InstructGPT), so a ranking of 9
responses weighs as much as a single comparison and its 36 correlated pairs
are never spread over batches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.reward import centering_penalty, group_mean, hinge_loss, pairwise_loss
from rlhfkit.config import RMConfig
from rlhfkit.data.batching import GroupCollator, hidden_size_of, keeps_packed_apart
from rlhfkit.data.prepare import ResponseGroup, tokenize_groups
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample
from rlhfkit.data.types import PreferenceRecord
from rlhfkit.models.loading import apply_lora, lora_spec
from rlhfkit.models.reward import batch_rewards, load_reward_model
from rlhfkit.training.loop import LossOutput, Trainer, TrainResult
from rlhfkit.training.run import prepare_stage, tokenize_splits

log = logging.getLogger("rlhfkit")


class RewardObjective:
    """Items are prompts (response groups); accuracy and margins are per pair."""

    def __init__(
        self, loss: str = "pairwise", hinge_margin: float = 1.0, center_coef: float = 0.0
    ) -> None:
        self.kind, self.hinge_margin, self.center_coef = loss, hinge_margin, center_coef

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["n_groups"])

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        r = batch_rewards(model, batch).float()
        chosen, rejected = r[batch["better"]], r[batch["worse"]]
        if self.kind == "pairwise":
            per_pair = pairwise_loss(chosen, rejected)
        elif self.kind == "margin":
            per_pair = pairwise_loss(chosen, rejected, batch["margin"])
        else:
            per_pair = hinge_loss(chosen, rejected, self.hinge_margin)
        if self.center_coef:
            per_pair = per_pair + self.center_coef * centering_penalty(chosen, rejected)
        total = group_mean(per_pair, batch["group"], int(batch["n_groups"])).sum()
        diff = (chosen - rejected).detach()
        n = diff.numel()
        return LossOutput(
            total,
            {
                "accuracy": ((diff > 0).float().sum(), n),
                "margin": (diff.sum(), n),
                "chosen_reward": (chosen.detach().sum(), n),
                "rejected_reward": (rejected.detach().sum(), n),
            },
        )

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {}


def margin_from(cfg: RMConfig):
    """The Llama 2 margin of a record: its ``margin``, else its label through the table."""

    def margin(rec: PreferenceRecord) -> float:
        if rec.margin is not None:
            return float(rec.margin)
        if rec.margin_label is not None:
            return float(cfg.margin_table[rec.margin_label])
        return 0.0

    return margin


def padding_free(model: torch.nn.Module, groups: list[ResponseGroup], s: Any) -> bool:
    """Pack each batch's responses (:func:`rlhfkit.data.batching.pack_batch`) when the
    model scores packed responses as it scores them padded; logged either way."""
    sample = [
        TokenizedExample(ids, [IGNORE_INDEX] * len(ids)) for g in groups[:64] for ids in g.responses
    ]
    ok = keeps_packed_apart(
        model.to(s.accelerator.device), sample, s.tokenizer.pad_token_id, score=batch_rewards
    )
    log.info("padding-free batches: %s", "on" if ok else "off (the model mixes packed sequences)")
    return ok


def run_rm(cfg: RMConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a reward model from ``cfg.model`` (usually the SFT model) on ``cfg.data``."""
    keep = None if cfg.dimension is None else (lambda r: r.dimension == cfg.dimension)
    s = prepare_stage(
        cfg,
        "preference",
        resume=resume,
        overwrite=overwrite,
        keep=keep,
        what=f"dimension={cfg.dimension}",
    )
    margin = margin_from(cfg)
    train, evals = tokenize_splits(tokenize_groups, s, cfg.max_length, margin)
    model = load_reward_model(
        cfg.model,
        dtype=cfg.dtype,
        trust_remote_code=cfg.trust_remote_code,
        pad_token_id=s.tokenizer.pad_token_id,
    )
    if cfg.lora_r > 0:
        model = apply_lora(model, lora_spec(cfg), task_type="SEQ_CLS")
    objective = RewardObjective(cfg.loss, cfg.hinge_margin, cfg.center_coef)
    collate = GroupCollator(
        s.tokenizer.pad_token_id, padding_free(model, train, s), hidden_size_of(model)
    )
    trainer = Trainer(
        cfg, model, s.tokenizer, objective, train, collate, evals, "rm", s.accelerator
    )
    result = trainer.fit(resume=resume)
    if s.accelerator.is_main_process and evals:
        best = result.best or result.eval
        summary = {
            "accuracy": best.get("eval_accuracy"),
            "loss": best.get("eval_loss"),
            "margin": best.get("eval_margin"),
            "n_pairs": sum(len(g.pairs) for g in evals),
            "step": best.get("step", result.steps),
        }
        Path(cfg.out, "eval.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return result
