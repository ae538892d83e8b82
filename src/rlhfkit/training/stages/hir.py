"""HIR: hindsight instruction relabeling (Zhang et al. 2023).

Each round: K samples per prompt from the current policy (online sampling); the
relabel function rewrites each prompt into one the sample is right for, or drops the
sample (offline relabeling); the policy is fine-tuned on the relabeled pairs. No
reward is needed (one, if configured, is only logged). With ``contrastive_weight > 0``
the fine-tuning adds HIR's contrastive term: each output must be more likely under
its own relabeled prompt than under the other relabeled prompts of the same source
prompt's samples (:func:`rlhfkit.algorithms.hir.hir_contrastive_loss`); that run is
the shared loop's :class:`~rlhfkit.training.loop.Trainer` with its own objective.
Without it, the SFT stage fine-tunes. Defaults: docs/selftrain.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.hir import hir_contrastive_loss
from rlhfkit.config import HIRConfig
from rlhfkit.data.batching import PadCollator, batch_logps, hidden_size_of, keeps_packed_apart
from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.data.prepare import PrepareStats, tokenize_response
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample
from rlhfkit.data.types import Conversation
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.candidates import Candidates, write_samples
from rlhfkit.rollout.relabel import Relabeler
from rlhfkit.rollout.rewards import RewardSource
from rlhfkit.training.loop import LossOutput, Trainer, TrainResult
from rlhfkit.training.stages.selftrain import (
    SelfTrainRun,
    reward_source,
    sample_stats,
    sft_config,
    start_run,
)

log = logging.getLogger("rlhfkit")

Pair = tuple[Conversation, str]  # (relabeled prompt, response)


def run_hir(cfg: HIRConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """``cfg.rounds`` rounds of sample -> relabel -> fine-tune from ``cfg.model``."""
    run = start_run(cfg, "hir", resume=resume, overwrite=overwrite)
    relabeler = Relabeler(cfg.relabel_fn)
    reward = reward_source(cfg, run.device)
    for r in range(1, cfg.rounds + 1):
        name = f"round-{r}"
        if run.done(name) is None:
            _round(run, relabeler, reward, r, name)
    last = run.history[-1] if run.history else {}
    keys = ("relabeled_share", "dropped_share", "reward_mean")
    return run.result(run.policy, {k: float(last[k]) for k in keys if k in last})


def relabel_groups(
    cands: Candidates, relabeler: Relabeler
) -> tuple[list[list[Pair]], list[list[int]], dict[str, int]]:
    """Each prompt's relabeled (prompt, response) pairs, the sample indices they came
    from, and counts: ``kept_as_is`` (already right), ``relabeled``, ``dropped`` (the
    function returned None) and ``empty`` (empty responses, never trained on)."""
    prompts, texts, fields = cands.flat()
    new = relabeler(prompts, texts, fields)
    k = cands.k
    groups: list[list[Pair]] = []
    kept: list[list[int]] = []
    counts = {"kept_as_is": 0, "relabeled": 0, "dropped": 0, "empty": 0}
    for i, rec in enumerate(cands.records):
        pairs, idx = [], []
        for j in range(k):
            text, conv = texts[i * k + j], new[i * k + j]
            if not text.strip():
                counts["empty"] += 1
            elif conv is None:
                counts["dropped"] += 1
            else:
                counts["kept_as_is" if conv == rec.prompt else "relabeled"] += 1
                pairs.append((conv, text))
                idx.append(j)
        groups.append(pairs)
        kept.append(idx)
    return groups, kept, counts


def _round(
    run: SelfTrainRun, relabeler: Relabeler, reward: RewardSource | None, r: int, name: str
) -> None:
    cfg = run.cfg
    log.info("hir: round %d of %d (policy %s)", r, cfg.rounds, run.policy)
    t = time.perf_counter()
    cands = run.sample(r, f"round {r}: sampling")
    if reward is not None:
        run.score(cands, reward)
    t_sample = time.perf_counter() - t
    groups, kept, counts = relabel_groups(cands, relabeler)
    n = sum(len(t) for t in cands.texts)
    if counts["dropped"] or counts["empty"]:
        log.warning(
            "round %d: dropped %d of %d samples no prompt was found for and %d empty ones",
            r, counts["dropped"], n, counts["empty"],
        )  # fmt: skip
    write_samples(run.out / name / "samples.jsonl", cands, kept)
    rows = [
        {
            "messages": [*(m.as_dict() for m in conv), {"role": "assistant", "content": text}],
            "original_prompt": [m.as_dict() for m in rec.prompt],
        }
        for rec, pairs in zip(cands.records, groups, strict=True)
        for conv, text in pairs
    ]
    if not rows:
        raise ConfigError(f"round {r}: the relabel function kept no sample of {n}")
    data = write_jsonl(run.out / name / "train.jsonl", rows)
    out = run.out / name / "sft"
    if cfg.contrastive_weight > 0:
        result = finetune_contrastive(run, groups, data, out)
    else:
        result = run.finetune(data, out)
    summary = {
        "step": r,
        "round": r,
        **sample_stats(cands),
        **counts,
        "relabeled_share": counts["relabeled"] / max(n, 1),
        "dropped_share": (counts["dropped"] + counts["empty"]) / max(n, 1),
        "trained_pairs": len(rows),
        "sft_steps": result.steps,
        "sft_loss": result.train_loss,
        "seconds_sample": t_sample,
        "seconds_train": result.seconds,
        "policy": str(result.final_dir),
    }
    run.record(summary, write_summary=name)


# -- the contrastive fine-tuning --------------------------------------------------------


@dataclass
class HIRGroup:
    """The relabeled samples of one source prompt: ``n`` outputs x ``m`` distinct
    relabeled prompts, tokenized row-major (output ``i`` with prompt ``c`` at
    ``i * m + c``); ``target[i]`` is output ``i``'s own prompt."""

    examples: list[TokenizedExample]
    n: int
    m: int
    target: list[int]

    def own_tokens(self) -> int:
        return sum(
            sum(1 for lab in self.examples[i * self.m + c].labels[1:] if lab != IGNORE_INDEX)
            for i, c in enumerate(self.target)
        )


