"""``rlhfkit demo``: the whole RLHF pipeline on the built-in task, as resumable steps.

1. ``tiny/``: a tiny Llama and its BPE tokenizer;
2. ``data/``: noisy demonstrations, training prompts, held-out evaluation prompts;
3. ``sft/``: supervised fine-tuning on the demonstrations;
4. ``labels/``: K responses per prompt sampled from the SFT model, compared on
   helpfulness and on safety (simulated labelers, a file, or the labeling database);
5. ``rm-helpfulness/``, ``rm-safety/``: the two reward models (Llama 2);
6. one folder per algorithm (``ppo/``, ``dpo/``, ...: :mod:`rlhfkit.demo.algorithms`);
7. ``eval/<policy>/``: every policy and the SFT model on held-out prompts;
8. ``report.html``, ``plots/*.png``, ``summary.json``.

Each step writes its outputs to its folder and then ``.done.json`` (the signature of
its settings and inputs, wall and CPU seconds). A rerun with the same ``--out`` skips
steps whose marker matches; a step whose settings or inputs changed runs again, and so
does everything after it. Killed training steps resume from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.demo.algorithms import (
    REGISTRY,
    AlgorithmInputs,
    parse_algorithms,
    resume_or_overwrite,
)
from rlhfkit.demo.labels import LabelFiles, source_kind
from rlhfkit.demo.task import Task, TaskPrompt

log = logging.getLogger("rlhfkit")

MARKER = ".done.json"


@dataclass(frozen=True)
class DemoSettings:
    """The size of each step; :data:`QUICK` and :data:`FULL` are the two recipes."""

    name: str
    sft_steps: int
    label_prompts: int  # training prompts whose samples are compared (60/20/20 kinds)
    label_eval_prompts: int  # held-out prompts, for the reward models' validation
    eval_arithmetic: int  # held-out arithmetic prompts evaluated (every harmful / benign one is)
    n_demos: int = 4000
    k: int = 4  # responses sampled per prompt
    rm_epochs: float = 2.0
    ppo_prompts: int = 1000
    max_kl: float = 5.0  # nats per response: policies further from SFT fail the demo's test
    max_new_tokens: int = 16
    seed: int = 0


QUICK = DemoSettings(
    name="quick", sft_steps=400, label_prompts=400, label_eval_prompts=80, eval_arithmetic=150
)
FULL = DemoSettings(
    name="full", sft_steps=900, label_prompts=1000, label_eval_prompts=200, eval_arithmetic=600
)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def source_digest(fn: Callable[..., Any]) -> str:
    """The step's code is part of its signature: editing a recipe reruns the step."""
    try:
        return digest(inspect.getsource(fn))
    except (OSError, TypeError):  # no source (an interactive session): rely on params
        return ""


