"""Benchmark ``run_dpo`` on a fixed tiny config, with a live and with a precomputed
reference; prints one JSON object to stdout.

Usage::

    python bench/dpo.py [--steps N] [--batch-size B] [--out DIR]

The fixed config: a tiny llama built with ``build_tiny`` from the task corpus
(vocab 512, hidden 128, 4 layers, seed 0) as policy and reference (throughput,
not quality); 2000 synthetic helpfulness pairs of the built-in task
(``synthetic_preferences(task, "train", n=2000, seed=0)``); sigmoid loss, beta
0.1; batch 32 pairs; max_length 64; 100 steps; lr 1e-5; seed 0; log_every 10;
eval_fraction 0.05 (100 held-out pairs, evaluated once at the end).

Method: as ``bench/sft.py`` (see ``bench/harness.py``), once per reference mode:
``live`` (a frozen copy scores every batch) and ``precomputed``
(``precompute_ref``: one pass over all pairs before training, then no reference
in memory; that pass is part of ``setup_seconds``). ``pairs_per_s`` counts the
pairs of steps 2..N exactly (a smaller last batch per epoch, no ``drop_last``)
over their time; ``tokens_per_s`` is the attention-mask tokens of the chosen and
rejected rows, from ``metrics.jsonl`` windows.

Progress goes to stderr; stdout carries the JSON only. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import harness  # bench/ is on sys.path when this file is run as a script

N_RECORDS = 2000
H = harness.Bench("dpo", __file__, "rlhfkit.training.stages.dpo")


def fixed_config(args: argparse.Namespace, precompute: bool) -> dict:
    return {
        "arch": "llama",
        "vocab_size": 512,
        "hidden": 128,
        "layers": 4,
        "model_seed": 0,
        "records": N_RECORDS,
        "loss": "sigmoid",
        "beta": 0.1,
        "precompute_ref": precompute,
        "batch_size": args.batch_size,
        "max_length": 64,
        "steps": args.steps,
        "learning_rate": 1e-5,
        "seed": 0,
        "log_every": 10,
        "eval_fraction": 0.05,
        "cpu": args.cpu,
    }


def start_child(spec: dict):
    """Child side: the DPOConfig of ``spec`` and the call to time."""
    from rlhfkit.config import DPOConfig
    from rlhfkit.training.stages.dpo import run_dpo

    keys = (
        "loss",
        "beta",
        "precompute_ref",
        "learning_rate",
        "batch_size",
        "max_length",
        "seed",
        "log_every",
        "eval_fraction",
        "cpu",
    )
    cfg = harness.stage_config(DPOConfig, spec, keys)
    return cfg, lambda: run_dpo(cfg, overwrite=True)


def prepare_inputs(work: Path, conf: dict) -> dict:
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.demo.preferences import synthetic_preferences
    from rlhfkit.demo.task import Task

    model_dir = harness.tiny_model(work, conf, H.say)
    data = work / "data" / "dpo.jsonl"
    if not data.exists():
        records = synthetic_preferences(Task(), "train", n=conf["records"], seed=0)
        write_jsonl(data, [r.to_dict() for r in records])
    return {**conf, "model": str(model_dir), "data": str(data)}


def pairs_in_steps(n_train: int, batch: int, first: int, last: int) -> int:
    """Pairs trained in steps ``first..last`` (1-based): full batches, then a smaller
    last batch in every epoch."""
    per_epoch = math.ceil(n_train / batch)
    sizes = [min(batch, n_train - i * batch) for i in range(per_epoch)]
    return sum(sizes[step % per_epoch] for step in range(first - 1, last))


def one_mode(args: argparse.Namespace, work: Path, precompute: bool) -> tuple[dict, dict]:
    conf = fixed_config(args, precompute)
    runs = H.measure(work, args.steps, lambda: prepare_inputs(work, conf))
    n_train = N_RECORDS - int(N_RECORDS * conf["eval_fraction"])
    pairs = pairs_in_steps(n_train, conf["batch_size"], 2, args.steps)
    result = runs.full["eval"]
    row = {
        **runs.head(),
        "pairs_per_s": round(pairs / runs.loop_seconds, 1),
        "tokens_per_s": harness.rounded(harness.steady_tokens_per_s(runs.metrics_path), 1),
        "peak_rss_mb": round(runs.full["peak_rss_mb"], 1),
        "final_loss": runs.full["train_loss"],
        "eval_rewards_accuracy": result.get("eval_rewards_accuracy"),
    }
    return row, runs.tail(conf)


def bench(args: argparse.Namespace) -> dict:
    with H.workdir(args.out) as work:
        live, tail = one_mode(args, work, precompute=False)
        pre, _ = one_mode(args, work, precompute=True)
    tail["config"].pop("precompute_ref", None)
    ratio = pre["pairs_per_s"] / live["pairs_per_s"] if live["pairs_per_s"] else None
    return {
        "live_reference": live,
        "precomputed_reference": pre,
        "precomputed_speedup": harness.rounded(ratio, 2),
        **tail,
    }


def main(argv: list[str] | None = None) -> int:
    args = H.parse(__doc__, argv)
    return H.main(args, start_child, bench)


if __name__ == "__main__":
    sys.exit(main())
