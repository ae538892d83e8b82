"""Labeling guidelines: markdown, versioned; the newest version is in force and its
number is recorded with every judgment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from rlhfkit.feedback.store.db import Store
from rlhfkit.feedback.store.errors import Invalid, NotFound
from rlhfkit.feedback.store.schema import Guideline

MAX_GUIDELINE_CHARS = 100_000


@dataclass(frozen=True)
class Guidelines:
    version: int
    text: str
    created_at: datetime


def add_guidelines(store: Store, text: str) -> int:
    """Store ``text`` as the next version; returns its number."""
    if not isinstance(text, str) or not text.strip():
        raise Invalid("guidelines: expected non-empty markdown text")
    if len(text) > MAX_GUIDELINE_CHARS:
        raise Invalid(f"guidelines: expected at most {MAX_GUIDELINE_CHARS} characters")
    with store.write() as s:
        version = (s.scalar(select(func.max(Guideline.version))) or 0) + 1
        s.add(Guideline(version=version, text=text))
    return version


def get_guidelines(store: Store, version: int | None = None) -> Guidelines | None:
    """A version (the newest by default); None when there are no guidelines yet."""
    with store.read() as s:
        if version is None:
            version = s.scalar(select(func.max(Guideline.version)))
            if version is None:
                return None
        g = s.get(Guideline, version)
        if g is None:
            raise NotFound(f"no guidelines version {version}")
        return Guidelines(g.version, g.text, g.created_at)


def guideline_versions(store: Store) -> list[int]:
    with store.read() as s:
        return list(s.scalars(select(Guideline.version).order_by(Guideline.version.desc())))
