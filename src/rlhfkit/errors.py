"""Errors a user can act on.

Every error rlhfkit raises on purpose is a :class:`RlhfkitError`. The CLI prints
its message (no traceback unless ``--debug``) and exits with its ``exit_code``,
which follows the BSD ``sysexits`` convention so scripts can tell them apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

EX_DATAERR = 65  # the input data was incorrect
EX_NOINPUT = 66  # an input file did not exist or was not readable
EX_SOFTWARE = 70  # internal error
EX_CONFIG = 78  # something was found in an unconfigured or misconfigured state

MAX_REPORTED = 20


class RlhfkitError(Exception):
    """Base class of the errors rlhfkit raises for the user to fix."""

    exit_code = EX_SOFTWARE


class ConfigError(RlhfkitError):
    """A bad configuration key or value; the message names the key."""

    exit_code = EX_CONFIG


class InputNotFoundError(RlhfkitError):
    """A data file, folder or dataset that does not exist."""

    exit_code = EX_NOINPUT


@dataclass(frozen=True)
class Location:
    """Where a record came from: a file and a 1-based line (or row) number."""

    source: str
    line: int | None = None
    unit: str = "line"  # "line" for text files, "row" for Parquet / datasets

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        if self.unit == "line":
            return f"{self.source}:{self.line}"
        return f"{self.source}: {self.unit} {self.line}"


def describe(value: Any) -> str:
    """A short, JSON-like description of a bad value for error messages."""
    if isinstance(value, _Missing):
        return "nothing (the field is missing)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind = "boolean"
    elif isinstance(value, int | float):
        kind = "number"
    elif isinstance(value, str):
        kind = "empty string" if not value.strip() else "string"
    elif isinstance(value, list):
        kind = "empty list" if not value else f"list of {len(value)}"
    elif isinstance(value, dict):
        kind = "object"
    else:
        kind = type(value).__name__
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class DataIssue:
    """One problem in one input record."""

    location: Location
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


def field_issue(location: Location, field: str, expected: str, got: Any) -> DataIssue:
    """The standard ``file:line: field 'x': expected ..., got ...`` message."""
    return DataIssue(location, f"field '{field}': expected {expected}, got {describe(got)}")


class DataError(RlhfkitError):
    """One or more bad input records. Shows up to ``MAX_REPORTED`` issues at once;
    a record may have several issues, and "... and N more" counts records."""

    exit_code = EX_DATAERR

    def __init__(self, issues: list[DataIssue], hint: str = "") -> None:
        self.issues = list(issues)
        self.total = len({i.location for i in self.issues})  # bad records
        shown = self.issues[:MAX_REPORTED]
        lines = [str(i) for i in shown]
        more = self.total - len({i.location for i in shown})
        if more > 0:
            lines.append(f"... and {more} more bad record(s)")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))
