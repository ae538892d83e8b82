"""Open a labeling database: engines, transactions, migrations, settings, integrity.

``Store("labels.db")`` (a path) or ``Store("sqlite:///labels.db")`` opens SQLite
in WAL mode with ``synchronous=FULL``: a transaction is on disk when its commit
returns, so the web app can acknowledge a judgment right after it. SQLite write
transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
busy timeout instead of failing. ``postgresql://...`` opens PostgreSQL (psycopg 3).
The schema is brought to the newest Alembic revision on open.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from rlhfkit.errors import ConfigError
from rlhfkit.feedback.store.schema import (
    DONE,
    EXPIRED,
    PENDING,
    Assignment,
    Judgment,
    Meta,
    Retraction,
    Task,
)

log = logging.getLogger("rlhfkit")

MIGRATIONS = Path(__file__).with_name("migrations")
SETTINGS_DEFAULTS: dict[str, Any] = {
    "overlap": 1,  # annotators per task
    "gold_rate": 0.0,  # share of handed-out tasks that are gold tasks
    "dimensions": ["helpfulness", "safety"],
    "claim_minutes": 240,  # a pending assignment older than this expires (0: never)
}
_SECRET = "secret_key"


def database_url(db: str) -> str:
    """A SQLAlchemy URL from ``--db``: a file path means SQLite; ``postgresql://``
    uses the psycopg 3 driver."""
    db = db.strip()
    if not db:
        raise ConfigError("--db: expected a database URL or a SQLite file path, got ''")
    if "://" not in db:
        return f"sqlite:///{Path(db).expanduser()}"
    for prefix in ("postgresql://", "postgres://"):
        if db.startswith(prefix):
            return "postgresql+psycopg://" + db[len(prefix) :]
    return db


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(
        url, pool_size=8, max_overflow=32, pool_timeout=60, connect_args={"timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, explicitly
        cur = dbapi_conn.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=FULL",
            "foreign_keys=ON",
            "busy_timeout=30000",
        ):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def read_settings(session: Session) -> dict[str, Any]:
    """The project settings, defaults filled in, inside an open transaction."""
    rows = {m.key: m.value for m in session.scalars(select(Meta).where(Meta.key != _SECRET))}
    return {k: json.loads(rows[k]) if k in rows else v for k, v in SETTINGS_DEFAULTS.items()}


class Store:
    """A labeling database. ``write()`` and ``read()`` give a session inside one
    transaction, committed when the block ends without an exception."""

    def __init__(self, db: str, *, upgrade: bool = True) -> None:
        self.url = database_url(db)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = self.url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(self.url, immediate=True)
            self.read_engine = _sqlite_engine(self.url, immediate=False)
        else:
            self.engine = create_engine(
                self.url, pool_size=8, max_overflow=32, pool_pre_ping=True, pool_timeout=60
            )
            self.read_engine = self.engine
        # SQLite has one writer at a time: this process's writers queue on a lock (woken
        # at once) rather than on SQLite's busy handler (which polls with sleeps).
        self._write_lock = threading.Lock() if self.is_sqlite else None
        self._writer = sessionmaker(self.engine, expire_on_commit=False)
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)
        if upgrade:
            self.upgrade()

    def __repr__(self) -> str:
        return f"Store({self.engine.url.render_as_string(hide_password=True)!r})"

    # ---- transactions ------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._write_lock or nullcontext(), self._writer.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    # ---- schema ------------------------------------------------------------------

    def _alembic(self):
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def head(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic()).get_current_head() or ""

    def revision(self) -> str | None:
        """The schema revision of the database (None for an empty database)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, target: str = "head") -> None:
        """Bring the schema to ``target`` (an Alembic revision); a no-op when it is there."""
        from alembic import command
        from alembic.script import ScriptDirectory

        cfg = self._alembic()
        before = self.revision()
        known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
        if before is not None and before not in known:
            raise ConfigError(
                f"{self}: schema revision {before!r} is newer than this rlhfkit knows "
                f"({', '.join(sorted(known))}); upgrade rlhfkit"
            )
        target_rev = self.head() if target == "head" else target
        if before != target_rev:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, target)
            log.info("labeling database schema: %s -> %s", before or "empty", target_rev)
        if target_rev == self.head():
            self._ensure_secret()

    # ---- settings ----------------------------------------------------------------

    def _ensure_secret(self) -> None:
        try:
            with self.write() as s:
                if s.get(Meta, _SECRET) is None:
                    s.add(Meta(key=_SECRET, value=secrets.token_hex(32)))
        except IntegrityError:  # another process made it first
            pass

    def secret_key(self) -> bytes:
        """The project's secret (made once, kept in the database): signs CSRF tokens."""
        with self.read() as s:
            row = s.get(Meta, _SECRET)
        if row is None:
            raise ConfigError(f"{self}: no secret key; open the store with upgrade=True")
        return bytes.fromhex(row.value)

    def settings(self) -> dict[str, Any]:
        with self.read() as s:
            return read_settings(s)

    def configure(self, **values: Any) -> dict[str, Any]:
        """Change project settings (``overlap``, ``gold_rate``, ``dimensions``, ``claim_minutes``)."""
        from rlhfkit.feedback.store.validate import check_settings

        check_settings(values)
        with self.write() as s:
            for key, value in values.items():
                s.merge(Meta(key=key, value=json.dumps(value)))
        return self.settings()

    # ---- integrity ---------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        """Database-level checks (SQLite's integrity and foreign-key checks) and the
        store's own invariants; an empty list means the database is sound."""
        problems: list[str] = []
        with self.read() as s:
            if self.is_sqlite:
                result = [r[0] for r in s.execute(text("PRAGMA integrity_check"))]
                if result != ["ok"]:
                    problems += [f"sqlite integrity_check: {r}" for r in result]
                for row in s.execute(text("PRAGMA foreign_key_check")):
                    problems.append(f"foreign key violation: {tuple(row)}")
            tables = set(inspect(s.connection()).get_table_names())
            if "judgments" not in tables:
                return [*problems, "no judgments table (schema not created)"]
            live = (
                select(Judgment.assignment_id, func.count().label("n"))
                .where(~Judgment.id.in_(select(Retraction.judgment_id)))
                .group_by(Judgment.assignment_id)
                .subquery()
            )
            rows = s.execute(
                select(Assignment.id, Assignment.status, live.c.n).outerjoin(
                    live, live.c.assignment_id == Assignment.id
                )
            )
            for aid, status, n in rows:
                n = n or 0
                if status == EXPIRED:
                    if n:
                        problems.append(f"assignment {aid} expired but has {n} live judgment(s)")
                    continue
                if status == PENDING and n:
                    problems.append(f"assignment {aid} is pending but has {n} live judgment(s)")
                if status != PENDING and n != 1:
                    problems.append(f"assignment {aid} is {status} with {n} live judgments")
            claimed = (
                select(Assignment.task_id, func.count().label("n"))
                .where(Assignment.status.in_((PENDING, DONE)))
                .group_by(Assignment.task_id)
                .subquery()
            )
            rows = s.execute(
                select(Task.id, Task.n_claimed, claimed.c.n)
                .outerjoin(claimed, claimed.c.task_id == Task.id)
                .where(Task.is_gold.is_(False))
            )
            for tid, n_claimed, n in rows:
                if n_claimed != (n or 0):
                    problems.append(f"task {tid}: n_claimed {n_claimed} but {n or 0} claims")
        return problems
