"""ReST: Reinforced Self-Training (Gulcehre et al. 2023, Algorithm 1).

``rounds`` Grow steps. Grow: sample K responses per prompt from the current policy
and score them once - a fixed, offline dataset. Improve: for each threshold of the
schedule, in order, keep the samples of that dataset whose reward is at least the
threshold and fine-tune the policy on them (behaviour cloning, the loss the paper
found best), each Improve step starting from the previous one's policy. Thresholds
never decrease, so each Improve step trains on a smaller, better subset; the next
Grow step samples from the last Improve step's policy.

The schedule is given as values of the reward (``threshold_mode: value``) or as
quantiles of the Grow dataset's rewards (``quantile``, the default: the same
schedule fits any reward's scale). Defaults: docs/selftrain.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rlhfkit.config import ReSTConfig
from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.rollout.candidates import (
    Candidates,
    eligible_scores,
    read_samples,
    sft_rows,
    write_samples,
)
from rlhfkit.rollout.selection import SelectionRule, resolve_thresholds, select
from rlhfkit.training.loop import TrainResult
from rlhfkit.training.stages.selftrain import (
    SelfTrainRun,
    reward_source,
    sample_stats,
    start_run,
)

log = logging.getLogger("rlhfkit")


def run_rest(cfg: ReSTConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """``cfg.rounds`` Grow steps of ``len(cfg.thresholds)`` Improve steps each."""
    run = start_run(cfg, "rest", resume=resume, overwrite=overwrite)
    reward = reward_source(cfg, run.device)
    assert reward is not None  # validated: ReST needs a reward
    step = 0
    for g in range(1, cfg.rounds + 1):
        grow = run.out / f"grow-{g}"
        samples = grow / "samples.jsonl"
        if resume and samples.is_file():
            cands = read_samples(samples)
            log.info("rest: grow step %d read back from %s", g, samples)
        else:
            log.info("rest: grow step %d of %d (policy %s)", g, cfg.rounds, run.policy)
            cands = run.sample(g, f"grow {g}: sampling")
            run.score(cands, reward)
            write_samples(samples, cands)
        scores, empty = eligible_scores(cands)
        if empty:
            log.warning("grow step %d: %d empty response(s) are never kept", g, empty)
        flat = [s for row in scores for s in row]
        thresholds = resolve_thresholds(cfg.thresholds, cfg.threshold_mode, flat)
        for i, tau in enumerate(thresholds, 1):
            step += 1
            name = f"grow-{g}/improve-{i}"
            if run.done(name) is None:
                _improve(run, cands, scores, step, g, i, tau)
    return run.result(run.policy, _last(run))


def _improve(
    run: SelfTrainRun,
    cands: Candidates,
    scores: list[list[float]],
    step: int,
    g: int,
    i: int,
    tau: float,
) -> dict[str, Any]:
    cfg = run.cfg
    name = f"grow-{g}/improve-{i}"
    kept = select(scores, SelectionRule(keep="all", threshold=tau))
    summary: dict[str, Any] = {
        "step": step,
        "grow": g,
        "improve": i,
        "threshold": tau,
        **sample_stats(cands, kept),
    }
    if cfg.threshold_mode == "quantile":
        summary["threshold_quantile"] = cfg.thresholds[i - 1]
    rows = sft_rows(cands, kept)
    (run.out / name).mkdir(parents=True, exist_ok=True)
    if not rows:
        log.warning("%s: no sample has a reward >= %.4g; this Improve step is skipped", name, tau)
        summary.update(sft_steps=0, policy=run.policy)
        run.record(summary, write_summary=name)
        return summary
    log.info(
        "rest: grow %d, improve %d: %d of %d samples with reward >= %.4g",
        g, i, len(rows), summary["samples"], tau,
    )  # fmt: skip
    data = write_jsonl(run.out / name / "train.jsonl", rows)
    t = time.perf_counter()
    result = run.finetune(data, run.out / name / "sft")
    summary.update(
        sft_steps=result.steps,
        sft_loss=result.train_loss,
        seconds_train=time.perf_counter() - t,
        policy=str(result.final_dir),
    )
    run.record(summary, write_summary=name)
    return summary


def _last(run: SelfTrainRun) -> dict[str, float]:
    last = run.history[-1] if run.history else {}
    keys = ("reward_mean", "threshold", "kept_reward_mean")
    return {k: float(last[k]) for k in keys if k in last}
