"""What every ``bench/*.py`` script shares: fresh-process timing of a training stage.

A benchmark script (run as ``python bench/NAME.py`` from the repo root, which puts
this folder on ``sys.path``, so ``import harness`` works) describes only its
fixed config, its inputs and how one child builds and runs the stage; this
module does the rest. Method, the same for every stage:

* ``import_seconds``: a child ``python -c`` that wraps ``import <stage module>``
  (and the torch, transformers, accelerate ... it pulls in) in
  ``time.perf_counter``. Fresh interpreter, so nothing is imported yet; the OS
  page cache may be warm, so it is "cold process", not "cold disk".
* Two training children (the script itself with ``--child-config``), each timing
  only the stage call (imports and config building happen before the clock
  starts): ``t_one`` with ``max_steps=1`` and ``t_full`` with ``max_steps=N``.
  Both pay the same fixed costs (accelerator, data loading, tokenization, model
  load, optimizer, the final eval and save), so

      steps_per_s   = (N - 1) / (t_full - t_one)
      setup_seconds = t_one - 1 / steps_per_s

  ``pre_fit_seconds`` (full run: stage wall time minus ``TrainResult.seconds``)
  is the part before ``Trainer.fit`` starts, a cross-check that excludes the
  eval and save. Anything counted per step (pairs, groups) is a rate over
  steps 2..N divided by ``t_full - t_one`` (:attr:`Runs.loop_seconds`).
* ``tokens_per_s`` (:func:`steady_tokens_per_s`): the mean of the
  ``tokens_per_s`` field of the full run's ``metrics.jsonl``, leaving out the
  first window (warm-up) and any window that contains an evaluation.
* ``peak_rss_mb``: ``ru_maxrss`` of the full-run child (KiB on Linux).
* ``load_avg_1m``: the 1-minute load average at the start and end; anything
  else running on the machine skews every timing, so look at it first.

Progress goes to stderr; stdout carries one JSON object only (:meth:`Bench.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A child's ``start(spec)`` returns the stage config (it has ``.out`` and
# ``.cpu``) and a zero-argument callable that runs the stage and returns its
# ``TrainResult``; only that call is timed.
ChildStart = Callable[[dict], tuple[Any, Callable[[], Any]]]


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def load_avg_1m() -> float:
    return os.getloadavg()[0]


def versions() -> dict:
    """Python, torch and transformers versions (None for a missing package)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    return {"arch": platform.machine(), "cpu_count": os.cpu_count()}


def environment() -> dict:
    """The trailer of a single-process benchmark's JSON: the load now, library versions,
    the machine."""
    return {"load_avg_1m": round(load_avg_1m(), 2), "versions": versions(), "machine": machine()}


def stage_config(cls, spec: dict, keys: tuple[str, ...]):
    """A stage config from a child spec: model, data, out, ``max_steps`` from ``steps``,
    and ``keys`` copied as they are; validated."""
    cfg = cls(
        model=spec["model"],
        data=spec["data"],
        out=spec["out"],
        max_steps=spec["steps"],
        **{k: spec[k] for k in keys},
    )
    cfg.validate()
    return cfg


def run_json_child(cmd: list[str], result_path: Path, label: str, env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh process and read the JSON object it wrote to ``result_path``.
    The child's stdout (progress bars) goes to our stderr: our stdout is the JSON."""
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} child failed with exit code {proc.returncode}")
    return json.loads(result_path.read_text(encoding="utf-8"))


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def steady_tokens_per_s(metrics_path: Path) -> float | None:
    """Mean ``tokens_per_s`` of the logged windows, without the first (warm-up) and
    any window holding an evaluation; None when no window is left."""
    from rlhfkit.training.tracking import read_metrics

    rows = read_metrics(metrics_path)[1:]
    rates = [r["tokens_per_s"] for r in rows if not any(k.startswith("eval_") for k in r)]
    return sum(rates) / len(rates) if rates else None


