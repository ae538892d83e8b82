"""``rlhfkit <command>``: every stage from the command line, driven by YAML configs.

Imports of torch / transformers happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.labeling_cli import label_app

app = typer.Typer(
    help="rlhfkit: align language models with human feedback (SFT, RM, PPO, DPO, GRPO, ...).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(label_app, name="label")

_state = {"debug": False}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: --set learning_rate=1e-4 (repeatable)."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out.")
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a previous run in --out.")]
ModelOpt = Annotated[
    str | None, typer.Option(help="The model to start from: a folder or a hub name.")
]
PrefDataOpt = Annotated[
    str | None, typer.Option(help="Preference or ranking records (JSONL/JSON/Parquet/dataset).")
]
OutOpt = Annotated[str | None, typer.Option(help="Run folder.")]
SkipOpt = Annotated[
    bool | None,
    typer.Option(
        "--skip-invalid", help="Skip bad records with a counted warning instead of stopping."
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _state["debug"] = debug
    _setup_logging(logging.WARNING if quiet else logging.INFO)


def _setup_logging(level: int) -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("rlhfkit")
    logger.setLevel(level)
    if not logger.handlers:
        handler = RichHandler(show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _run(fn: Callable[[], Any]) -> Any:
    """Run a command; a RlhfkitError becomes a message and an exit code, not a traceback."""
    try:
        return fn()
    except RlhfkitError as e:
        if _state["debug"]:
            raise
        from rich.console import Console

        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"[bold red]error:[/] {e}", markup=True
        )
        raise typer.Exit(e.exit_code) from None


# stage -> (config class in rlhfkit.config, "module:runner"); imported only when run
TRAINING_STAGES = {
    "sft": ("SFTConfig", "rlhfkit.training.stages.sft:run_sft"),
    "rm": ("RMConfig", "rlhfkit.training.stages.reward:run_rm"),
    "dpo": ("DPOConfig", "rlhfkit.training.stages.dpo:run_dpo"),
    "ppo": ("PPOConfig", "rlhfkit.training.stages.ppo:run_ppo"),
    "grpo": ("GRPOConfig", "rlhfkit.training.stages.grpo:run_grpo"),
    "rloo": ("GRPOConfig", "rlhfkit.training.stages.grpo:run_rloo"),
    "rejection-sampling": (
        "RejectionSamplingConfig",
        "rlhfkit.training.stages.rejection:run_rejection_sampling",
    ),
    "rest": ("ReSTConfig", "rlhfkit.training.stages.rest:run_rest"),
    "hir": ("HIRConfig", "rlhfkit.training.stages.hir:run_hir"),
}


def _train(stage: str, cli: dict[str, Any], config, set_, resume, overwrite) -> None:
    """Build the stage's config from YAML + options + --set, run it, print a summary."""

    def go() -> None:
        import importlib

        from rlhfkit import config as config_mod
        from rlhfkit.config import build_config

        config_cls, runner = TRAINING_STAGES[stage]
        cfg = build_config(getattr(config_mod, config_cls), config, cli, set_)
        module, func = runner.rsplit(":", 1)
        result = getattr(importlib.import_module(module), func)(
            cfg, resume=resume, overwrite=overwrite
        )
        _summary(stage, result)

    _run(go)


@app.command()
def sft(
    model: ModelOpt = None,
    data: Annotated[str | None, typer.Option(help="SFT data: JSONL/JSON/Parquet/dataset.")] = None,
    out: OutOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    skip_invalid: SkipOpt = None,
) -> None:
    """Supervised fine-tuning on (prompt, answer) or chat records; loss on answers only."""
    cli = {"model": model, "data": data, "out": out, "skip_invalid": skip_invalid}
    _train("sft", cli, config, set_, resume, overwrite)