def build_groups(
    groups: Sequence[Sequence[Pair]], tokenizer: Any, template: str, max_length: int
) -> tuple[list[HIRGroup], PrepareStats]:
    stats = PrepareStats()
    out = []
    for pairs in groups:
        if not pairs:
            continue
        columns = list(dict.fromkeys(conv for conv, _ in pairs))
        examples = [
            tokenize_response(col, text, tokenizer, template, max_length, stats)
            for _, text in pairs
            for col in columns
        ]
        target = [columns.index(conv) for conv, _ in pairs]
        out.append(HIRGroup(examples, len(pairs), len(columns), target))
    return out, stats


class HIRCollator:
    """Every (output, prompt) sequence of the batch's groups in one padded (or packed)
    batch, with each group's shape and targets."""

    def __init__(
        self, pad_token_id: int, padding_free: bool = False, hidden_size: int | None = None
    ) -> None:
        self.pad = PadCollator(pad_token_id, padding_free=padding_free, hidden_size=hidden_size)

    def __call__(self, groups: Sequence[HIRGroup]) -> dict[str, Any]:
        batch = self.pad([ex for g in groups for ex in g.examples])
        batch["hir_shape"] = torch.tensor([[g.n, g.m] for g in groups], dtype=torch.long)
        batch["hir_target"] = torch.tensor([t for g in groups for t in g.target], dtype=torch.long)
        batch["hir_tokens"] = torch.tensor(sum(g.own_tokens() for g in groups))
        return batch


class HIRObjective:
    """``sum_i [NLL(o_i | p_i) + w * |o_i| * L_i]`` over the batch's outputs, divided by
    the loop by the number of output tokens: the token-mean SFT loss of plain HIR plus
    ``w`` times the token-weighted mean of the contrastive loss ``L_i``."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def count(self, batch: dict[str, Any]) -> int:
        return int(batch["hir_tokens"])

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        logps, lengths = batch_logps(model, batch)
        nll = logps.new_zeros(())
        contrastive = logps.new_zeros(())
        con_sum, con_rows, hits = 0.0, 0, 0
        off = t = 0
        for n, m in batch["hir_shape"].tolist():
            p = logps[off : off + n * m].view(n, m)
            lens = lengths[off : off + n * m].view(n, m)
            target = batch["hir_target"][t : t + n].to(p.device)
            own = p.gather(1, target[:, None]).squeeze(1)
            own_len = lens.gather(1, target[:, None]).squeeze(1).to(p.dtype)
            nll = nll - own.sum()
            if m > 1:
                losses = hir_contrastive_loss(p, target)
                contrastive = contrastive + (losses * own_len).sum()
                con_sum += float(losses.detach().sum())
                con_rows += n
                hits += int((p.detach().argmax(dim=1) == target).sum())
            off += n * m
            t += n
        metrics: dict[str, Any] = {"nll": nll.detach()}
        if con_rows:
            metrics["contrastive"] = (con_sum, con_rows)
            metrics["contrastive_accuracy"] = (float(hits), con_rows)
        return LossOutput(nll + self.weight * contrastive, metrics)

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {"ppl": math.exp(min(means["nll"], 50.0))} if "nll" in means else {}


def finetune_contrastive(
    run: SelfTrainRun, groups: list[list[Pair]], data: Path, out: Path
) -> TrainResult:
    """The round's fine-tuning with the contrastive term, on the shared loop; ``batch_size``
    counts source prompts (each with its relabeled samples)."""
    from rlhfkit.models.loading import load_causal_lm, lora_spec
    from rlhfkit.training.loop import make_accelerator
    from rlhfkit.training.run import prepare_run_dir

    cfg = run.cfg
    sft = sft_config(cfg, run.policy, data, out)  # data: the same pairs, for the record
    items, stats = build_groups(groups, run.tokenizer, run.template, cfg.max_length)
    stats.report("hir", cfg.max_length)
    resume = run.resume and (out / "checkpoints").is_dir()
    acc = make_accelerator(sft)
    prepare_run_dir(sft, acc, resume=resume, overwrite=not resume)
    model = load_causal_lm(
        run.policy, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, lora=lora_spec(cfg)
    )
    sample = [ex for g in items[:16] for ex in g.examples]
    free = keeps_packed_apart(model.to(acc.device), sample, run.tokenizer.pad_token_id)
    log.info(
        "hir: %d groups, %d sequences (outputs x relabeled prompts), padding-free %s",
        len(items), sum(len(g.examples) for g in items), "on" if free else "off",
    )  # fmt: skip
    collate = HIRCollator(run.tokenizer.pad_token_id, free, hidden_size_of(model))
    objective = HIRObjective(cfg.contrastive_weight)
    trainer = Trainer(sft, model, run.tokenizer, objective, items, collate, [], "hir", acc)
    return trainer.fit(resume=resume)