def tiny_model(work: Path, conf: dict, say: Callable[[str], None]) -> Path:
    """Build the tiny model of ``conf`` (arch, vocab_size, hidden, layers, model_seed)
    from the built-in task's corpus into ``work``, unless it is already there."""
    from rlhfkit.demo.task import Task
    from rlhfkit.models.tiny import TinySpec, build_tiny

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
        build_tiny(model_dir, spec, Task().corpus())
    return model_dir


@dataclass
class Runs:
    """The import timing and the two training children of one benchmark."""

    steps: int  # N, the full run's max_steps
    import_seconds: float
    one: dict  # the 1-step child's result (see Bench.child)
    full: dict  # the N-step child's result
    load_start: float
    spec: dict  # what prepare() returned: the children's spec without steps and out

    @property
    def loop_seconds(self) -> float:
        """Time of steps 2..N: the full run minus the 1-step run."""
        return self.full["wall_seconds"] - self.one["wall_seconds"]

    @property
    def steps_per_s(self) -> float:
        return (self.steps - 1) / self.loop_seconds

    @property
    def setup_seconds(self) -> float:
        return self.one["wall_seconds"] - 1.0 / self.steps_per_s

    @property
    def pre_fit_seconds(self) -> float:
        return self.full["wall_seconds"] - self.full["fit_seconds"]

    @property
    def run_dir(self) -> Path:
        """The full run's folder (``metrics.jsonl``, ``final/`` ...)."""
        return Path(self.full["run_dir"])

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def head(self) -> dict:
        """The leading keys of every benchmark's JSON."""
        return {
            "import_seconds": round(self.import_seconds, 3),
            "setup_seconds": round(self.setup_seconds, 3),
            "pre_fit_seconds": round(self.pre_fit_seconds, 3),
            "steps_per_s": round(self.steps_per_s, 3),
        }

    def tail(self, config: dict) -> dict:
        """The trailing keys: raw run times, config, device, versions, machine, load."""
        return {
            "run_seconds": {
                "one_step": round(self.one["wall_seconds"], 3),
                "full": round(self.full["wall_seconds"], 3),
            },
            "config": config,
            "device": self.full["device"],
            "torch_threads": self.full["torch_threads"],
            **versions(),
            "machine": machine(),
            # Other work on the machine skews every timing; check these first.
            "load_avg_1m": {"start": round(self.load_start, 2), "end": round(load_avg_1m(), 2)},
        }


