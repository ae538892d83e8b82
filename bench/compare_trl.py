"""rlhfkit against TRL on the same work, side by side; prints one JSON object to stdout.

Usage (after ``make bench-setup``, which builds TRL's own venv in ``bench/.trl-venv``)::

    python bench/compare_trl.py [--repeats R] [--steps N] [--batch-size B]
                                [--workloads sft,rm,dpo-live,dpo-precomputed,grpo,rloo]
                                [--online-steps N] [--online-warmup W] [--out DIR]

What is compared. One tiny llama built once by ``rlhfkit tiny`` (vocab 512, hidden
128, 4 layers, seed 0) and loaded from that folder by both sides; the built-in
task's data (2000 demonstrations for SFT, 2000 synthetic helpfulness pairs for RM
and DPO), written once as JSONL in each framework's format (rlhfkit records;
TRL's conversational prompt / completion and prompt / chosen / rejected columns,
so TRL applies the same chat template). The same hyper-parameters on both sides:
batch B pairs or examples, max length 64 (nothing is truncated), N optimizer
steps, AdamW (torch's fused kernel on both sides, TRL's own default; betas
0.9 / 0.999, eps 1e-8, no weight decay), cosine schedule without warm-up,
gradient clipping at 1.0, seed 0, ``--threads`` torch threads (default 1: on a
2-core machine shared with other work, one thread per side is far steadier
than two fighting over the cores), fp32 (TRL's defaults of bf16 autocast and
gradient checkpointing are turned off: rlhfkit uses neither), no packing,
right padding to the longest row of the batch, dataloader workers 0, no
evaluation, no checkpoint, one log line at the end. TRL's data order is set to
rlhfkit's (``EpochSampler``: ``randperm`` seeded with ``seed * 100003 + epoch``), so
both sides train on the same batches and their loss curves can be compared step
by step (``loss_curve_max_abs_diff``); N * B must fit in one epoch.

* ``sft``: ``run_sft`` vs ``SFTTrainer`` (loss on the completion tokens only),
  lr 1e-3.
* ``rm``: ``run_rm`` (pairwise loss) vs ``RewardTrainer``, lr 1e-4; both load the
  reward model with ``AutoModelForSequenceClassification`` after seeding with 0,
  so the new heads start equal.
* ``dpo-live``: ``run_dpo`` vs ``DPOTrainer``, sigmoid loss, beta 0.1, lr 1e-5,
  a frozen reference copy scoring every batch on both sides.
* ``dpo-precomputed``: the same with the reference log-probs computed in one pass
  before training (``precompute_ref`` / ``precompute_ref_log_probs``); that pass
  is part of set-up.
* ``grpo``: ``run_grpo`` vs ``GRPOTrainer``; ``rloo``: ``run_grpo`` with
  ``advantage_estimator=rloo`` vs ``RLOOTrainer``. The built-in task's arithmetic
  prompts in rlhfkit's prompt order (TRL reads them in that order), 8 prompts x 8
  samples per step, at most 24 new tokens at temperature 1, one optimizer step per
  rollout, lr 1e-5 linear, the exact-answer reward (rlhfkit's built-in; restated
  for TRL's signature), ``--online-steps`` steps. GRPO: loss_type grpo,
  scale_rewards group, beta 0.04 on both sides; RLOO: beta 0 (TRL's RLOO loss is
  per sequence, rlhfkit's per token: ``dr_grpo`` gives proportional gradients).
  Samples differ, so ``mean_reward`` replaces the loss and its curve, and tokens
  are generated tokens. TRL 1.16 has no PPO trainer, so PPO is not compared.

Method. Every run is a fresh process with the framework's own venv python
(rlhfkit: this interpreter; TRL: ``--trl-python``), so imports and peak memory are
per framework. The two sides alternate (rlhfkit first in even repeats, TRL first
in odd ones), ``--repeats`` times per workload. In each child:

* ``import_seconds``: importing the framework's trainer (and torch, transformers
  ... that it pulls in), from the start of the child's main code.
* ``setup_seconds``: from then to the start of the first optimizer step: data
  loading and tokenization, model (and reference) loading, optimizer, and the
  precomputed reference pass.
* ``seconds_per_step``: the time from the end of one step to the end of the next
  (data loading, forward, backward, optimizer and logging), leaving out the first
  ``--warmup`` steps; median over the run, then median over runs, with the run
  range and the pooled step quartiles as the spread.
* ``tokens_per_s``: the attention-mask tokens of the timed steps over their time.
* ``peak_rss_mb``: the child's ``ru_maxrss``; ``final_loss``: the last step's loss.

``ratio`` is rlhfkit / TRL for every number (below 1 is better for time and
memory); ``throughput_x`` is TRL's seconds per step over rlhfkit's (above 1: rlhfkit
is faster); ``pair_throughput_x`` the same ratio per pair of runs (run i of each
side, one right after the other), its median and range. ``load_avg_1m`` is sampled
before every run: on a shared machine, other work skews the timings, so look at it
first.

rlhfkit's stages tune glibc's allocator in their own process (``tune_malloc``: freed
activations' pages are kept for the next step instead of faulted in again); TRL runs
with glibc's defaults unless ``--trl-malloc`` gives it the same settings through the
environment, which tells that gain apart from the rest.

Progress goes to stderr; stdout carries the JSON only. Exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness  # bench/ is on sys.path when this file is run as a script

HERE = Path(__file__).resolve().parent
DEFAULT_TRL_PYTHON = HERE / ".trl-venv" / "bin" / "python"
N_RECORDS = 2000
MAX_LENGTH = 64
SEED = 0
H = harness.Bench("compare", __file__, "rlhfkit")


@dataclass(frozen=True)
class Workload:
    """One row of the comparison: which data it trains on, its learning rate, and
    the stage-specific settings of each side (rlhfkit config keys; TRL config keys)."""

    name: str
    data: str  # "sft", "preference" or "prompts" (online: GRPO / RLOO)
    learning_rate: float
    rlhfkit_stage: str  # "sft" | "rm" | "dpo" | "grpo"
    rlhfkit: dict
    trl: dict

    @property
    def online(self) -> bool:
        return self.data == "prompts"


WORKLOADS = {
    w.name: w
    for w in (
        Workload("sft", "sft", 1e-3, "sft", {}, {}),
        Workload("rm", "preference", 1e-4, "rm", {"loss": "pairwise"}, {}),
        Workload(
            "dpo-live",
            "preference",
            1e-5,
            "dpo",
            {"loss": "sigmoid", "beta": 0.1, "precompute_ref": False},
            {"loss_type": ["sigmoid"], "beta": 0.1, "precompute_ref_log_probs": False},
        ),
        Workload(
            "dpo-precomputed",
            "preference",
            1e-5,
            "dpo",
            {"loss": "sigmoid", "beta": 0.1, "precompute_ref": True},
            {"loss_type": ["sigmoid"], "beta": 0.1, "precompute_ref_log_probs": True},
        ),
        # Online: the same prompts per step, G, generation length, temperature, lr, beta
        # and loss on both sides; samples differ (each side draws its own), so the
        # loss curves are not compared, the mean reward is reported instead.
        Workload(
            "grpo",
            "prompts",
            1e-5,
            "grpo",
            {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04},
            {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04},
        ),
        # TRL's RLOO loss is per sequence (ratio of sequence probabilities, KL folded
        # into the reward); rlhfkit's per token. At beta 0 and one update per rollout
        # their gradients are proportional with loss_type dr_grpo: (1/B) sum_i A_i
        # sum_t grad log p (TRL) vs the same / max_new_tokens (rlhfkit). Same work.
        Workload(
            "rloo",
            "prompts",
            1e-5,
            "grpo",
            {"advantage_estimator": "rloo", "loss_type": "dr_grpo", "beta": 0.0},
            {"beta": 0.0, "normalize_advantages": False},
        ),
    )
}

# rlhfkit stage -> (config class, module, runner)
RLHFKIT_STAGES = {
    "sft": ("SFTConfig", "rlhfkit.training.stages.sft", "run_sft"),
    "rm": ("RMConfig", "rlhfkit.training.stages.reward", "run_rm"),
    "dpo": ("DPOConfig", "rlhfkit.training.stages.dpo", "run_dpo"),
    "grpo": ("GRPOConfig", "rlhfkit.training.stages.grpo", "run_grpo"),
}

# Online workloads (GRPO, RLOO): prompts per step, samples per prompt, generated tokens.
ONLINE = {"prompts_per_step": 8, "num_generations": 8, "max_new_tokens": 24, "temperature": 1.0}


# ---- parent: inputs ---------------------------------------------------------------


def build_model(work: Path) -> Path:
    """The tiny model, built once by the ``rlhfkit tiny`` command."""
    model = work / "tiny-llama"
    if not (model / "config.json").exists():
        H.say(f"building the tiny model with `rlhfkit tiny` in {model}")
        cli = Path(sys.executable).with_name("rlhfkit")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "rlhfkit"]
        subprocess.run([*cmd, "tiny", "--out", str(model)], check=True, stdout=sys.stderr)
    return model


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_data(work: Path) -> dict[str, dict[str, str]]:
    """The built-in task's data, in rlhfkit's and in TRL's format: kind -> side -> path."""
    from rlhfkit.demo.preferences import synthetic_preferences
    from rlhfkit.demo.task import Task

    task = Task()
    demos = [[m.as_dict() for m in r.messages] for r in task.demonstrations(N_RECORDS, seed=0)]
    prefs = [r.to_dict() for r in synthetic_preferences(task, "train", n=N_RECORDS, seed=0)]

    def reply(text: str) -> list[dict]:
        return [{"role": "assistant", "content": text}]

    d = work / "data"
    # The arithmetic prompts in rlhfkit's prompt order (PromptSchedule: randperm seeded
    # with seed * 100003 + epoch); TRL reads them in that order (shuffle_dataset off).
    arith = [
        {"prompt": r.prompt[0].content, **r.extra}
        for r in task.prompt_records("train", "arithmetic")
    ]
    arith = [arith[i] for i in rlhfkit_order(len(arith), SEED)]
    return {
        "prompts": {
            "rlhfkit": write_jsonl(d / "prompts.jsonl", arith),
            "trl": write_jsonl(
                d / "prompts-trl.jsonl",
                [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in arith],
            ),
        },
        "sft": {
            "rlhfkit": write_jsonl(d / "sft.jsonl", [{"messages": m} for m in demos]),
            "trl": write_jsonl(
                d / "sft-trl.jsonl", [{"prompt": m[:-1], "completion": m[-1:]} for m in demos]
            ),
        },
        "preference": {
            "rlhfkit": write_jsonl(d / "prefs.jsonl", prefs),
            "trl": write_jsonl(
                d / "prefs-trl.jsonl",
                [
                    {
                        "prompt": p["prompt"],
                        "chosen": reply(p["chosen"]),
                        "rejected": reply(p["rejected"]),
                    }
                    for p in prefs
                ],
            ),
        },
    }