def file_digest(paths: Sequence[Path | None]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is not None and p.exists():
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


class Pipeline:
    """Runs steps in order, skipping finished ones; records wall and CPU seconds."""

    def __init__(self, out: Path, console: Any) -> None:
        self.out = out
        self.console = console
        self.digests: dict[str, str] = {}
        self.timings: dict[str, dict[str, Any]] = {}
        self.n_steps = 0
        self.index = 0

    def step(
        self,
        name: str,
        params: dict[str, Any],
        deps: Sequence[str],
        fn: Callable[[Path], dict[str, Any] | None],
        always: bool = False,
        output_digest: Callable[[Path], str] | None = None,
    ) -> dict[str, Any]:
        """Run ``fn(folder)`` unless ``folder/.done.json`` has this step's signature
        (``always``: run regardless; ``output_digest``: what later steps depend on is
        the step's output, not its settings). Returns the marker's ``info``."""
        self.index += 1
        folder = self.out / name
        signature = digest(
            {"step": name, "params": params, "code": source_digest(fn),
             "deps": [self.digests[d] for d in deps]}
        )  # fmt: skip
        marker = folder / MARKER
        head = f"[bold cyan][{self.index}/{self.n_steps}][/] {name}"
        if marker.exists() and not always:
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("signature") == signature:
                self.digests[name] = done["digest"]
                self.timings[name] = {**done["timing"], "reused": True}
                self.console.print(
                    f"{head}: done before ({done['timing']['wall_s']:.0f} s), reused"
                )
                return done.get("info", {})
            self.console.print(f"{head}: settings or inputs changed, running again")
            shutil.rmtree(folder)
        elif marker.exists():
            marker.unlink()
        self.console.print(f"{head}")
        folder.mkdir(parents=True, exist_ok=True)
        wall, cpu = time.perf_counter(), time.process_time()
        info = fn(folder) or {}
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only a killed step needs them
        timing = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
        out_digest = digest([signature, output_digest(folder)]) if output_digest else signature
        done = {"step": name, "signature": signature, "digest": out_digest, "timing": timing,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "info": info}  # fmt: skip
        marker.write_text(json.dumps(done, indent=2, default=str), encoding="utf-8")
        self.digests[name] = out_digest
        self.timings[name] = {**timing, "reused": False}
        self.console.print(
            f"    {name}: {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU"
        )
        return info


def prompt_rows(task: Task, prompts: Sequence[TaskPrompt], reference: bool = False) -> list[dict]:
    """Prompt records with ``kind`` / ``answer`` / ``unsafe`` (and the ideal ``reference``
    response, for BLEU / ROUGE-L)."""
    rows = []
    for p in prompts:
        row: dict[str, Any] = {"prompt": p.text, "kind": p.kind, "answer": p.answer,
                               "unsafe": p.kind == "harmful"}  # fmt: skip
        if reference:
            row["reference"] = task.concise(p)
        rows.append(row)
    return rows


def eval_prompts(task: Task, n_arithmetic: int, seed: int) -> list[TaskPrompt]:
    """Every held-out harmful and benign prompt and ``n_arithmetic`` held-out arithmetic ones."""
    import random

    arith = task.prompts("heldout", "arithmetic")
    if n_arithmetic < len(arith):
        arith = random.Random(seed).sample(arith, n_arithmetic)
    return [*arith, *task.prompts("heldout", "harmful"), *task.prompts("heldout", "benign")]


def quiet_libraries() -> None:
    """No per-file progress bars or load reports from transformers, no notes on tied
    weights from accelerate (the demo shows its own progress; a reward model's new
    head is expected)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # the tiny models tie their input and output embeddings: accelerate's checkpoints
    # drop the shared copy and say so at every save
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def run_demo(
    out: str | Path,
    quick: bool = False,
    algorithms: str = "ppo,dpo",
    labels: str = "simulated",
    console: Any = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Run (or resume) the demo in ``out``; returns the summary (also ``summary.json``).

    ``threads``: torch's intra-op threads while the demo runs (restored after; None
    leaves torch's default). One thread is the default: the tiny models gain little
    from more, and on a machine other processes share, two threads each collapse -
    SFT steps measured 2.5-3x slower with 2 threads than with 1 under a load of 6 on
    2 cores (docs/demo.md)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(Path(out), quick, algorithms, labels, console)
    finally:
        torch.set_num_threads(before)


def _run_demo(out: Path, quick: bool, algorithms: str, labels: str, console: Any) -> dict[str, Any]:
    from rich.console import Console

    names = parse_algorithms(algorithms)
    source_kind(labels)  # a missing --labels file fails before anything runs
    quiet_libraries()
    out.mkdir(parents=True, exist_ok=True)
    demo = Demo(out, QUICK if quick else FULL, console or Console())
    wall, cpu = time.perf_counter(), time.process_time()
    demo.pipe.n_steps = 6 + len(names) + (1 + len(names))
    demo.console.print(
        f"[bold]rlhfkit demo[/] ({demo.s.name}): SFT -> comparisons ({labels}) -> reward "
        f"models -> {', '.join(names)} -> evaluation, in {out}"
    )
    demo.model_and_data()
    counts = demo.comparisons(labels)
    demo.reward_models()
    policies = {"sft": demo.sft_dir, **{name: demo.algorithm(name) for name in names}}
    results = evaluate_all(demo.pipe, policies, out, demo.task, demo.s, demo.console)

    from rlhfkit.demo.report import print_summary, write_report

    summary = {
        "settings": dataclasses.asdict(demo.s),
        "labels": labels,
        "algorithms": names,
        "comparisons": counts,
        "results": {k: v.to_dict() for k, v in results.items()},
        "timings": demo.pipe.timings,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }
    report = write_report(out, summary, demo.task)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print_summary(demo.console, summary)
    demo.console.print(f"report: {report}")
    return summary


class Demo:
    """The demo's steps on one run folder; each method runs (or reuses) its steps."""

    def __init__(self, out: Path, settings: DemoSettings, console: Any) -> None:
        self.out, self.s, self.console = out, settings, console
        self.task = Task()
        self.pipe = Pipeline(out, console)
        self.sft_dir = out / "sft" / "final"
        self.rm_dirs = (out / "rm-helpfulness" / "final", out / "rm-safety" / "final")
        self.files: LabelFiles | None = None

    # 1-3: model, data, SFT
    def model_and_data(self) -> None:
        s, task, out = self.s, self.task, self.out
        spec = {"arch": "llama", "vocab_size": 512, "hidden": 128, "layers": 4}

        def tiny(folder: Path) -> None:
            from rlhfkit.models.tiny import TinySpec, build_tiny

            build_tiny(folder, TinySpec(**spec), task.corpus())  # type: ignore[arg-type]

        def data(folder: Path) -> dict:
            from rlhfkit.demo.onpolicy import mixed_prompts

            demos = task.demonstrations(s.n_demos, seed=s.seed)
            rows = [{"messages": [m.as_dict() for m in r.messages]} for r in demos]
            write_jsonl(folder / "sft.jsonl", rows)
            train = mixed_prompts(task, "train", s.ppo_prompts, s.seed + 2)
            write_jsonl(folder / "prompts.jsonl", prompt_rows(task, train))
            held = eval_prompts(task, s.eval_arithmetic, s.seed)
            write_jsonl(folder / "heldout.jsonl", prompt_rows(task, held, reference=True))
            return {"demonstrations": len(demos), "prompts": len(train), "heldout": len(held)}

        def sft(folder: Path) -> dict:
            from rlhfkit.config import SFTConfig
            from rlhfkit.training.stages.sft import run_sft

            cfg = SFTConfig(
                model=str(out / "tiny"), data=str(out / "data" / "sft.jsonl"), out=str(folder),
                learning_rate=2e-3, batch_size=64, max_steps=s.sft_steps, warmup_steps=30,
                log_every=25, eval_every=150, max_length=64, seed=s.seed, save_every=100,
                keep_checkpoints=1,
            )  # fmt: skip
            return {"eval": run_sft(cfg, **resume_or_overwrite(folder)).eval}

        self.pipe.step("tiny", spec, [], tiny)
        data_params = [s.n_demos, s.ppo_prompts, s.eval_arithmetic, s.seed]
        self.pipe.step("data", {"sizes": data_params}, [], data)
        self.pipe.step("sft", {"steps": s.sft_steps}, ["tiny", "data"], sft)

    # 4: comparisons
    def comparisons(self, labels: str) -> dict[str, int]:
        from rlhfkit.demo.onpolicy import mixed_prompts

        s, task, console, sft_dir = self.s, self.task, self.console, self.sft_dir
        prompts = mixed_prompts(task, "train", s.label_prompts, s.seed)
        held = mixed_prompts(task, "heldout", s.label_eval_prompts, s.seed + 1)

        def sample(batch: Sequence[TaskPrompt]) -> list[list[str]]:
            from rlhfkit.demo.onpolicy import sample_responses

            what = f"sampling {s.k} responses per prompt"
            with bar(console, what, len(batch) * s.k) as advance:
                return sample_responses(sft_dir, batch, k=s.k, seed=s.seed,
                                        max_new_tokens=s.max_new_tokens, progress=advance)  # fmt: skip

        def compare(folder: Path) -> dict:
            from rlhfkit.demo.labels import collect

            files, counts = collect(labels, task, sample, prompts, held, folder, s.seed)
            console.print(f"    comparisons: {counts}")
            return {"counts": counts, "files": dataclasses.asdict(files)}

        kind = source_kind(labels)
        params: dict[str, Any] = {
            "labels": labels,
            "n": [s.label_prompts, s.label_eval_prompts, s.k],
        }
        if kind == "file":
            params["file"] = file_digest([Path(labels)])
        info = self.pipe.step(
            "labels", params, ["sft"], compare, always=kind == "db",
            output_digest=lambda f: file_digest(sorted(f.glob("*.jsonl"))),
        )  # fmt: skip
        self.files = LabelFiles(**{k: Path(v) if v else None for k, v in info["files"].items()})
        return info["counts"]

    # 5: reward models
    def reward_models(self) -> None:
        for dim in ("helpfulness", "safety"):
            self.pipe.step(f"rm-{dim}", {"epochs": self.s.rm_epochs}, ["labels"], self._rm(dim))

    def _rm(self, dimension: str) -> Callable[[Path], dict]:
        s, files, sft_dir = self.s, self.files, self.sft_dir
        assert files is not None

        def train(folder: Path) -> dict:
            from rlhfkit.config import RMConfig
            from rlhfkit.training.stages.reward import run_rm

            held = getattr(files, f"{dimension}_eval")
            cfg = RMConfig(
                model=str(sft_dir), data=str(getattr(files, dimension)), out=str(folder),
                eval_data=str(held) if held else None, learning_rate=3e-4, batch_size=32,
                max_length=64, seed=s.seed, epochs=s.rm_epochs, eval_every=10,
                eval_on_start=True, log_every=10, save_every=50, keep_checkpoints=1,
            )  # fmt: skip
            result = run_rm(cfg, **resume_or_overwrite(folder))
            best = result.best or result.eval
            return {"accuracy": best.get("eval_accuracy"), "step": best.get("step")}

        return train

    # 6: one algorithm
    def algorithm(self, name: str) -> Path:
        out, files = self.out, self.files
        assert files is not None
        inputs = AlgorithmInputs(
            sft=self.sft_dir, sft_data=out / "data" / "sft.jsonl",
            preferences=files.preferences, preferences_eval=files.preferences_eval,
            helpfulness=files.helpfulness, safety=files.safety, reward_models=self.rm_dirs,
            prompts=out / "data" / "prompts.jsonl", eval_prompts=out / "data" / "heldout.jsonl",
            out=out / name, quick=self.s.name == "quick", max_kl=self.s.max_kl, seed=self.s.seed,
        )  # fmt: skip

        def train(folder: Path) -> dict:
            return {"policy": str(REGISTRY[name](inputs))}

        recipe = {"quick": inputs.quick, "code": source_digest(REGISTRY[name])}
        deps = ["labels", "rm-helpfulness", "rm-safety"]
        return Path(self.pipe.step(name, recipe, deps, train)["policy"])


def evaluate_all(
    pipe: Pipeline, policies: dict[str, Path], out: Path, task: Task, s: DemoSettings, console: Any
) -> dict[str, Any]:
    """``eval/<policy>/``: SFT first (its responses are every other policy's reference)."""
    from rlhfkit.data.load import load_records
    from rlhfkit.evaluation.evaluate import EvalResult, EvalSettings, evaluate, write_eval
    from rlhfkit.training.tracking import read_metrics

    records = load_records(out / "data" / "heldout.jsonl", "prompt").records
    settings = EvalSettings(max_new_tokens=s.max_new_tokens, seed=s.seed)
    sft_dir = policies["sft"]
    results: dict[str, EvalResult] = {}
    for name, policy in policies.items():
        reference = None if name == "sft" else sft_dir

        def run(
            folder: Path,
            policy: Path = policy,
            reference: Path | None = reference,
            name: str = name,
        ) -> dict:
            cache = None
            if reference is not None:
                cache = [
                    r["response"] for r in read_metrics(out / "eval" / "sft" / "responses.jsonl")
                ]
            with bar(console, f"{name}: responses", len(records)) as advance:
                result, rows = evaluate(
                    policy, records, reference=reference, task=task, settings=settings,  # type: ignore[arg-type]
                    reference_texts_cache=cache,
                    progress=lambda what, done, total: advance(0, done, f"{name}: {what}"),
                )  # fmt: skip
            write_eval(folder, result, rows)
            return {}

        deps = ["data", name] + ([] if name == "sft" else ["eval/sft"])
        pipe.step(f"eval/{name}", {"settings": dataclasses.asdict(settings)}, deps, run)
        results[name] = EvalResult.from_dict(
            json.loads((out / "eval" / name / "eval.json").read_text(encoding="utf-8"))
        )
    return results


class bar:
    """A rich progress bar as a context manager yielding ``advance(n, completed=None)``."""

    def __init__(self, console: Any, description: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("    {task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console,
        )  # fmt: skip
        self.task = self.progress.add_task(description, total=total)

    def __enter__(self) -> Callable[..., None]:
        self.progress.start()

        def advance(n: int, completed: int | None = None, description: str | None = None) -> None:
            if completed is not None:
                self.progress.update(self.task, completed=completed)
            else:
                self.progress.advance(self.task, n)
            if description is not None:
                self.progress.update(self.task, description=description)

        return advance

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