class Bench:
    """One benchmark script: ``name`` tags its stderr lines and temp folders,
    ``script`` is re-run as the training child, ``import_module`` is the module
    whose import is timed (the stage module, e.g. ``rlhfkit.training.stages.sft``)."""

    def __init__(self, name: str, script: str | Path, import_module: str) -> None:
        self.name = name
        self.script = Path(script).resolve()
        self.import_module = import_module

    def say(self, msg: str) -> None:
        print(f"[bench/{self.name}] {msg}", file=sys.stderr, flush=True)

    # ---- command line -------------------------------------------------------

    def parse(
        self,
        doc: str | None,
        argv: list[str] | None,
        add_args: Callable[[argparse.ArgumentParser], None] | None = None,
        check: Callable[[argparse.Namespace], str | None] = lambda args: None,
    ) -> argparse.Namespace:
        """Parse ``--steps``, ``--batch-size``, the script's own options
        (``add_args``), ``--cpu``, ``--out`` and the hidden child options;
        ``check(args)`` returns an error message or None."""
        p = argparse.ArgumentParser(description=(doc or "").split("\n", 1)[0])
        p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
        p.add_argument("--batch-size", type=int, default=32, help="micro-batch size (default 32)")
        if add_args is not None:
            add_args(p)
        p.add_argument("--cpu", action="store_true", help="force the CPU even with a GPU present")
        p.add_argument("--out", help="work folder to keep (default: a temp folder, removed)")
        p.add_argument("--child-config", help=argparse.SUPPRESS)
        p.add_argument("--child-result", help=argparse.SUPPRESS)
        args = p.parse_args(argv)
        if args.steps < 2:
            p.error(
                "--steps must be >= 2 (the step rate comes from the N-step minus the 1-step run)"
            )
        if args.batch_size < 1:
            p.error("--batch-size must be >= 1")
        error = check(args)
        if error:
            p.error(error)
        return args

    def main(
        self,
        args: argparse.Namespace,
        start: ChildStart,
        bench: Callable[[argparse.Namespace], dict],
    ) -> int:
        """Child mode (``--child-config``): run the stage once. Otherwise run
        ``bench(args)`` and print its dict as JSON; 1 on failure."""
        if args.child_config:
            self.child(args, start)
            return 0
        return self.report(args, bench)

    def report(self, args: argparse.Namespace, bench: Callable[[argparse.Namespace], dict]) -> int:
        """Run ``bench(args)`` and print its dict as JSON on stdout; 1 on failure."""
        t0 = time.perf_counter()
        try:
            result = bench(args)
        except Exception as e:
            self.say(f"FAILED: {type(e).__name__}: {e}")
            return 1
        self.say(f"done in {time.perf_counter() - t0:.1f}s")
        print(json.dumps(result, indent=2))
        return 0

    # ---- child: one stage call ----------------------------------------------

    def child(self, args: argparse.Namespace, start: ChildStart) -> None:
        import torch

        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="  %(message)s")
        cfg, train = start(json.loads(args.child_config))
        t0 = time.perf_counter()
        result = train()
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
            "peak_rss_mb": peak_rss_mb(),
            "torch_threads": torch.get_num_threads(),
            "device": device,
        }
        Path(args.child_result).write_text(json.dumps(out), encoding="utf-8")

    # ---- parent ---------------------------------------------------------------

    @contextlib.contextmanager
    def workdir(self, out: str | None) -> Iterator[Path]:
        """``out`` (created, kept) or a temp folder removed on exit."""
        if out:
            work = Path(out).resolve()
            work.mkdir(parents=True, exist_ok=True)
            yield work
            return
        tmp = tempfile.mkdtemp(prefix=f"rlhfkit-bench-{self.name}-")
        try:
            yield Path(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def measure_import(self) -> float:
        self.say(f"timing `import {self.import_module}` in a fresh interpreter")
        snippet = (
            f"import time; t = time.perf_counter(); import {self.import_module}; "
            "print(time.perf_counter() - t)"
        )
        proc = subprocess.run(
            [sys.executable, "-c", snippet],
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"import child failed with exit code {proc.returncode}")
        return float(proc.stdout.strip().splitlines()[-1])

    def run_child(self, spec: dict, result_path: Path, label: str) -> dict:
        self.say(f"{label}: {self.name} with max_steps={spec['steps']} in a fresh process")
        cmd = [sys.executable, str(self.script), "--child-config", json.dumps(spec)]
        return run_json_child([*cmd, "--child-result", str(result_path)], result_path, label)

    def measure(self, work: Path, steps: int, prepare: Callable[[], dict]) -> Runs:
        """Time the import, call ``prepare()`` (builds the inputs, returns the child
        spec without ``steps`` and ``out``), then run the 1-step and N-step children."""
        load_start = load_avg_1m()
        import_seconds = self.measure_import()
        base = prepare()
        one = self.run_child(
            {**base, "steps": 1, "out": str(work / "runs" / "one-step")},
            work / "one-step.json",
            "1/2",
        )
        full = self.run_child(
            {**base, "steps": steps, "out": str(work / "runs" / "full")},
            work / "full.json",
            "2/2",
        )
        if one["steps"] != 1 or full["steps"] != steps:
            raise RuntimeError(f"unexpected step counts: {one['steps']}, {full['steps']}")
        runs = Runs(steps, import_seconds, one, full, load_start, base)
        if runs.loop_seconds <= 0:
            raise RuntimeError(
                f"the {steps}-step run ({full['wall_seconds']:.3f}s) was not slower "
                f"than the 1-step run ({one['wall_seconds']:.3f}s); use more --steps"
            )
        return runs


# ---- per-step clocks, for side-by-side runs of two frameworks ------------------


class StepClock:
    """Timestamps of one training child, whatever the framework: the end of its
    imports, the start of its first optimizer step, and the end of every step with
    its tokens and loss. Losses may be 0-d tensors: they are read once, at the end,
    so that recording them adds no synchronisation to a step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.imported: float | None = None
        self.first_step: float | None = None
        self.ends: list[float] = []
        self.tokens: list[float] = []
        self.losses: list[Any] = []

    def mark_imported(self) -> None:
        self.imported = time.perf_counter()

    def step_begin(self) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter()

    def step_end(self, tokens: float, loss: Any) -> None:
        self.ends.append(time.perf_counter())
        self.tokens.append(float(tokens))
        self.losses.append(loss)

    def result(self, warmup: int) -> dict:
        """Import and set-up seconds, the first step's seconds, and the seconds and
        tokens of every step after the first ``warmup`` ones (step i's time runs from
        the end of step i-1 to its own end: data loading and logging included)."""
        if self.imported is None or self.first_step is None or len(self.ends) <= warmup:
            raise RuntimeError(f"the child ran {len(self.ends)} steps; needs more than {warmup}")
        intervals = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)]
        return {
            "import_seconds": self.imported - self.start,
            "setup_seconds": self.first_step - self.imported,
            "first_step_seconds": self.ends[0] - self.first_step,
            "step_seconds": intervals[warmup - 1 :] if warmup else intervals,
            "step_tokens": self.tokens[warmup:] if warmup else self.tokens[1:],
            "losses": [float(x) for x in self.losses],
            "peak_rss_mb": peak_rss_mb(),
        }


def median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def quartiles(values: list[float]) -> tuple[float, float]:
    import statistics

    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def summarize_side(runs: list[dict]) -> dict:
    """One framework's runs of one workload: medians over runs, and their spread.

    ``seconds_per_step``: the median over runs of each run's median step time, with
    the lowest and highest run median (``run_range``) and the pooled quartiles of
    every timed step (``step_quartiles``). ``tokens_per_s``: each run's timed tokens
    over its timed seconds, median over runs. ``peak_rss_mb``: the highest of the runs.
    """
    per_run = [median(r["step_seconds"]) for r in runs]
    pooled = [s for r in runs for s in r["step_seconds"]]
    rates = [sum(r["step_tokens"]) / sum(r["step_seconds"]) for r in runs]
    return {
        "seconds_per_step": {
            "median": round(median(per_run), 5),
            "run_range": [round(min(per_run), 5), round(max(per_run), 5)],
            "step_quartiles": [round(q, 5) for q in quartiles(pooled)],
        },
        "tokens_per_s": round(median(rates), 1),
        "tokens_per_step": round(sum(runs[0]["step_tokens"]) / len(runs[0]["step_tokens"]), 1),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "import_seconds": round(median([r["import_seconds"] for r in runs]), 3),
        "setup_seconds": round(median([r["setup_seconds"] for r in runs]), 3),
        "import_plus_setup_seconds": round(
            median([r["import_seconds"] + r["setup_seconds"] for r in runs]), 3
        ),
        "first_step_seconds": round(median([r["first_step_seconds"] for r in runs]), 3),
        "final_loss": round(runs[0]["losses"][-1], 6),
        "repeats": len(runs),
    }


ONLINE_SPLIT = ("time_generate", "time_score", "time_forward", "time_update")


def online_step_report(metrics: list[dict]) -> dict:
    """Per-step timings of an online stage's metrics.jsonl (PPO, GRPO, ...): medians over
    the steps after the first (it warms up), split into generation / scoring / batched
    forwards / update, with generated and update tokens per second."""
    steady = metrics[1:] or metrics
    med = {k: statistics.median(m[k] for m in steady) for k in ONLINE_SPLIT}
    return {
        "seconds_per_step": round(sum(med.values()), 4),
        "seconds_split": {k.removeprefix("time_"): round(v, 4) for k, v in med.items()},
        "rollout_tokens_per_s": round(
            statistics.median(m["rollout_tokens_per_s"] for m in steady), 1
        ),
        "update_tokens_per_s": round(
            statistics.median(m["update_tokens_per_s"] for m in steady), 1
        ),
        "response_length": round(statistics.mean(m["response_length"] for m in steady), 2),
        "seconds_in_steps": sum(sum(m[k] for k in ONLINE_SPLIT) for m in metrics),
    }
