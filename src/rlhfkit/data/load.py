"""Load and validate every record of a data source in one call."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfkit.data.records import (
    InvalidRecord,
    parse_preference,
    parse_prompt,
    parse_response,
    parse_scorable,
    parse_sft,
)
from rlhfkit.data.sources import iter_rows
from rlhfkit.data.types import Record
from rlhfkit.errors import DataError, DataIssue, Location

RecordKind = Literal["sft", "preference", "prompt", "response", "score"]
SKIP_HINT = "(use --skip-invalid to skip bad records with a counted warning)"

PARSERS: dict[str, Callable[[dict[str, Any], Location], Record]] = {
    "sft": parse_sft,
    "preference": parse_preference,
    "prompt": parse_prompt,
    "response": parse_response,
    "score": parse_scorable,  # preference, ranking or response records
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
        raise DataError([i for group in bad for i in group], SKIP_HINT)
    if not records:
        raise DataError([i for group in bad for i in group], f"no valid records in {name}")
    if bad:
        logger.warning("skipped %d invalid record(s) in %s (first: %s)", len(bad), name, bad[0][0])
    return LoadResult(records=records, n_invalid=len(bad), source=name)
