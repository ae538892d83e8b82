"""``rlhfkit label ...``: the labeling service from the command line.

``init`` (settings, guidelines), ``import`` and ``generate`` (work in),
``add-annotator``, ``serve`` (the web app), ``export`` (training data out),
``check`` (integrity). ``--db`` is a SQLite file path or a database URL.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

label_app = typer.Typer(
    help="Human feedback: import or generate candidates, serve the labeling web app, export labels.",
    no_args_is_help=True,
)
log = logging.getLogger("rlhfkit")

DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="RLHFKIT_LABEL_DB",
        help="SQLite file (labels.db) or URL (postgresql://user:pw@host/db).",
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        help="auto (2 responses: pairwise, 3-9: ranking) | pairwise (every pair) | ranking."
    ),
]
OverlapOpt = Annotated[
    int | None, typer.Option(help="Annotators per task (default: the project's setting).")
]


LABEL_MODULES = ("sqlalchemy", "alembic", "argon2", "fastapi", "uvicorn", "multipart")


def _run(fn) -> None:
    """Run a command the way every rlhfkit command runs (errors become messages)."""
    from rlhfkit.cli import _run as run

    def checked() -> None:
        import importlib.util

        from rlhfkit.errors import ConfigError

        missing = [m for m in LABEL_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"the labeling service needs {', '.join(missing)}: pip install 'rlhfkit[label]'"
            )
        fn()

    run(checked)


def _store(db: str):
    from rlhfkit.feedback.store import Store

    return Store(db)


@label_app.command("init")
def init(
    db: DbOpt,
    overlap: Annotated[int | None, typer.Option(help="Annotators per task.")] = None,
    gold_rate: Annotated[
        float | None, typer.Option(help="Share of handed-out tasks that are gold tasks.")
    ] = None,
    dimensions: Annotated[
        str | None, typer.Option(help="Comma-separated: helpfulness,safety.")
    ] = None,
    claim_minutes: Annotated[
        int | None,
        typer.Option(help="Minutes an unanswered assignment stays reserved (0: forever)."),
    ] = None,
    guidelines: Annotated[
        Path | None, typer.Option(help="Markdown file: the next guidelines version.")
    ] = None,
) -> None:
    """Create (or upgrade) a labeling database and set its project settings."""

    def go() -> None:
        from rlhfkit.errors import InputNotFoundError
        from rlhfkit.feedback.store import add_guidelines

        store = _store(db)
        values: dict = {}
        if overlap is not None:
            values["overlap"] = overlap
        if gold_rate is not None:
            values["gold_rate"] = gold_rate
        if claim_minutes is not None:
            values["claim_minutes"] = claim_minutes
        if dimensions is not None:
            values["dimensions"] = [d.strip() for d in dimensions.split(",") if d.strip()]
        settings = store.configure(**values) if values else store.settings()
        if guidelines is not None:
            if not guidelines.is_file():
                raise InputNotFoundError(f"--guidelines {guidelines}: no such file")
            version = add_guidelines(store, guidelines.read_text(encoding="utf-8"))
            typer.echo(f"guidelines version {version} saved")
        typer.echo(f"{store}: schema {store.revision()}, settings {settings}")

    _run(go)


@label_app.command("import")
def import_(
    file: Annotated[str, typer.Argument(help="Candidates, preference or ranking records.")],
    db: DbOpt,
    mode: ModeOpt = "auto",
    overlap: OverlapOpt = None,
    gold: Annotated[
        bool, typer.Option("--gold", help="The rows' own order is the gold answer.")
    ] = False,
    max_chars: Annotated[int, typer.Option(help="Longest prompt or response text.")] = 20_000,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Skip bad rows with a counted warning.")
    ] = False,
) -> None:
    """Import prompts with 2-9 candidate responses as labeling tasks (idempotent)."""

    def go() -> None:
        from rlhfkit.feedback.store import import_candidates, read_candidates

        sets, skipped = read_candidates(
            file, gold=gold, max_chars=max_chars, skip_invalid=skip_invalid
        )
        summary = import_candidates(_store(db), sets, mode=mode, overlap=overlap)  # type: ignore[arg-type]
        summary.skipped_rows = skipped
        typer.echo(f"imported {file}: {summary}")

    _run(go)


@label_app.command("generate")
def generate(
    db: DbOpt,
    model: Annotated[
        list[str], typer.Option(help="Policy folder or hub name (repeat to compare several).")
    ],
    prompts: Annotated[str, typer.Option(help="Prompt records: {'prompt'} or {'messages'}.")],
    k: Annotated[int, typer.Option("-k", "--k", help="Samples per prompt and policy.")] = 4,
    policy: Annotated[
        list[str] | None, typer.Option(help="Name of each --model (default: its folder name).")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per response.")] = 64,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    mode: ModeOpt = "auto",
    overlap: OverlapOpt = None,
) -> None:
    """Sample candidates from policies and add them as labeling tasks."""

    def go() -> None:
        from rlhfkit.feedback.generate import Sampling, sample_candidates
        from rlhfkit.feedback.store import import_candidates

        sampling = Sampling(
            k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        sets, dropped = sample_candidates(model, prompts, sampling, policy)
        summary = import_candidates(_store(db), sets, mode=mode, overlap=overlap)  # type: ignore[arg-type]
        typer.echo(f"generated for {len(sets) + dropped} prompts ({dropped} left out): {summary}")

    _run(go)


@label_app.command("add-annotator")
def add_annotator(
    name: Annotated[str, typer.Argument(help="Login name.")],
    db: DbOpt,
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin pages.")] = False,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    base_url: Annotated[
        str, typer.Option(help="Where the app is served, for the invite link.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Create an annotator: with a password (--password-stdin) or, by default, a one-time
    invite link printed here (send it privately)."""

    def go() -> None:
        from rlhfkit.feedback.store import Accounts

        accounts = Accounts(_store(db))
        password = sys.stdin.readline().rstrip("\n") if password_stdin else None
        user = accounts.create(name, password=password, is_admin=admin)
        role = "admin" if admin else "annotator"
        if password is None:
            token = accounts.invite(user.id)
            typer.echo(f"{role} {name} created; one-time login link (7 days):")
            typer.echo(f"{base_url.rstrip('/')}/invite/{token}")
        else:
            typer.echo(f"{role} {name} created with a password")

    _run(go)