# ---- children: one training run each ------------------------------------------------


def rlhfkit_child(spec: dict, clock: harness.StepClock) -> None:
    """rlhfkit's stage runner, with ``Trainer.train_step`` wrapped by the clock."""
    import importlib

    cls_name, module, runner = RLHFKIT_STAGES[spec["rlhfkit_stage"]]
    from rlhfkit import config as config_mod
    from rlhfkit.training.loop import Trainer

    run = getattr(importlib.import_module(module), runner)
    clock.mark_imported()
    common = {
        "model": spec["model"],
        "out": spec["out"],
        "max_steps": spec["steps"],
        "learning_rate": spec["learning_rate"],
        "seed": SEED,
        "log_every": spec["steps"],
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "warmup_steps": 0,
    }
    if spec["online"]:
        from rlhfkit.training.online import OnlineRun as run_cls

        o = spec["online_conf"]
        rows = o["prompts_per_step"] * o["num_generations"]
        cfg = config_mod.GRPOConfig(
            **common,
            prompts=spec["data"],
            reward_fn=["rlhfkit.rewards:exact_answer"],
            rollout_batch_size=o["prompts_per_step"],
            num_generations=o["num_generations"],
            batch_size=rows,  # one optimizer step per rollout, as TRL's
            max_new_tokens=o["max_new_tokens"],
            temperature=o["temperature"],
            scheduler="linear",
            sample_every=10**9,
            **spec["rlhfkit"],
        )

        def measure(stats: dict) -> tuple[float, float]:  # generated tokens, mean reward
            return stats["response_length"] * rows, stats["score_mean"]
    else:
        run_cls = Trainer
        cfg = getattr(config_mod, cls_name)(
            **common,
            data=spec["data"],
            batch_size=spec["batch_size"],
            max_length=MAX_LENGTH,
            eval_fraction=0.0,
            **spec["rlhfkit"],
        )

        def measure(stats: dict) -> tuple[float, float]:
            return stats["tokens"], stats["loss"]

    cfg.validate()
    step = run_cls.train_step

    def timed_step(self: Any) -> dict:
        clock.step_begin()
        stats = step(self)
        clock.step_end(*measure(stats))
        return stats

    run_cls.train_step = timed_step  # type: ignore[method-assign]
    run(cfg, overwrite=True)


