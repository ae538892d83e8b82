"""What the self-training stages (rejection sampling, ReST, HIR) share.

Each is a loop of rounds: sample K responses per prompt from the current policy,
score them, keep (or relabel) some, and fine-tune on those with the SFT stage (the
one training loop; nothing here trains by itself). The run folder::

    out/config.yaml        the resolved config
    out/metrics.jsonl      one line per round (reward of the samples, kept count, ...)
    out/<round>/samples.jsonl   every prompt's K responses, scores, kept indices
    out/<round>/train.jsonl     the SFT data of the round (chat records)
    out/<round>/sft/            the round's SFT run (its metrics.jsonl, final/)
    out/<round>/summary.json    written when the round is complete
    out/final/             the last policy (from_pretrained)

``--resume`` skips the rounds that have a ``summary.json``; an interrupted round
samples again (the same draw: the sampling seed depends on the round only) and its
SFT run resumes from its latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.config import SamplingKeys, SelfTrainKeys, SFTConfig
from rlhfkit.data.types import PromptRecord
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.candidates import Candidates, sample_candidates, score_candidates
from rlhfkit.rollout.rewards import RewardSource, reward_from_config
from rlhfkit.training.loop import TrainResult
from rlhfkit.training.tracking import MetricsWriter

log = logging.getLogger("rlhfkit")

ROUND_DIRS = ("round-*", "grow-*", "ppo")


@dataclass
class SelfTrainRun:
    """A self-training run in progress: its config, prompts, tokenizer and folder."""

    cfg: Any  # SelfTrainKeys subclass
    name: str
    out: Path
    records: list[PromptRecord]
    tokenizer: Any
    template: str
    device: torch.device
    resume: bool
    policy: str  # the current policy folder
    sft_steps: int = 0
    last_loss: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)

    # -- rounds ------------------------------------------------------------------
    def done(self, round_name: str) -> dict[str, Any] | None:
        """The summary of a round completed by an earlier (interrupted) run, if resuming."""
        path = self.out / round_name / "summary.json"
        if not self.resume or not path.is_file():
            return None
        summary = json.loads(path.read_text(encoding="utf-8"))
        log.info("%s: %s already complete, skipped", self.name, round_name)
        self.record(summary, write_summary=None)
        return summary

    def record(self, summary: dict[str, Any], write_summary: str | None) -> None:
        """Log a finished round: ``metrics.jsonl`` line, ``summary.json``, the new policy."""
        if write_summary is not None:
            path = self.out / write_summary / "summary.json"
            path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self.history.append(summary)
        self.policy = summary.get("policy", self.policy)
        self.sft_steps += int(summary.get("sft_steps", 0))
        self.last_loss = float(summary.get("sft_loss", self.last_loss))
        writer = MetricsWriter(self.out / "metrics.jsonl")
        writer.write({k: v for k, v in summary.items() if isinstance(v, int | float)})
        writer.close()

    # -- sampling and scoring ----------------------------------------------------------
    def sample(self, round_index: int, description: str) -> Candidates:
        """K samples per prompt from the current policy; the seed depends on the round."""
        from rlhfkit.models.loading import load_causal_lm
        from rlhfkit.rollout.generation import SamplingParams
        from rlhfkit.rollout.generator import Generator

        cfg = self.cfg
        model = load_causal_lm(
            self.policy, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        ).to(self.device)
        params = SamplingParams.sampled(cfg)
        generator = Generator(self.tokenizer, self.template, params, cfg.max_prompt_length)
        torch.manual_seed(cfg.seed * 1_000 + round_index)
        t = time.perf_counter()
        cands = sample_candidates(
            model, generator, self.records, cfg.samples_per_prompt, cfg.generation_batch_size,
            description,
        )  # fmt: skip
        log.info(
            "%s: %d samples in %.1fs", description, len(self.records) * cfg.samples_per_prompt,
            time.perf_counter() - t,
        )  # fmt: skip
        return cands

    def score(self, cands: Candidates, reward: RewardSource) -> None:
        cfg = self.cfg
        score_candidates(cands, reward, cfg.score_batch_size, cfg.missing_eos_penalty)

    # -- fine-tuning -----------------------------------------------------------------
    def finetune(self, data: Path, out: Path, start: str | None = None) -> TrainResult:
        """SFT of ``start`` (default: the current policy) on ``data``, in ``out``."""
        sft = sft_config(self.cfg, start or self.policy, data, out)
        from rlhfkit.training.stages.sft import run_sft

        resume = self.resume and (out / "checkpoints").is_dir()
        return run_sft(sft, resume=resume, overwrite=not resume)

    def result(self, final: str | Path, eval_metrics: dict[str, float]) -> TrainResult:
        """Copy ``final`` to ``out/final`` and sum up the run for the CLI."""
        publish(Path(final), self.out / "final")
        return TrainResult(
            self.sft_steps,
            self.last_loss,
            eval_metrics,
            self.out / "final",
            time.perf_counter() - self.t0,
        )


def sft_config(cfg: SelfTrainKeys, model: str, data: Path, out: Path) -> SFTConfig:
    """The SFT config of one round: the stage's training and model keys, no held-out split."""
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
    values.update(
        model=model, data=str(data), out=str(out), eval_data=None, eval_fraction=0.0,
        split="train", skip_invalid=False, best_metric="", eval_every=0, eval_on_start=False,
    )  # fmt: skip
    sft = SFTConfig(**values)
    sft.validate()
    return sft


