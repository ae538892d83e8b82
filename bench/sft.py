"""Benchmark ``run_sft`` on a fixed tiny config; prints one JSON object to stdout.

Usage::

    python bench/sft.py [--steps N] [--batch-size B] [--arch llama] [--packing] [--out DIR]

The fixed config: a tiny model built with ``build_tiny`` (vocab 512, hidden 128,
4 layers, seed 0), 2000 demonstrations of the built-in task (seed 0), batch 32,
max_length 64, 100 steps, lr 1e-3, seed 0, log_every 10, the default 5% eval
split. Everything lives under ``--out`` (default: a temp folder, removed after).

Method (shared with the other benchmarks, see ``bench/harness.py``): every
number comes from a fresh child process (this same script with
``--child-config``) so that runs share no caches, compiled kernels or allocator
state.

* ``import_seconds``: ``import rlhfkit.training.stages.sft`` in a fresh interpreter.
* ``steps_per_s = (N - 1) / (t_full - t_one)`` from a ``max_steps=1`` and a
  ``max_steps=N`` child, each timing only its ``run_sft(cfg, overwrite=True)``;
  ``setup_seconds = t_one - 1 / steps_per_s`` is the fixed per-run overhead
  (everything before the first optimizer step, the end-of-run eval and save,
  first-step warm-up); ``pre_fit_seconds`` (full run: ``run_sft`` wall time
  minus ``TrainResult.seconds``) is the part before ``Trainer.fit`` starts.
* ``tokens_per_s``: the mean ``tokens_per_s`` of the full run's
  ``metrics.jsonl`` windows, without the first (warm-up) and any window with an
  evaluation. The trainer counts the attention-mask tokens (prompt +
  completion, no padding); packed batches have no attention mask, so with
  ``--packing`` the count includes each row's pad tail. Null with too few steps.
* ``peak_rss_mb``: ``ru_maxrss`` of the full-run child.
* ``load_avg_1m``: the 1-minute load average at the start and end; anything
  else running on the machine skews every timing, so look at it first.

Progress goes to stderr; stdout carries the JSON only. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness  # bench/ is on sys.path when this file is run as a script

ARCHS = ("llama", "gpt2", "qwen2")
N_DEMOS = 2000
H = harness.Bench("sft", __file__, "rlhfkit.training.stages.sft")


def fixed_config(args: argparse.Namespace) -> dict:
    return {
        "arch": args.arch,
        "vocab_size": 512,
        "hidden": 128,
        "layers": 4,
        "model_seed": 0,
        "demonstrations": N_DEMOS,
        "batch_size": args.batch_size,
        "max_length": 64,
        "steps": args.steps,
        "learning_rate": 1e-3,
        "seed": 0,
        "log_every": 10,
        "packing": args.packing,
        "cpu": args.cpu,
    }


def start_child(spec: dict):
    """Child side: the SFTConfig of ``spec`` and the call to time."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.training.stages.sft import run_sft

    cfg = harness.stage_config(
        SFTConfig,
        spec,
        ("learning_rate", "batch_size", "max_length", "seed", "log_every", "packing", "cpu"),
    )
    return cfg, lambda: run_sft(cfg, overwrite=True)


def prepare_inputs(work: Path, conf: dict) -> dict:
    """Build the tiny model (unless already there) and write the demonstrations."""
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.demo.task import Task

    model_dir = harness.tiny_model(work, conf, H.say)
    rows = [
        {"messages": [m.as_dict() for m in r.messages]}
        for r in Task().demonstrations(conf["demonstrations"], seed=0)
    ]
    data = write_jsonl(work / "data" / "sft.jsonl", rows)
    return {**conf, "model": str(model_dir), "data": str(data)}


def bench(args: argparse.Namespace) -> dict:
    conf = fixed_config(args)
    with H.workdir(args.out) as work:
        runs = H.measure(work, args.steps, lambda: prepare_inputs(work, conf))
        tokens_per_s = harness.steady_tokens_per_s(runs.metrics_path)
        return {
            **runs.head(),
            "tokens_per_s": harness.rounded(tokens_per_s, 1),
            "peak_rss_mb": round(runs.full["peak_rss_mb"], 1),
            "final_loss": runs.full["train_loss"],
            "eval_loss": runs.full["eval"].get("eval_loss"),
            **runs.tail(conf),
        }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", choices=ARCHS, default="llama", help="tiny model architecture")
    p.add_argument("--packing", action="store_true", help="pack examples into rows")


def main(argv: list[str] | None = None) -> int:
    args = H.parse(__doc__, argv, add_args)
    return H.main(args, start_child, bench)


if __name__ == "__main__":
    sys.exit(main())
