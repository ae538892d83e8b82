"""Load and validate every record of a data source in one call."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.records import InvalidRecord, parse_preference, parse_prompt, parse_sft
from rlhfkit.data.sources import iter_rows
from rlhfkit.data.types import Record
from rlhfkit.errors import MAX_REPORTED, DataError, DataIssue, Location

RecordKind = Literal["sft", "preference", "prompt"]
SKIP_HINT = "(use --skip-invalid to skip bad records with a counted warning)"

PARSERS: dict[str, Callable[[dict[str, Any], Location], Record]] = {
    "sft": parse_sft,
    "preference": parse_preference,
    "prompt": parse_prompt,
}

logger = logging.getLogger("rlhfkit")


@dataclass
class LoadResult:
    """The valid records of ``source`` and how many bad ones were skipped."""

    records: list[Record]
    n_invalid: int
    source: str


def load_records(
    source: str | Path,
    kind: RecordKind,
    *,
    split: str = "train",
    skip_invalid: bool = False,
    console: Any = None,
) -> LoadResult:
    """Read ``source`` and validate every row as a ``kind`` record.

    Bad records raise one DataError listing them all (up to 20), unless
    ``skip_invalid``: then they are dropped with a counted warning.
    """
    if kind not in PARSERS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {sorted(PARSERS)}")
    parse = PARSERS[kind]
    name = str(source)
    records: list[Record] = []
    bad: list[list[DataIssue]] = []  # the issues of each bad record
    for loc, row in iter_rows(source, split):
        if isinstance(row, DataIssue):
            bad.append([row])
            continue
        try:
            records.append(parse(row, loc))
        except InvalidRecord as e:
            bad.append(e.issues or [DataIssue(loc, "invalid record")])
    if bad and not skip_invalid:
        raise bad_records_error(bad, SKIP_HINT)
    if not records:
        raise bad_records_error(bad, f"no valid records in {name}")
    if bad:
        _warn_skipped(len(bad), name, bad[0][0], console)
    return LoadResult(records=records, n_invalid=len(bad), source=name)


def bad_records_error(bad: list[list[DataIssue]], hint: str) -> DataError:
    """A DataError over ``bad`` (one issue list per record).

    ``total`` is the number of bad records; the "... and N more" line counts
    the records none of whose issues made it into the first 20 lines.
    """
    issues = [issue for group in bad for issue in group]
    shown = min(len(issues), MAX_REPORTED)
    groups_shown, seen = 0, 0
    for group in bad:
        if seen >= shown:
            break
        groups_shown += 1
        seen += len(group)
    error = DataError(issues, total=shown + len(bad) - groups_shown, hint=hint)
    error.total = len(bad)
    return error


def _warn_skipped(n: int, name: str, first: DataIssue, console: Any) -> None:
    message = f"skipped {n} invalid record(s) in {name} (first: {first})"
    warnings.warn(message, UserWarning, stacklevel=3)
    logger.warning(message)
    if console is not None:
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False)
