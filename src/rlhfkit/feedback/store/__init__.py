"""The labeling store: SQLAlchemy 2 on SQLite (WAL, default) or PostgreSQL, with
Alembic migrations. See ``docs/labeling.md``."""

from rlhfkit.feedback.store.accounts import Accounts, AnnotatorInfo, fast_hasher
from rlhfkit.feedback.store.content import (
    CandidateSet,
    ImportSummary,
    candidates_from_records,
    import_candidates,
    read_candidates,
)
from rlhfkit.feedback.store.db import Store, database_url
from rlhfkit.feedback.store.errors import Conflict, Invalid, LoginFailed, NotFound, StoreError
from rlhfkit.feedback.store.guidelines import add_guidelines, get_guidelines
from rlhfkit.feedback.store.work import AssignmentView, Progress, SubmitResult, Work

__all__ = [
    "Accounts",
    "AnnotatorInfo",
    "AssignmentView",
    "CandidateSet",
    "Conflict",
    "ImportSummary",
    "Invalid",
    "LoginFailed",
    "NotFound",
    "Progress",
    "Store",
    "StoreError",
    "SubmitResult",
    "Work",
    "add_guidelines",
    "candidates_from_records",
    "database_url",
    "fast_hasher",
    "get_guidelines",
    "import_candidates",
    "read_candidates",
]
