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

app = typer.Typer(
    help="rlhfkit: align language models with human feedback (SFT, RM, PPO, DPO, GRPO, ...).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

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


@app.command()
def sft(
    model: Annotated[str | None, typer.Option(help="Model folder or hub name.")] = None,
    data: Annotated[str | None, typer.Option(help="SFT data: JSONL/JSON/Parquet/dataset.")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    skip_invalid: SkipOpt = None,
) -> None:
    """Supervised fine-tuning on (prompt, answer) or chat records; loss on answers only."""

    def go() -> None:
        from rlhfkit.config import SFTConfig, build_config
        from rlhfkit.training.stages.sft import run_sft

        cli = {"model": model, "data": data, "out": out, "skip_invalid": skip_invalid}
        cfg = build_config(SFTConfig, config, cli, set_)
        result = run_sft(cfg, resume=resume, overwrite=overwrite)
        _summary("sft", result)

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
    quick: Annotated[bool, typer.Option(help="A shorter run (fewer steps).")] = False,
) -> None:
    """Run the built-in task end to end on the CPU and show what the model learned."""

    def go() -> None:
        from rlhfkit.demo.quickstart import run_quickstart

        run_quickstart(out, quick=quick)

    _run(go)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