@label_app.command("serve")
def serve(
    db: DbOpt,
    host: Annotated[
        str, typer.Option(help="Address to bind (loopback unless you mean otherwise).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host names the app answers to (default: loopback names, or any "
            "when bound to another address)."
        ),
    ] = None,
    secure_cookies: Annotated[
        bool, typer.Option("--secure-cookies", help="Mark cookies Secure (serving behind HTTPS).")
    ] = False,
) -> None:
    """Serve the labeling web app (annotator pages, admin pages, JSON API)."""

    def go() -> None:
        import uvicorn

        from rlhfkit.feedback.service.app import create_app, is_loopback

        store = _store(db)
        hosts = allowed_host or None
        if not is_loopback(host):
            log.warning(
                "binding %s: the app is reachable from other machines; serve it behind "
                "HTTPS and use --secure-cookies",
                host,
            )
            hosts = hosts or ["*"]
        app = create_app(store, secure_cookies=secure_cookies, allowed_hosts=hosts)
        typer.echo(f"labeling app on http://{host}:{port}/ ({store})")
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)

    _run(go)


@label_app.command("export")
def export(
    db: DbOpt,
    out: Annotated[Path, typer.Option(help="Output JSONL file.")],
    format: Annotated[str, typer.Option(help="preference | ranking | hh")] = "preference",
    dimension: Annotated[str, typer.Option(help="helpfulness | safety")] = "helpfulness",
    consensus: Annotated[
        str, typer.Option(help="majority | bt (Bradley-Terry) | raw (one row per annotator)")
    ] = "majority",
    raw: Annotated[bool, typer.Option("--raw", help="Same as --consensus raw.")] = False,
    include_gold: Annotated[
        bool, typer.Option("--include-gold", help="Also export labels of gold tasks.")
    ] = False,
) -> None:
    """Export labels for `rlhfkit rm` / `rlhfkit dpo` (streamed)."""

    def go() -> None:
        from rlhfkit.feedback.export import export_labels

        summary = export_labels(
            _store(db),
            out,
            format=format,  # type: ignore[arg-type]
            dimension=dimension,
            consensus="raw" if raw else consensus,  # type: ignore[arg-type]
            include_gold=include_gold,
        )
        typer.echo(f"exported {summary} to {out}")

    _run(go)


@label_app.command("check")
def check(db: DbOpt) -> None:
    """Check the database: SQLite integrity and foreign keys, and the store's invariants."""

    def go() -> None:
        problems = _store(db).integrity_problems()
        for p in problems:
            typer.echo(p, err=True)
        if problems:
            raise typer.Exit(1)
        typer.echo("ok")

    _run(go)
