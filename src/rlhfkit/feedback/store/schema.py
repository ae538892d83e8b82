"""The labeling store's tables (SQLAlchemy 2 ORM).

Content (prompts, candidate responses and the tasks built from them) is written
by ``rlhfkit label import | generate``; work (assignments, judgments,
retractions) by the web app. Judgments are append-only: an undo adds a
:class:`Retraction`, it never edits or deletes the judgment. The policy that
made a response is stored but never shown to annotators.

The schema is created and upgraded by the Alembic migrations next to this
module (``migrations/versions``); a change here needs a new migration.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

PAIRWISE, RANKING = "pairwise", "ranking"
PENDING, DONE, SKIPPED, FLAGGED = "pending", "done", "skipped", "flagged"
EXPIRED = "expired"  # pending too long: the slot went back to the pool
JUDGE, SKIP, FLAG = "judge", "skip", "flag"
STATUS_OF_ACTION = {JUDGE: DONE, SKIP: SKIPPED, FLAG: FLAGGED}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Project settings and the persistent secret key, as text."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Guideline(Base):
    """One version of the labeling guidelines (markdown); the newest is in force."""

    __tablename__ = "guidelines"
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the conversation
    conversation: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    key: Mapped[str] = mapped_column(String(64))  # sha256 of (policy, text)
    text: Mapped[str] = mapped_column(Text)
    policy: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Task(Base):
    """Compare (``pairwise``, 2 responses) or rank (``ranking``, 3-9) responses to one prompt.

    ``n_claimed`` counts the assignments that are pending or done; a task is
    handed out while it is below ``overlap``. Gold tasks carry their answer in
    ``gold`` (``{dimension: ranks aligned with response_ids}``) and have no overlap limit.
    """

    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_open", "is_gold", "n_claimed"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    response_ids: Mapped[list[int]] = mapped_column(JSON)
    overlap: Mapped[int] = mapped_column(Integer)
    n_claimed: Mapped[int] = mapped_column(Integer, default=0)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold: Mapped[dict[str, list[int]] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Assignment(Base):
    """A task handed to one annotator, with the order its responses are shown in."""

    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "annotator_id"),  # nobody gets the same task twice
        Index("ix_assignments_annotator_status", "annotator_id", "status"),
        Index("ix_assignments_status_created", "status", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    shown_order: Mapped[list[int]] = mapped_column(JSON)  # response ids, left/top first
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Judgment(Base):
    """One submitted answer, skip or flag. ``id`` is the client's submission id, so
    a repeated submit finds the first one. ``answer`` is in shown terms
    (``{dimension: {"choice", "margin"}}`` or ``{dimension: ranks in shown order}``)."""

    __tablename__ = "judgments"
    __table_args__ = (
        Index("ix_judgments_task", "task_id"),
        Index("ix_judgments_annotator", "annotator_id", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    action: Mapped[str] = mapped_column(String(16))
    shown_order: Mapped[list[int]] = mapped_column(JSON)
    answer: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    guideline_version: Mapped[int | None] = mapped_column(Integer)
    time_spent_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Retraction(Base):
    """An undo: the judgment no longer counts (it stays in ``judgments``)."""

    __tablename__ = "retractions"
    judgment_id: Mapped[str] = mapped_column(ForeignKey("judgments.id"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Session(Base):
    """A login. ``id`` is the sha256 of the cookie's token, so a copy of the
    database does not hand out working cookies."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Invite(Base):
    """A one-time login link; ``id`` is the sha256 of its token."""

    __tablename__ = "invites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
