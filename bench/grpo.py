"""Benchmark ``run_grpo`` on a fixed tiny config; prints one JSON object to stdout.

Usage::

    python bench/grpo.py [--steps N] [--prompts-per-step P] [--generations G] [--beta B]
                         [--generation-backend fast|hf] [--out DIR]

The fixed config: a tiny llama built with ``build_tiny`` from the task corpus (vocab
512, hidden 128, 4 layers, seed 0) as the policy (and, with ``beta > 0``, the frozen
reference); the built-in task's arithmetic training prompts; the built-in exact-answer
checker ``rlhfkit.rewards:exact_answer`` as the reward (scoring costs no model);
16 prompts x 8 generations per step, 24 new tokens sampled at temperature 1, one
optimizer step per rollout (``batch_size`` 128, ``ppo_epochs`` 1: the old log-probs
are the current ones, no extra forward); 20 steps; lr 1e-6; beta 0.04; seed 0;
``generation_backend`` fast (rlhfkit's decoding loop; ``hf``: Hugging Face ``generate``,
the same tokens).

Reported: seconds per GRPO step (median over steps 2..N, the first warms up), split into
generation / scoring / batched forwards (reference and, with beta > 0, old log-probs)
/ update, generated tokens per second of generation, update tokens per second, peak
RSS, and the set-up seconds before the first step. Progress goes to stderr; stdout
carries the JSON only.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--generation-backend", choices=("fast", "hf"), default="fast")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="rlhfkit-bench-grpo-"))
    work.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=sys.stderr)  # noqa: E731

    t0 = time.perf_counter()
    from rlhfkit.config import GRPOConfig
    from rlhfkit.demo.task import Task
    from rlhfkit.training.stages.grpo import run_grpo
    from rlhfkit.training.tracking import read_metrics

    import_s = time.perf_counter() - t0
    conf = {"arch": "llama", "vocab_size": 512, "hidden": 128, "layers": 4, "model_seed": 0}
    model = harness.tiny_model(work, conf, say)
    rows = [
        {"prompt": r.prompt[0].content, **r.extra}
        for r in Task().prompt_records("train", "arithmetic")
    ]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rows_per_step = args.prompts_per_step * args.generations
    cfg = GRPOConfig(
        model=str(model), prompts=str(prompts), reward_fn=["rlhfkit.rewards:exact_answer"],
        out=str(work / "run"), max_steps=args.steps, rollout_batch_size=args.prompts_per_step,
        num_generations=args.generations, batch_size=rows_per_step, max_new_tokens=24,
        beta=args.beta, seed=0, max_length=128, sample_every=10_000,
        generation_backend=args.generation_backend,
    )  # fmt: skip
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the progress bar; stdout is the JSON
        run_grpo(cfg, overwrite=True)
    total_s = time.perf_counter() - t1
    report = harness.online_step_report(read_metrics(work / "run" / "metrics.jsonl"))
    in_steps = report.pop("seconds_in_steps")
    out = {
        "bench": "grpo",
        "config": {
            **conf,
            "steps": args.steps,
            "prompts_per_step": args.prompts_per_step,
            "num_generations": args.generations,
            "beta": args.beta,
            "generation_backend": args.generation_backend,
            "max_new_tokens": 24,
            "batch_size": rows_per_step,
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
