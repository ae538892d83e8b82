"""Offline preference optimisation: the DPO family (sigmoid, robust, IPO, hinge) and CPL.

Chosen and rejected responses go through the policy in one concatenated
forward. The reference is the frozen starting model (or ``ref_model``); with
LoRA it is the policy itself with its adapters disabled, not a second copy;
with ``precompute_ref`` its log-probs are computed in one pass before training
and the reference leaves memory. CPL needs no reference at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlhfkit.algorithms.dpo import cpl_loss, dpo_loss
from rlhfkit.config import DPOConfig
from rlhfkit.data.batching import PairCollator, batch_logps, hidden_size_of, keeps_packed_apart
from rlhfkit.data.prepare import PairExample, tokenize_pairs
from rlhfkit.models.loading import is_peft, load_causal_lm, lora_spec
from rlhfkit.training.loop import LossOutput, Trainer, TrainResult
from rlhfkit.training.run import prepare_stage, tokenize_splits

log = logging.getLogger("rlhfkit")

Reference = Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]


def frozen_reference(ref_model: torch.nn.Module) -> Reference:
    ref_model.eval().requires_grad_(False)

    @torch.no_grad()
    def reference(policy: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return batch_logps(ref_model, batch)[0]

    return reference


def adapters_off_reference(unwrap: Callable[[torch.nn.Module], torch.nn.Module]) -> Reference:
    """The LoRA policy with its adapters disabled is the reference (no second copy)."""

    @torch.no_grad()
    def reference(policy: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        base = unwrap(policy)
        with base.disable_adapter():
            return batch_logps(base, batch)[0]

    return reference


class DPOObjective:
    """Items are preference pairs."""

    def __init__(self, cfg: DPOConfig, reference: Reference | None) -> None:
        self.cfg = cfg
        self.reference = reference

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["n_pairs"])

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        cfg = self.cfg
        n = int(batch["n_pairs"])
        logps, lengths = batch_logps(model, batch)
        chosen, rejected = logps[:n], logps[n:]
        if cfg.loss == "cpl":
            out = cpl_loss(
                chosen,
                rejected,
                alpha=cfg.beta,
                lam=cfg.cpl_lambda,
                bc_weight=cfg.cpl_bc_weight,
                chosen_lengths=lengths[:n],
            )
            losses, r_c, r_r = out.losses, out.chosen_scores, out.rejected_scores
        else:
            ref = batch["ref_logps"] if "ref_logps" in batch else self.reference(model, batch)  # type: ignore[misc]
            out = dpo_loss(
                chosen, rejected, ref[:n], ref[n:], loss_type=cfg.loss, beta=cfg.beta,
                label_smoothing=cfg.label_smoothing, chosen_lengths=lengths[:n], rejected_lengths=lengths[n:],
            )  # fmt: skip
            losses, r_c, r_r = out.losses, out.chosen_rewards, out.rejected_rewards
        if cfg.sft_weight:
            losses = losses + cfg.sft_weight * (-chosen / lengths[:n].clamp(min=1))
        return LossOutput(
            losses.sum(),
            {
                "rewards_chosen": r_c.sum(),
                "rewards_rejected": r_r.sum(),
                "rewards_accuracy": (r_c > r_r).float().sum(),
                "rewards_margin": (r_c - r_r).sum(),
                "logps_chosen": chosen.detach().sum(),
                "logps_rejected": rejected.detach().sum(),
            },
        )

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {}


def precompute_reference(
    reference: Reference,
    model: torch.nn.Module,
    pairs: Sequence[PairExample],
    collate: PairCollator,
    accelerator,
    batch_size: int,
) -> None:
    """Fill ``pair.ref`` for every pair in one pass (each process does all pairs)."""
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = collate(chunk)
        batch = {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in batch.items()}
        with accelerator.autocast():
            ref = reference(model, batch).float().cpu()
        n = len(chunk)
        for i, pair in enumerate(chunk):
            pair.ref = (float(ref[i]), float(ref[n + i]))


def padding_free(model: torch.nn.Module, pairs: Sequence[PairExample], s: Any) -> bool:
    """Pack each batch's sequences (same pairs, same tokens, ~half the positions on short
    completions) when the model keeps packed sequences apart; logged either way."""
    sample = [ex for p in pairs[:32] for ex in (p.chosen, p.rejected)]
    ok = keeps_packed_apart(model.to(s.accelerator.device), sample, s.tokenizer.pad_token_id)
    log.info("padding-free batches: %s", "on" if ok else "off (the model mixes packed sequences)")
    return ok


def run_dpo(cfg: DPOConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Optimise ``cfg.model`` on the preferences of ``cfg.data``."""
    s = prepare_stage(cfg, "preference", resume=resume, overwrite=overwrite)
    train, evals = tokenize_splits(tokenize_pairs, s, cfg.max_length)
    model = load_causal_lm(
        cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, lora=lora_spec(cfg)
    )
    acc = s.accelerator
    collate = PairCollator(
        s.tokenizer.pad_token_id, padding_free(model, train, s), hidden_size_of(model)
    )

    reference: Reference | None = None
    if cfg.loss != "cpl":
        if is_peft(model) and cfg.ref_model is None:
            reference = adapters_off_reference(acc.unwrap_model)
        else:
            ref_name = cfg.ref_model or cfg.model
            reference = frozen_reference(
                load_causal_lm(
                    ref_name, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
                ).to(acc.device)
            )
        if cfg.precompute_ref:
            precompute_reference(
                reference, model.to(acc.device), train + evals, collate, acc, cfg.batch_size
            )
            log.info(
                "reference log-probs precomputed for %d pairs; reference released",
                len(train) + len(evals),
            )
            reference = None  # the only holder of a frozen copy: it is freed here
    trainer = Trainer(
        cfg, model, s.tokenizer, DPOObjective(cfg, reference), train, collate, evals, "dpo", acc
    )
    return trainer.fit(resume=resume)
