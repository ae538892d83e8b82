"""Benchmark ``run_sft`` on a fixed tiny config; prints one JSON object to stdout.

Usage::

    python bench/sft.py [--steps N] [--batch-size B] [--arch llama] [--packing] [--out DIR]

The fixed config: a tiny model built with ``build_tiny`` (vocab 512, hidden 128,
4 layers, seed 0), 2000 demonstrations of the built-in task (seed 0), batch 32,
max_length 64, 100 steps, lr 1e-3, seed 0, log_every 10, the default 5% eval
split. Everything lives under ``--out`` (default: a temp folder, removed after).

Method. Every number comes from a fresh child process (this same script with
``--child-config``) so that runs share no caches, compiled kernels or allocator state:

* ``import_seconds``: a child ``python -c`` that wraps
  ``import rlhfkit.training.stages.sft`` (torch, transformers, accelerate ... it
  pulls in) in ``time.perf_counter``. Fresh interpreter, so nothing is imported
  yet; the OS page cache may be warm, so it is "cold process", not "cold disk".
* Two training children, each timing only its ``run_sft(cfg, overwrite=True)``
  call (imports happen before the clock starts): ``t_one`` with ``max_steps=1``
  and ``t_full`` with ``max_steps=N``. Both pay the same fixed costs (accelerator,
  tokenizer and data loading, tokenization, model load, optimizer, the final
  eval and the final ``save_pretrained``), so

      steps_per_s   = (N - 1) / (t_full - t_one)
      setup_seconds = t_one - 1 / steps_per_s

  ``setup_seconds`` is therefore the fixed per-run overhead: everything from
  calling ``run_sft`` to the first optimizer step, plus the end-of-run eval and
  save (small here), plus any first-step warm-up beyond a steady-state step.
  ``pre_fit_seconds`` (full run: ``run_sft`` wall time minus
  ``TrainResult.seconds``) is the part before ``Trainer.fit`` starts, a
  cross-check that excludes the eval and save.
* ``tokens_per_s``: the mean of the ``tokens_per_s`` field of the full run's
  ``metrics.jsonl``, leaving out the first window (warm-up) and any window that
  contains an evaluation (its time includes the eval). The trainer counts the
  attention-mask tokens (prompt + completion, no padding); packed batches have no
  attention mask, so with ``--packing`` the count includes each row's pad tail.
  With too few steps for a clean window it is null.
* ``peak_rss_mb``: ``ru_maxrss`` of the full-run child (KiB on Linux).
* ``load_avg_1m``: the 1-minute load average at the start and end; anything
  else running on the machine skews every timing, so look at it first.

Progress goes to stderr; stdout carries the JSON only. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARCHS = ("llama", "gpt2", "qwen2")
N_DEMOS = 2000
IMPORT_SNIPPET = (
    "import time; t = time.perf_counter(); import rlhfkit.training.stages.sft; "
    "print(time.perf_counter() - t)"
)


def say(msg: str) -> None:
    print(f"[bench/sft] {msg}", file=sys.stderr, flush=True)


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


# ---- child: one run_sft call ---------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import logging
    import resource

    import torch

    from rlhfkit.config import SFTConfig
    from rlhfkit.training.stages.sft import run_sft

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="  %(message)s")
    spec = json.loads(args.child_config)
    cfg = SFTConfig(
        model=spec["model"],
        data=spec["data"],
        out=spec["out"],
        learning_rate=spec["learning_rate"],
        batch_size=spec["batch_size"],
        max_steps=spec["steps"],
        max_length=spec["max_length"],
        seed=spec["seed"],
        log_every=spec["log_every"],
        packing=spec["packing"],
        cpu=spec["cpu"],
    )
    cfg.validate()
    t0 = time.perf_counter()
    result = run_sft(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    if torch.cuda.is_available() and not cfg.cpu:
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu"
    out = {
        "wall_seconds": wall,
        "fit_seconds": result.seconds,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "eval": result.eval,
        "run_dir": cfg.out,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    Path(args.child_result).write_text(json.dumps(out), encoding="utf-8")


# ---- parent --------------------------------------------------------------------


def run_child(script: Path, spec: dict, result_path: Path, label: str) -> dict:
    say(f"{label}: run_sft with max_steps={spec['steps']} in a fresh process")
    cmd = [
        sys.executable,
        str(script),
        "--child-config",
        json.dumps(spec),
        "--child-result",
        str(result_path),
    ]
    # The child's stdout (rich progress bar) goes to our stderr: stdout is the JSON.
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} child failed with exit code {proc.returncode}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def measure_import() -> float:
    say("timing `import rlhfkit.training.stages.sft` in a fresh interpreter")
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_SNIPPET],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"import child failed with exit code {proc.returncode}")
    return float(proc.stdout.strip().splitlines()[-1])


def prepare_inputs(work: Path, conf: dict) -> tuple[Path, Path]:
    """Build the tiny model (unless already there) and write the demonstrations."""
    from rlhfkit.demo.quickstart import write_jsonl
    from rlhfkit.demo.task import Task
    from rlhfkit.models.tiny import TinySpec, build_tiny

    task = Task()
    model_dir = work / f"tiny-{conf['arch']}"
    if not (model_dir / "config.json").exists():
        say(f"building the tiny {conf['arch']} model in {model_dir}")
        spec = TinySpec(
            arch=conf["arch"],
            vocab_size=conf["vocab_size"],
            hidden=conf["hidden"],
            layers=conf["layers"],
            seed=conf["model_seed"],
        )
        build_tiny(model_dir, spec, task.corpus())
    rows = [
        {"messages": [m.as_dict() for m in r.messages]}
        for r in task.demonstrations(conf["demonstrations"], seed=0)
    ]
    data = write_jsonl(work / "data" / "sft.jsonl", rows)
    return model_dir, data


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def steady_tokens_per_s(metrics_path: Path) -> float | None:
    from rlhfkit.training.tracking import read_metrics

    rows = read_metrics(metrics_path)[1:]
    rates = [r["tokens_per_s"] for r in rows if not any(k.startswith("eval_") for k in r)]
    return sum(rates) / len(rates) if rates else None


def bench(args: argparse.Namespace) -> dict:
    conf = fixed_config(args)
    load_before = os.getloadavg()[0]
    script = Path(__file__).resolve()
    tmp = None
    if args.out:
        work = Path(args.out).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="rlhfkit-bench-sft-")
        work = Path(tmp)
    try:
        import_seconds = measure_import()
        model_dir, data = prepare_inputs(work, conf)
        base = {**conf, "model": str(model_dir), "data": str(data)}
        one = run_child(
            script,
            {**base, "steps": 1, "out": str(work / "runs" / "one-step")},
            work / "one-step.json",
            "1/2",
        )
        full = run_child(
            script,
            {**base, "out": str(work / "runs" / "full")},
            work / "full.json",
            "2/2",
        )
        if one["steps"] != 1 or full["steps"] != args.steps:
            raise RuntimeError(f"unexpected step counts: {one['steps']}, {full['steps']}")
        loop = full["wall_seconds"] - one["wall_seconds"]
        if loop <= 0:
            raise RuntimeError(
                f"the {args.steps}-step run ({full['wall_seconds']:.3f}s) was not slower "
                f"than the 1-step run ({one['wall_seconds']:.3f}s); use more --steps"
            )
        steps_per_s = (args.steps - 1) / loop
        tokens_per_s = steady_tokens_per_s(Path(full["run_dir"]) / "metrics.jsonl")
        return {
            "import_seconds": round(import_seconds, 3),
            "setup_seconds": round(one["wall_seconds"] - 1.0 / steps_per_s, 3),
            "pre_fit_seconds": round(full["wall_seconds"] - full["fit_seconds"], 3),
            "steps_per_s": round(steps_per_s, 3),
            "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s is not None else None,
            "peak_rss_mb": round(full["peak_rss_mb"], 1),
            "final_loss": full["train_loss"],
            "eval_loss": full["eval"].get("eval_loss"),
            "run_seconds": {
                "one_step": round(one["wall_seconds"], 3),
                "full": round(full["wall_seconds"], 3),
            },
            "config": conf,
            "device": full["device"],
            "torch_threads": full["torch_threads"],
            **versions(),
            "machine": {"arch": platform.machine(), "cpu_count": os.cpu_count()},
            # Other work on the machine skews every timing above; check these first.
            "load_avg_1m": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--batch-size", type=int, default=32, help="micro-batch size (default 32)")
    p.add_argument("--arch", choices=ARCHS, default="llama", help="tiny model architecture")
    p.add_argument("--packing", action="store_true", help="pack examples into rows")
    p.add_argument("--cpu", action="store_true", help="force the CPU even with a GPU present")
    p.add_argument("--out", help="work folder to keep (default: a temp folder, removed)")
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (the step rate comes from the N-step minus the 1-step run)")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.child_config:
        child(args)
        return 0
    t0 = time.perf_counter()
    try:
        result = bench(args)
    except Exception as e:
        say(f"FAILED: {type(e).__name__}: {e}")
        return 1
    say(f"done in {time.perf_counter() - t0:.1f}s")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