@app.command()
def rm(
    model: ModelOpt = None,
    data: PrefDataOpt = None,
    out: OutOpt = None,
    loss: Annotated[str | None, typer.Option(help="pairwise | margin | hinge")] = None,
    dimension: Annotated[
        str | None,
        typer.Option(help="Train on records of this dimension only (helpfulness | safety)."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    skip_invalid: SkipOpt = None,
) -> None:
    """Train a reward model (scalar head) on comparisons; final/ keeps the most accurate one."""
    cli = {
        "model": model,
        "data": data,
        "out": out,
        "loss": loss,
        "dimension": dimension,
        "skip_invalid": skip_invalid,
    }
    _train("rm", cli, config, set_, resume, overwrite)


@app.command()
def dpo(
    model: ModelOpt = None,
    data: PrefDataOpt = None,
    out: OutOpt = None,
    loss: Annotated[str | None, typer.Option(help="sigmoid | robust | ipo | hinge | cpl")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    skip_invalid: SkipOpt = None,
) -> None:
    """Preference optimisation without a reward model: DPO and its variants, or CPL."""
    cli = {"model": model, "data": data, "out": out, "loss": loss, "skip_invalid": skip_invalid}
    _train("dpo", cli, config, set_, resume, overwrite)


PromptsOpt = Annotated[
    str | None, typer.Option(help="Prompt records (JSONL/JSON/Parquet/dataset).")
]
RewardModelOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--reward-model",
        help="Reward model folder (repeatable; several are combined by reward_combine).",
    ),
]
RewardFnOpt = Annotated[
    list[str] | None,
    typer.Option("--reward-fn", help="Reward function module:function or file.py:function."),
]


def _online_command(stage: str, doc: str) -> Callable[..., None]:
    """One command per online stage; they share their options."""

    def command(
        model: ModelOpt = None,
        reward_model: RewardModelOpt = None,
        reward_fn: RewardFnOpt = None,
        prompts: PromptsOpt = None,
        out: OutOpt = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        overwrite: OverwriteOpt = False,
        skip_invalid: SkipOpt = None,
    ) -> None:
        cli = {
            "model": model,
            "reward_model": reward_model or None,
            "reward_fn": reward_fn or None,
            "prompts": prompts,
            "out": out,
            "skip_invalid": skip_invalid,
        }
        _train(stage, cli, config, set_, resume, overwrite)

    command.__doc__ = doc
    return command


app.command("ppo")(
    _online_command(
        "ppo", "RLHF with PPO: sample, score, KL-shape, GAE, clipped policy + value updates."
    )
)
app.command("grpo")(
    _online_command(
        "grpo",
        "GRPO: G samples per prompt, group-relative advantages, no value model. "
        "Built-in rewards: --reward-fn rlhfkit.rewards:exact_answer (docs/grpo.md).",
    )
)
app.command("rloo")(
    _online_command(
        "rloo", "RLOO: GRPO's machinery with the leave-one-out baseline (k samples per prompt)."
    )
)
app.command("rejection-sampling")(
    _online_command(
        "rejection-sampling",
        "Rejection sampling (Llama 2): K samples per prompt, SFT on the best by reward, over "
        "--set rounds=N; optional reward-model refresh and a finishing PPO (docs/selftrain.md).",
    )
)
app.command("rest")(
    _online_command(
        "rest",
        "ReST: Grow (sample a dataset) then Improve steps (SFT on samples above a rising "
        "reward threshold, --set thresholds=...) (docs/selftrain.md).",
    )
)
app.command("hir")(
    _online_command(
        "hir",
        "HIR: sample, relabel each prompt to fit its response (--set relabel_fn=...), SFT on "
        "the relabeled pairs, optional contrastive term (docs/selftrain.md).",
    )
)


@app.command("best-of-n")
def best_of_n(
    model: ModelOpt = None,
    reward_model: RewardModelOpt = None,
    reward_fn: RewardFnOpt = None,
    prompts: PromptsOpt = None,
    out: Annotated[
        str | None, typer.Option(help="Output JSONL: the best response per prompt.")
    ] = None,
    n: Annotated[int | None, typer.Option("-n", help="Samples per prompt (K).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    skip_invalid: SkipOpt = None,
) -> None:
    """Inference-time best-of-K: K samples per prompt, keep the one the reward scores highest."""

    def go() -> None:
        from rlhfkit.config import BestOfNConfig, build_config
        from rlhfkit.rollout.best_of_n import run_best_of_n

        cli = {
            "model": model, "reward_model": reward_model or None, "reward_fn": reward_fn or None,
            "prompts": prompts, "out": out, "samples_per_prompt": n, "skip_invalid": skip_invalid,
        }  # fmt: skip
        s = run_best_of_n(build_config(BestOfNConfig, config, cli, set_))
        typer.echo(
            f"best-of-{s.k} on {s.prompts} prompts in {s.seconds:.1f}s: mean reward of the best "
            f"{s.best_mean:.4f}, of one sample {s.sample_mean:.4f}; written to {s.out}"
        )

    _run(go)


@app.command()
def score(
    model: Annotated[str, typer.Option(help="Reward model folder.")],
    data: Annotated[
        str, typer.Option(help="Records with prompt + response, or preference / ranking records.")
    ],
    out: Annotated[Path, typer.Option(help="Output JSONL with the rewards.")],
    batch_size: Annotated[int, typer.Option(help="Responses per forward.")] = 64,
    max_length: Annotated[
        int, typer.Option(help="Tokens per response (prompt cut on the left).")
    ] = 1024,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip bad records with a counted warning.")
    ] = False,
) -> None:
    """Score responses with a reward model; on comparisons it also prints the accuracy."""

    def go() -> None:
        from rlhfkit.evaluation.scoring import score_file
        from rlhfkit.models.reward import RewardModel

        rm_ = RewardModel.from_pretrained(model, max_length=max_length)
        summary = score_file(rm_, data, out, batch_size=batch_size, skip_invalid=skip_invalid)
        line = f"scored {summary.n_responses} responses of {summary.n_records} records, mean reward {summary.mean_reward:.4f}"
        if summary.accuracy is not None:
            line += f", pairwise accuracy {summary.accuracy:.4f} on {summary.n_pairs} pairs"
        typer.echo(f"{line}; written to {out}")

    _run(go)


@app.command()
def rank(
    data: Annotated[
        str, typer.Option(help='Comparisons: {"a","b","winner"} or {"chosen","rejected"} rows.')
    ],
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the confidence intervals.")
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Also write the leaderboard as JSON.")] = None,
) -> None:
    """Rank items from many pairwise comparisons: Bradley-Terry with bootstrap CIs, and Elo."""

    def go() -> None:
        import json

        from rich.console import Console

        from rlhfkit.feedback.aggregate import format_leaderboard, leaderboard, read_comparisons

        rows = leaderboard(read_comparisons(data), bootstrap=bootstrap, seed=seed)
        Console().print(format_leaderboard(rows))
        if out is not None:
            out.write_text(json.dumps(rows, indent=2), encoding="utf-8")

    _run(go)


def _summary(stage: str, result: Any) -> None:
    from accelerate import PartialState

    from rlhfkit.training.loop import TrainResult

    assert isinstance(result, TrainResult)
    if not PartialState().is_main_process:
        return
    parts = [
        f"{stage}: {result.steps} steps in {result.seconds:.1f}s",
        f"train loss {result.train_loss:.4f}",
    ]
    parts += [f"{k} {v:.4f}" for k, v in result.eval.items()]
    parts.append(f"model in {result.final_dir}")
    typer.echo(" | ".join(parts))


@app.command()
def tiny(
    out: Annotated[Path, typer.Option(help="Folder to write the model and tokenizer to.")],
    arch: Annotated[str, typer.Option(help="llama | gpt2 | qwen2")] = "llama",
    corpus: Annotated[
        Path | None,
        typer.Option(
            help="Text or JSONL file to train the tokenizer on (default: the built-in task)."
        ),
    ] = None,
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 512,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 128,
    layers: Annotated[int, typer.Option(help="Number of layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the random initialisation.")] = 0,
) -> None:
    """Build a tiny tokenizer + randomly initialised model (for tests and the demo)."""

    def go() -> None:
        from rlhfkit.errors import ConfigError, InputNotFoundError
        from rlhfkit.models.tiny import ARCHITECTURES, TinySpec, build_tiny, read_corpus

        if arch not in ARCHITECTURES:
            raise ConfigError(f"--arch: expected one of {', '.join(ARCHITECTURES)}, got {arch!r}")
        if corpus is not None and not corpus.is_file():
            raise InputNotFoundError(f"--corpus {corpus}: no such file")
        texts = read_corpus(corpus) if corpus else None
        spec = TinySpec(
            arch=arch, vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads, seed=seed
        )
        path = build_tiny(out, spec, texts)
        typer.echo(f"tiny {arch} model and tokenizer written to {path}")

    _run(go)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder of the demo.")] = Path("runs/demo"),
    quick: Annotated[bool, typer.Option(help="The short recipe (about 3 minutes).")] = False,
    algorithms: Annotated[
        str, typer.Option(help="Comma-separated algorithms to run after the reward models.")
    ] = "ppo,dpo",
    labels: Annotated[
        str,
        typer.Option(
            help="Where comparisons come from: simulated | a file of preference records | "
            "a labeling database (labels.db or postgresql://...)."
        ),
    ] = "simulated",
    threads: Annotated[
        int,
        typer.Option(
            help="torch threads while the demo runs; 0: torch's default (one thread is "
            "as fast for the tiny models and does not collapse on a shared machine)."
        ),
    ] = 1,
) -> None:
    """The whole RLHF pipeline on the built-in task (SFT, comparisons, reward models,
    PPO, DPO, ...), evaluated against its gold judge; resumable, with an HTML report."""

    def go() -> None:
        from rlhfkit.demo.pipeline import run_demo

        run_demo(out, quick=quick, algorithms=algorithms, labels=labels, threads=threads or None)

    _run(go)


@app.command("eval")
def eval_(
    policy: Annotated[str, typer.Option(help="Policy folder (a causal LM).")],
    prompts: Annotated[str, typer.Option(help="Prompt records (JSONL/JSON/Parquet/dataset).")],
    reference: Annotated[
        str | None, typer.Option(help="Reference policy folder: win rates and KL against it.")
    ] = None,
    judge: Annotated[
        list[str] | None,
        typer.Option(help="gold (the built-in task's judge) or a reward model folder; repeatable."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write eval.json and responses.jsonl to this folder.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per response.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Prompts per generate call.")] = 64,
    kl_samples: Annotated[
        int, typer.Option(help="Sampled responses per prompt for the KL estimate (0: none).")
    ] = 1,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the win rate.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the KL samples and the bootstrap.")] = 0,
) -> None:
    """Evaluate a policy on prompts: gold metrics, win rate vs a reference, KL, BLEU/ROUGE-L."""

    def go() -> None:
        from rich.console import Console

        from rlhfkit.data.load import load_records
        from rlhfkit.evaluation.evaluate import EvalSettings, evaluate, print_result, write_eval

        records = load_records(prompts, "prompt").records
        settings = EvalSettings(max_new_tokens=max_new_tokens, batch_size=batch_size,
                                kl_samples=kl_samples, bootstrap=bootstrap, seed=seed)  # fmt: skip
        result, rows = evaluate(
            policy,
            records,
            reference=reference,
            judges=judge or ["gold"],
            settings=settings,
        )
        print_result(Console(), result)
        if out is not None:
            write_eval(out, result, rows)
            typer.echo(f"written to {out / 'eval.json'} and {out / 'responses.jsonl'}")

    _run(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
