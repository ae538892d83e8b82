"""Rejection sampling fine-tuning (Llama 2, Touvron et al. 2023, sec. 3.2.3).

Each round: K samples per prompt from the current policy, scored by the reward;
the best of each prompt is kept (or the top fraction, optionally above
``min_reward``), and the policy is fine-tuned on the kept samples with the SFT
stage. The next round samples from that policy (RLHF-V1 ... V4). Between rounds the
reward model can be refreshed from new labels of the new policy's samples
(``rm_refresh``: a hook that returns the new reward model), and the run can finish
with PPO from the last policy (``ppo``: RLHF-V5). Defaults: docs/selftrain.md.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from rlhfkit.config import PPOConfig, RejectionSamplingConfig, from_dict
from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.candidates import eligible_scores, sft_rows, write_samples
from rlhfkit.rollout.rewards import load_function
from rlhfkit.rollout.selection import SelectionRule, select
from rlhfkit.training.loop import TrainResult
from rlhfkit.training.stages.selftrain import (
    SelfTrainRun,
    reward_source,
    sample_stats,
    start_run,
)

log = logging.getLogger("rlhfkit")


def selection_rule(cfg: RejectionSamplingConfig) -> SelectionRule:
    return SelectionRule(cfg.keep, cfg.keep_fraction, cfg.min_reward)


def run_rejection_sampling(
    cfg: RejectionSamplingConfig, *, resume: bool = False, overwrite: bool = False
) -> TrainResult:
    """``cfg.rounds`` rounds of best-of-K + SFT from ``cfg.model``; writes ``cfg.out``."""
    run = start_run(cfg, "rejection-sampling", resume=resume, overwrite=overwrite)
    rule = selection_rule(cfg)
    reward_models = list(cfg.reward_model)
    for r in range(1, cfg.rounds + 1):
        name = f"round-{r}"
        summary = run.done(name) or _round(run, r, name, rule, reward_models)
        reward_models = summary.get("reward_models", reward_models)
        more = r < cfg.rounds or cfg.ppo is not None
        if cfg.rm_refresh and more and "refreshed_reward_models" not in summary:
            summary["refreshed_reward_models"] = refresh(run, r, name, reward_models)
            (run.out / name / "summary.json").write_text(
                json.dumps(summary, indent=2), encoding="utf-8"
            )
        reward_models = summary.get("refreshed_reward_models", reward_models)
    final, metrics = run.policy, dict(_last_metrics(run))
    if cfg.ppo is not None:
        ppo = finish_with_ppo(run, reward_models)
        final = str(ppo.final_dir)
        metrics.update({f"ppo_{k}": v for k, v in ppo.eval.items()})
        run.sft_steps += ppo.steps
    return run.result(final, metrics)


def _round(
    run: SelfTrainRun, r: int, name: str, rule: SelectionRule, reward_models: list[str]
) -> dict[str, Any]:
    cfg = run.cfg
    log.info("rejection sampling: round %d of %d (policy %s)", r, cfg.rounds, run.policy)
    reward = reward_source(cfg, run.device, reward_models)
    assert reward is not None  # validated: rejection sampling needs a reward
    t = time.perf_counter()
    cands = run.sample(r, f"round {r}: sampling")
    t_sample = time.perf_counter() - t
    run.score(cands, reward)
    t_score = time.perf_counter() - t - t_sample
    scores, empty = eligible_scores(cands)
    kept = select(scores, rule)
    if empty:
        log.warning("round %d: %d empty response(s) cannot be kept", r, empty)
    dropped = sum(1 for k in kept if not k)
    if dropped:
        log.warning(
            "round %d: %d of %d prompt(s) kept no sample (empty responses or min_reward=%s)",
            r, dropped, len(kept), cfg.min_reward,
        )  # fmt: skip
    write_samples(run.out / name / "samples.jsonl", cands, kept)
    rows = sft_rows(cands, kept)
    if not rows:
        raise ConfigError(
            f"round {r}: no sample was kept (min_reward={cfg.min_reward}); lower 'min_reward'"
        )
    data = write_jsonl(run.out / name / "train.jsonl", rows)
    if cfg.accumulate and r > 1:
        earlier = [run.out / f"round-{i}" / "train.jsonl" for i in range(1, r)]
        lines = [line for path in [*earlier, data] for line in path.read_text("utf-8").splitlines()]
        data = run.out / name / "train_accumulated.jsonl"
        data.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        log.info("round %d: training on %d samples kept in rounds 1-%d", r, len(lines), r)
    result = run.finetune(data, run.out / name / "sft")
    summary = {
        "step": r,
        "round": r,
        **sample_stats(cands, kept),
        "empty": empty,
        "sft_steps": result.steps,
        "sft_loss": result.train_loss,
        "seconds_sample": t_sample,
        "seconds_score": t_score,
        "seconds_train": result.seconds,
        "policy": str(result.final_dir),
        "reward_models": reward_models,
    }
    run.record(summary, write_summary=name)
    return summary


def refresh(run: SelfTrainRun, r: int, name: str, reward_models: list[str]) -> list[str]:
    """Call the ``rm_refresh`` hook after round ``r``; it returns the new reward model(s).

    The hook is called as ``fn(round=r, policy=DIR, samples=FILE, out=DIR,
    reward_model=[DIR, ...], **rm_refresh_args)``: ``policy`` is the policy the next
    round samples from, ``samples`` this round's samples.jsonl, ``out`` a folder for
    its labels and reward model."""
    cfg = run.cfg
    fn = load_function(cfg.rm_refresh)
    log.info("round %d: refreshing the reward model with %s", r, cfg.rm_refresh)
    t = time.perf_counter()
    out = run.out / name / "rm"
    got = fn(
        round=r, policy=run.policy, samples=str(run.out / name / "samples.jsonl"), out=str(out),
        reward_model=list(reward_models), **cfg.rm_refresh_args,
    )  # fmt: skip
    new = [str(got)] if isinstance(got, str | Path) else [str(p) for p in got]
    if not new or any(not Path(p).is_dir() for p in new):
        raise ConfigError(
            f"key 'rm_refresh': {cfg.rm_refresh} returned {got!r}; expected reward model folder(s)"
        )
    log.info("round %d: reward model refreshed in %.1fs: %s", r, time.perf_counter() - t, new)
    return new


def finish_with_ppo(run: SelfTrainRun, reward_models: list[str]) -> TrainResult:
    """PPO from the last policy with the latest reward (Llama 2's RLHF-V5), in ``out/ppo``.
    PPO's own defaults apply except where ``ppo`` sets a key."""
    from rlhfkit.training.stages.ppo import run_ppo

    cfg = run.cfg
    shared = ("prompts", "split", "skip_invalid", "reward_fn", "reward_combine",
              "reward_weights", "safety_threshold", "unsafe_field", "max_prompt_length",
              "max_new_tokens", "temperature", "top_p", "top_k", "missing_eos_penalty",
              "dtype", "trust_remote_code", "template", "max_length", "seed", "cpu",
              "precision")  # fmt: skip
    values = {k: getattr(cfg, k) for k in shared}
    values.update(model=run.policy, reward_model=reward_models, out=str(run.out / "ppo"))
    values.update(cfg.ppo or {})
    ppo_cfg = from_dict(PPOConfig, values)
    try:
        ppo_cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"key 'ppo': {e}") from e
    done = run.out / "ppo" / "summary.json"
    if run.resume and done.is_file():
        log.info("rejection-sampling: the finishing PPO run is already complete, skipped")
        return TrainResult(
            **{**json.loads(done.read_text("utf-8")), "final_dir": Path(ppo_cfg.out) / "final"}
        )
    log.info("finishing with PPO from %s", run.policy)
    resume = run.resume and (run.out / "ppo" / "checkpoints").is_dir()
    result = run_ppo(ppo_cfg, resume=resume, overwrite=not resume)
    summary = {"steps": result.steps, "train_loss": result.train_loss, "eval": result.eval,
               "seconds": result.seconds}  # fmt: skip
    done.write_text(json.dumps(summary), encoding="utf-8")
    return result


def _last_metrics(run: SelfTrainRun) -> dict[str, float]:
    last = run.history[-1] if run.history else {}
    keys = ("reward_mean", "reward_best_mean", "kept_reward_mean")
    return {k: float(last[k]) for k in keys if k in last}