def start_run(cfg: SelfTrainKeys, name: str, *, resume: bool, overwrite: bool) -> SelfTrainRun:
    """Validate, load the prompts (bad input fails before any model loads), prepare the
    run folder and the tokenizer."""
    from accelerate.utils import set_seed

    from rlhfkit.data.load import load_records
    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.training.loop import make_accelerator
    from rlhfkit.training.run import prepare_run_dir

    cfg.validate()
    records = load_records(cfg.prompts, "prompt", split=cfg.split, skip_invalid=cfg.skip_invalid)
    acc = make_accelerator(cfg)
    if acc.num_processes > 1:
        raise ConfigError(
            f"{name} runs in one process (its rounds sample, then fine-tune); start it without "
            "accelerate launch"
        )
    set_seed(cfg.seed)
    out = Path(cfg.out)
    prepare_run_dir(cfg, acc, resume=resume, overwrite=overwrite)
    if overwrite and not resume:
        for pattern in ROUND_DIRS:
            for path in out.glob(pattern):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if resume and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # rewritten from the completed rounds' summaries
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    return SelfTrainRun(
        cfg=cfg,
        name=name,
        out=out,
        records=records.records,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        template=resolve_template(tokenizer, cfg.template),
        device=acc.device,
        resume=resume,
        policy=cfg.model,
    )


def reward_source(
    cfg: SamplingKeys, device: Any, reward_models: Sequence[str] | None = None
) -> RewardSource | None:
    """The configured reward (``reward_models`` replaces ``cfg.reward_model`` after a
    refresh); None when none is configured."""
    models = list(cfg.reward_model if reward_models is None else reward_models)
    if not models and not cfg.reward_fn:
        return None
    return reward_from_config(cfg, device, models)


def sample_stats(
    cands: Candidates, kept: Sequence[Sequence[int]] | None = None
) -> dict[str, float]:
    """Reward of the samples (mean, std, mean of each prompt's best), truncation, the
    share of distinct responses per prompt, and of the kept samples (count, mean reward)."""
    n = sum(len(t) for t in cands.texts)
    stats: dict[str, float] = {
        "samples": n,
        "truncated_share": sum(map(sum, cands.truncated)) / max(n, 1),
        "distinct_share": sum(len(set(t)) for t in cands.texts) / max(n, 1),
        "response_chars": sum(len(x) for t in cands.texts for x in t) / max(n, 1),
    }
    if cands.scores is not None:
        flat = torch.tensor([s for row in cands.scores for s in row], dtype=torch.float64)
        flat = flat[~flat.isnan()]
        if flat.numel():
            stats["reward_mean"] = float(flat.mean())
            stats["reward_std"] = float(flat.std()) if flat.numel() > 1 else 0.0
        best = [max(row) for row in cands.scores if row]
        stats["reward_best_mean"] = sum(best) / max(len(best), 1)
    if kept is not None:
        stats["kept"] = sum(len(k) for k in kept)
        stats["kept_share"] = stats["kept"] / max(n, 1)
        stats["prompts_kept"] = sum(1 for k in kept if k)
        if cands.scores is not None and stats["kept"]:
            values = [cands.scores[i][j] for i, ks in enumerate(kept) for j in ks]
            stats["kept_reward_mean"] = sum(values) / len(values)
    return stats


def publish(src: Path, dst: Path) -> Path:
    """Copy the folder ``src`` to ``dst`` (hard links where the file system allows),
    replacing ``dst`` only once the copy is complete."""
    from rlhfkit.models.loading import replace_dir

    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, tmp, copy_function=link_or_copy)
    replace_dir(tmp, dst)
    return dst