def trl_child(spec: dict, clock: harness.StepClock) -> None:
    """TRL's trainer for the workload, configured like rlhfkit (see the module doc)."""
    import torch
    import transformers
    import trl
    from datasets import Dataset

    clock.mark_imported()
    stage = spec["rlhfkit_stage"]
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = transformers.AutoTokenizer.from_pretrained(spec["model"])
    common = {
        "output_dir": spec["out"],
        "per_device_train_batch_size": spec["batch_size"],
        "max_steps": spec["steps"],
        "learning_rate": spec["learning_rate"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "seed": SEED,
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "optim": "adamw_torch_fused",  # what rlhfkit uses (and TRL defaults to)
        "dataloader_num_workers": 0,
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": spec["steps"],
        "disable_tqdm": True,
        "use_cpu": True,
        **({} if spec["online"] else {"max_length": MAX_LENGTH}),
        **spec["trl"],
    }
    if spec["online"]:
        trl_online(spec, clock, dataset, tokenizer, common)
        return
    if stage == "rm":
        transformers.set_seed(SEED)  # as rlhfkit seeds before loading: equal new heads
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            spec["model"], num_labels=1, dtype=torch.float32
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        trainer_cls, args = trl.RewardTrainer, trl.RewardConfig(**common)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            spec["model"], dtype=torch.float32
        )
        if stage == "sft":
            trainer_cls, args = trl.SFTTrainer, trl.SFTConfig(**common)
        else:
            trainer_cls, args = trl.DPOTrainer, trl.DPOConfig(**common)

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            clock.step_begin()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.step_end(batch_tokens[len(clock.ends)], step_loss[-1])

    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    batch_tokens: list[int] = []  # per collated batch; batch i is step i (no accumulation)
    step_loss: list[Any] = []
    collate = trainer.data_collator

    def counting_collate(examples: list[dict]) -> dict:
        batch = collate(examples)
        batch_tokens.append(int(batch["attention_mask"].sum()))
        return batch

    compute_loss = trainer.compute_loss

    def recording_loss(*a: Any, **k: Any) -> Any:
        loss = compute_loss(*a, **k)
        step_loss.append((loss[0] if isinstance(loss, tuple) else loss).detach())
        return loss

    order = rlhfkit_order(len(dataset), SEED)
    trainer.data_collator = counting_collate
    trainer.compute_loss = recording_loss  # type: ignore[method-assign]
    trainer._get_train_sampler = lambda *a, **k: order  # type: ignore[method-assign]
    trainer.train()


