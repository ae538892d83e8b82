"""Benchmark ``run_ppo`` on a fixed tiny config; prints one JSON object to stdout.

Usage::

    python bench/ppo.py [--steps N] [--rollout-batch-size B] [--value-model auto|shared] [--out DIR]

The fixed config: a tiny llama built with ``build_tiny`` from the task corpus (vocab
512, hidden 128, 4 layers, seed 0) as policy, reference and (``value_model=policy``)
value model; the built-in task's training prompts; a function reward (the exact-answer
checker below, so scoring costs no model); 64 prompts per step, 24 new tokens sampled
at temperature 1, ``ppo_epochs`` 4 in minibatches of 16; 20 steps; lr 1e-5; seed 0.

Reported: seconds per PPO step (median over steps 2..N, the first warms up), split into
generation / scoring / batched forwards (old log-probs, values, reference) / update,
generated tokens per second of generation, update tokens per second (prompt + response
tokens through forward + backward, all epochs), peak RSS, and the set-up seconds
before the first step. Progress goes to stderr; stdout carries the JSON only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import harness  # bench/ is on sys.path when this file is run as a script

REWARD = """
from rlhfkit.demo.task import extract_number


def exact_answer(completions, answer, **fields):
    return [float(a is not None and extract_number(c) == a) for c, a in zip(completions, answer)]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rollout-batch-size", type=int, default=64)
    ap.add_argument("--value-model", default="policy", help="policy | shared")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="rlhfkit-bench-ppo-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    t0 = time.perf_counter()
    from rlhfkit.config import PPOConfig
    from rlhfkit.demo.task import Task
    from rlhfkit.training.stages.ppo import run_ppo
    from rlhfkit.training.tracking import read_metrics

    import_s = time.perf_counter() - t0
    conf = {"arch": "llama", "vocab_size": 512, "hidden": 128, "layers": 4, "model_seed": 0}
    model = harness.tiny_model(work, conf, say)
    (work / "reward.py").write_text(REWARD, encoding="utf-8")
    rows = [{"prompt": r.prompt[0].content, **r.extra} for r in Task().prompt_records("train")]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = PPOConfig(
        model=str(model), prompts=str(prompts), reward_fn=[f"{work / 'reward.py'}:exact_answer"],
        out=str(work / "run"), max_steps=args.steps, rollout_batch_size=args.rollout_batch_size,
        batch_size=16, ppo_epochs=4, max_new_tokens=24, learning_rate=1e-5, seed=0,
        max_length=128, value_model=args.value_model, sample_every=10_000,
    )  # fmt: skip
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the progress bar; stdout is the JSON
        run_ppo(cfg, overwrite=True)
    total_s = time.perf_counter() - t1
    report = harness.online_step_report(read_metrics(work / "run" / "metrics.jsonl"))
    in_steps = report.pop("seconds_in_steps")
    out = {
        "bench": "ppo",
        "config": {
            **conf,
            "steps": args.steps,
            "rollout_batch_size": args.rollout_batch_size,
            "value_model": args.value_model,
            "max_new_tokens": 24,
            "ppo_epochs": 4,
            "batch_size": 16,
        },
        **report,
        "peak_rss_mb": round(harness.peak_rss_mb(), 1),
        "import_seconds": round(import_s, 3),
        "setup_seconds": round(total_s - in_steps, 3),
        **harness.environment(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
