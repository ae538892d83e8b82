"""Benchmark ``run_rm`` on a fixed tiny config; prints one JSON object to stdout.

Usage::

    python bench/rm.py [--steps N] [--batch-size B] [--k K] [--out DIR]

The fixed config: a tiny llama built with ``build_tiny`` from the task corpus
(vocab 512, hidden 128, 4 layers, seed 0), used directly as the reward-model
base (no SFT: this measures throughput, not quality); 2000 synthetic
helpfulness records of the built-in task (``synthetic_preferences(task,
"train", n=2000, seed=0, k=K)``: preference pairs for K = 2, rankings of K
responses of distinct quality for K = 3-4, and for K = 5-9 of K candidates of any
quality, ``distinct=False``, as InstructGPT's rankings of 4-9); batch 32 groups,
max_length 64, 100 steps, lr 1e-4, seed 0, log_every 10, eval_fraction 0.1 (200
held-out groups, evaluated once at the end). Everything lives under ``--out`` (default: a temp folder, removed after).

Method: as ``bench/sft.py`` (see ``bench/harness.py``): ``import_seconds``
(``import rlhfkit.training.stages.reward`` in a fresh interpreter),
``steps_per_s`` and ``setup_seconds`` from a 1-step and an N-step child,
``pre_fit_seconds``, ``peak_rss_mb``, ``load_avg_1m``. Specific to the RM:

* ``groups_per_s`` and ``pairs_per_s``: the groups (prompts with their K
  responses) and the ordered pairs trained in steps 2..N, divided by the time
  of those steps (``t_full - t_one``). The batches are those of the trainer:
  the 90% training split (``split_eval``), one ``EpochSampler`` permutation
  per epoch, batches of B groups with a smaller last batch per epoch (no
  ``drop_last``), one micro-batch per step. A pair record holds 1 pair, a
  ranking its C(K,2) pairs minus tied ones (``RankingRecord.pairs()``), so the
  counts are exact; ``per_step`` gives their means.
* ``tokens_per_s``: as for SFT, from ``metrics.jsonl`` windows: the
  attention-mask tokens of every response (each response repeats its prompt).
* ``final_loss``: the training loss of the last step; ``eval_accuracy`` and
  ``eval_loss``: pair accuracy and loss on the held-out groups after N steps.

Progress goes to stderr; stdout carries the JSON only. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import harness  # bench/ is on sys.path when this file is run as a script

N_RECORDS = 2000
H = harness.Bench("rm", __file__, "rlhfkit.training.stages.reward")


def fixed_config(args: argparse.Namespace) -> dict:
    return {
        "arch": "llama",
        "vocab_size": 512,
        "hidden": 128,
        "layers": 4,
        "model_seed": 0,
        "records": N_RECORDS,
        "dimension": "helpfulness",
        "k": args.k,
        "batch_size": args.batch_size,
        "max_length": 64,
        "steps": args.steps,
        "learning_rate": 1e-4,
        "seed": 0,
        "log_every": 10,
        "eval_fraction": 0.1,
        "cpu": args.cpu,
    }


def start_child(spec: dict):
    """Child side: the RMConfig of ``spec`` and the call to time."""
    from rlhfkit.config import RMConfig
    from rlhfkit.training.stages.reward import run_rm

    cfg = harness.stage_config(
        RMConfig,
        spec,
        ("learning_rate", "batch_size", "max_length", "seed", "log_every", "eval_fraction", "cpu"),
    )
    return cfg, lambda: run_rm(cfg, overwrite=True)


def prepare_inputs(work: Path, conf: dict) -> dict:
    """Build the tiny model (unless already there) and write the preference records."""
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.demo.preferences import quality_levels, synthetic_preferences
    from rlhfkit.demo.task import Task

    task = Task()
    distinct = conf["k"] <= quality_levels(task, conf["dimension"], task.prompts("train"))
    model_dir = harness.tiny_model(work, conf, H.say)
    records = synthetic_preferences(
        task, "train", n=conf["records"], dimensions=(conf["dimension"],), k=conf["k"],
        distinct=distinct, seed=0,
    )  # fmt: skip
    data = write_jsonl(work / "data" / f"rm-k{conf['k']}.jsonl", [r.to_dict() for r in records])
    return {**conf, "model": str(model_dir), "data": str(data)}


def trained_counts(conf: dict, data: Path, first: int, last: int) -> tuple[int, int]:
    """Groups and pairs the trainer trains in steps ``first..last`` (1-based), read
    back from the data file as the stage reads it and batched as it batches."""
    from rlhfkit.data.load import load_records
    from rlhfkit.data.types import RankingRecord
    from rlhfkit.training.loop import EpochSampler
    from rlhfkit.training.run import split_eval

    records = load_records(data, "preference").records
    train, _ = split_eval(records, conf["eval_fraction"], conf["seed"])
    pairs_of = [len(r.pairs()) if isinstance(r, RankingRecord) else 1 for r in train]
    b = conf["batch_size"]
    per_epoch = math.ceil(len(train) / b)
    sampler = EpochSampler(len(train), conf["seed"])
    order: list[int] = []
    groups = pairs = 0
    for step in range(last):
        epoch, i = divmod(step, per_epoch)
        if i == 0:
            sampler.set_epoch(epoch)
            order = list(sampler)
        if step + 1 >= first:
            batch = order[i * b : (i + 1) * b]
            groups += len(batch)
            pairs += sum(pairs_of[j] for j in batch)
    return groups, pairs


def bench(args: argparse.Namespace) -> dict:
    conf = fixed_config(args)
    with H.workdir(args.out) as work:
        runs = H.measure(work, args.steps, lambda: prepare_inputs(work, conf))
        groups, pairs = trained_counts(conf, Path(runs.spec["data"]), 2, args.steps)
        tokens_per_s = harness.steady_tokens_per_s(runs.metrics_path)
        result = runs.full["eval"]
        return {
            **runs.head(),
            "pairs_per_s": round(pairs / runs.loop_seconds, 1),
            "groups_per_s": round(groups / runs.loop_seconds, 1),
            "tokens_per_s": harness.rounded(tokens_per_s, 1),
            "per_step": {
                "groups": round(groups / (args.steps - 1), 3),
                "pairs": round(pairs / (args.steps - 1), 3),
            },
            "peak_rss_mb": round(runs.full["peak_rss_mb"], 1),
            "final_loss": runs.full["train_loss"],
            "eval_accuracy": result.get("eval_accuracy"),
            "eval_loss": result.get("eval_loss"),
            **runs.tail(conf),
        }


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--k", type=int, default=2, help="responses per record: 2 = pairs, more = rankings"
    )


def main(argv: list[str] | None = None) -> int:
    args = H.parse(__doc__, argv, add_args, lambda a: "--k must be >= 2" if a.k < 2 else None)
    return H.main(args, start_child, bench)


if __name__ == "__main__":
    sys.exit(main())