# rlhfkit.rewards:exact_answer, restated for TRL's reward-function signature (TRL's venv
# has no rlhfkit): 1 when the last number of the completion equals the record's answer.
_NUMBER = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?"


def _parse_number(text: Any) -> Any:
    import math
    from fractions import Fraction

    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(repr(text)) if math.isfinite(text) else None
    try:
        return Fraction(str(text).strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def exact_answer_trl(completions: list, answer: list | None = None, **_: Any) -> list[float]:
    import re

    out = []
    for c, want in zip(completions, answer or [None] * len(completions), strict=True):
        text = c[-1]["content"] if isinstance(c, list) else c
        target = _parse_number(want)
        found = re.findall(_NUMBER, text) if target is not None else []
        got = _parse_number(found[-1]) if found else None
        out.append(1.0 if got is not None and got == target else 0.0)
    return out


def trl_online(spec: dict, clock: harness.StepClock, dataset: Any, tokenizer: Any, common: dict):
    """TRL's GRPOTrainer (or RLOOTrainer) configured like ``run_grpo`` (see the module doc)."""
    import transformers
    import trl

    o = spec["online_conf"]
    rows = o["prompts_per_step"] * o["num_generations"]
    args = {
        **common,
        "per_device_train_batch_size": rows,  # completions per optimizer step
        "gradient_accumulation_steps": 1,
        "num_generations": o["num_generations"],
        "max_completion_length": o["max_new_tokens"],
        "temperature": o["temperature"],
        "top_p": 1.0,
        "top_k": 0,
        "num_iterations": 1,
        "epsilon": 0.2,
        "shuffle_dataset": False,  # the data file is already in rlhfkit's prompt order
        "lr_scheduler_type": "linear",
        "log_completions": False,
    }
    rloo = spec["name"] == "rloo"
    config = (trl.RLOOConfig if rloo else trl.GRPOConfig)(**args)
    step_tokens: list[float] = []  # generated tokens (EOS included) and mean reward per step
    step_reward: list[float] = []

    def exact_answer(completions: list, completion_ids: list, **kw: Any) -> list[float]:
        scores = exact_answer_trl(completions, **kw)
        step_tokens.append(float(sum(len(ids) for ids in completion_ids)))
        step_reward.append(sum(scores) / len(scores))
        return scores

    class Clock(transformers.TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            clock.step_begin()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            clock.step_end(step_tokens[-1], step_reward[-1])

    trainer_cls = trl.RLOOTrainer if rloo else trl.GRPOTrainer
    trainer = trainer_cls(
        model=spec["model"],
        reward_funcs=exact_answer,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()


def rlhfkit_order(n: int, seed: int, epoch: int = 0) -> list[int]:
    """The data order of ``rlhfkit.training.loop.EpochSampler(n, seed)`` in ``epoch``
    (restated here: TRL's venv has no rlhfkit)."""
    import torch

    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


CHILDREN: dict[str, Callable[[dict, harness.StepClock], None]] = {
    "rlhfkit": rlhfkit_child,
    "trl": trl_child,
}


def child_main(args: argparse.Namespace) -> int:
    clock = harness.StepClock()
    spec = json.loads(args.child_config)
    CHILDREN[spec["side"]](spec, clock)
    import torch

    out = clock.result(spec["warmup"])
    out["torch_threads"] = torch.get_num_threads()
    Path(args.child_result).write_text(json.dumps(out), encoding="utf-8")
    return 0


# ---- parent: alternate, repeat, summarise ---------------------------------------------


def side_versions(python: str) -> dict:
    code = (
        "import json, platform; from importlib.metadata import version as v\n"
        "names = ('torch', 'transformers', 'accelerate', 'trl', 'rlhfkit')\n"
        "def get(n):\n try: return v(n)\n except Exception: return None\n"
        "print(json.dumps({'python': platform.python_version(), **{n: get(n) for n in names}}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def pair_throughput(side_runs: dict[str, list[dict]]) -> dict:
    """TRL's median step time over rlhfkit's, per pair of runs (run i of each side, run
    one after the other): the median and range over pairs. A pair shares the machine's
    state of those minutes, so the spread shows how far noise moves one comparison."""
    pairs = [
        harness.median(t["step_seconds"]) / harness.median(r["step_seconds"])
        for r, t in zip(side_runs["rlhfkit"], side_runs["trl"], strict=True)
    ]
    return {
        "median": round(harness.median(pairs), 3),
        "range": [round(min(pairs), 3), round(max(pairs), 3)],
    }


def compare(side_runs: dict[str, list[dict]], online: bool = False) -> dict:
    """Both sides' summaries, the rlhfkit / TRL ratios and the loss-curve agreement.

    Online workloads: each side samples its own responses, so there is no loss curve
    to compare; the clock's "loss" is the step's mean reward, reported as
    ``mean_reward`` (over every step of every run) instead of ``final_loss``, and
    ``tokens_per_s`` counts generated tokens (EOS included)."""
    ours, theirs = (harness.summarize_side(side_runs[s]) for s in ("rlhfkit", "trl"))
    if online:
        for summary, side in ((ours, "rlhfkit"), (theirs, "trl")):
            rewards = [x for r in side_runs[side] for x in r["losses"]]
            del summary["final_loss"]
            summary["mean_reward"] = round(sum(rewards) / len(rewards), 4)
    keys = (
        "tokens_per_s",
        "peak_rss_mb",
        "import_seconds",
        "setup_seconds",
        "import_plus_setup_seconds",
        "final_loss",
    )
    ratio = {
        "seconds_per_step": ours["seconds_per_step"]["median"]
        / theirs["seconds_per_step"]["median"]
    }
    ratio.update({k: ours[k] / theirs[k] for k in keys if theirs.get(k)})
    a, b = side_runs["rlhfkit"][0]["losses"], side_runs["trl"][0]["losses"]
    diff = None if online else round(max(abs(x - y) for x, y in zip(a, b, strict=True)), 6)
    return {
        "rlhfkit": ours,
        "trl": theirs,
        "ratio": {k: round(v, 3) for k, v in ratio.items()},
        "throughput_x": round(1.0 / ratio["seconds_per_step"], 3),
        "pair_throughput_x": pair_throughput(side_runs),
        "loss_curve_max_abs_diff": diff,
    }


def bench(args: argparse.Namespace) -> dict:
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    trl_python = str(args.trl_python)
    if not Path(trl_python).exists():
        raise FileNotFoundError(f"{trl_python}: no TRL venv; run `make bench-setup` first")
    pythons = {"rlhfkit": sys.executable, "trl": trl_python}
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    envs = {"rlhfkit": env, "trl": dict(env)}
    if args.trl_malloc:  # what rlhfkit's tune_malloc sets in its own process
        from rlhfkit.training.allocator import MMAP_THRESHOLD, TRIM_THRESHOLD

        envs["trl"].update(
            MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(TRIM_THRESHOLD)
        )
    started = time.perf_counter()
    load_start = harness.load_avg_1m()
    with H.workdir(args.out) as work:
        model = build_model(work)
        data = write_data(work)
        runs: dict[str, dict[str, list[dict]]] = {n: {"rlhfkit": [], "trl": []} for n in names}
        loads: list[float] = []
        for r in range(args.repeats):
            for name in names:
                w = WORKLOADS[name]
                sides = ("rlhfkit", "trl") if r % 2 == 0 else ("trl", "rlhfkit")
                for side in sides:
                    label = f"[{r + 1}/{args.repeats}] {name} {side}"
                    loads.append(harness.load_avg_1m())
                    H.say(f"{label} (load {loads[-1]:.2f})")
                    spec = {
                        "name": name,
                        "online": w.online,
                        "online_conf": ONLINE,
                        "side": side,
                        "rlhfkit_stage": w.rlhfkit_stage,
                        "rlhfkit": w.rlhfkit,
                        "trl": w.trl,
                        "model": str(model),
                        "data": data[w.data][side],
                        "out": str(work / "runs" / f"{name}-{side}-{r}"),
                        "steps": args.online_steps if w.online else args.steps,
                        "warmup": args.online_warmup if w.online else args.warmup,
                        "batch_size": args.batch_size,
                        "learning_rate": w.learning_rate,
                    }
                    result = work / f"{name}-{side}-{r}.json"
                    cmd = [pythons[side], str(H.script), "--child-config", json.dumps(spec)]
                    cmd += ["--child-result", str(result)]
                    runs[name][side].append(harness.run_json_child(cmd, result, label, envs[side]))
        threads = runs[names[0]]["rlhfkit"][0]["torch_threads"]
    return {
        "workloads": {n: compare(runs[n], WORKLOADS[n].online) for n in names},
        "config": {
            "steps": args.steps,
            "warmup_steps_left_out": args.warmup,
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "max_length": MAX_LENGTH,
            "records": N_RECORDS,
            "learning_rate": {n: WORKLOADS[n].learning_rate for n in names},
            "online": {
                **ONLINE,
                "steps": args.online_steps,
                "warmup_steps_left_out": args.online_warmup,
            },
            "precision": "fp32",
            "torch_threads": threads,
            "trl_malloc": args.trl_malloc,
        },
        "versions": {"rlhfkit": side_versions(sys.executable), "trl": side_versions(trl_python)},
        "machine": harness.machine(),
        "load_avg_1m": {
            "start": round(load_start, 2),
            "median_before_runs": round(harness.median(loads), 2),
            "max_before_runs": round(max(loads), 2),
            "end": round(harness.load_avg_1m(), 2),
        },
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per side and workload (3)")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per run (40)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of timing (5)")
    p.add_argument("--batch-size", type=int, default=32, help="examples or pairs per step (32)")
    p.add_argument(
        "--online-steps", type=int, default=30, help="steps of the GRPO / RLOO runs (30)"
    )
    p.add_argument(
        "--online-warmup", type=int, default=3, help="first online steps left out of timing (3)"
    )
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument(
        "--trl-malloc",
        action="store_true",
        help="run TRL under the glibc malloc settings rlhfkit gives itself (tune_malloc), "
        "to tell that gain from the rest",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of both sides (1: steadiest on a shared machine; 0: torch's default)",
    )
    p.add_argument("--trl-python", default=str(DEFAULT_TRL_PYTHON), help="TRL venv's python")
    p.add_argument("--out", help="work folder to keep (default: a temp folder, removed)")
    p.add_argument("--child-config", help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_config:
        return child_main(args)
    if args.steps * args.batch_size > N_RECORDS:
        p.error(f"--steps x --batch-size must fit one epoch ({N_RECORDS} records)")
    if not 0 < args.warmup < args.steps - 1 or args.repeats < 1:
        p.error("need 0 < --warmup < --steps - 1 and --repeats >= 1")
    if not 0 < args.online_warmup < args.online_steps - 1:
        p.error("need 0 < --online-warmup < --online-steps - 1")
    return H.report(args, bench)


if __name__ == "__main__":
    sys.exit(main())
