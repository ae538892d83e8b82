"""Reading and validating training data (import-light: stdlib only)."""

from __future__ import annotations

from rlhfkit.data.load import LoadResult, load_records
from rlhfkit.data.records import (
    InvalidRecord,
    parse_preference,
    parse_prompt,
    parse_sft,
    split_hh,
)
from rlhfkit.data.sources import iter_rows
from rlhfkit.data.types import (
    DIMENSIONS,
    MARGIN_LABELS,
    Conversation,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankedPair,
    RankingRecord,
    Record,
    SFTRecord,
)

__all__ = [
    "DIMENSIONS",
    "MARGIN_LABELS",
    "Conversation",
    "InvalidRecord",
    "LoadResult",
    "Message",
    "PreferenceRecord",
    "PromptRecord",
    "RankedPair",
    "RankingRecord",
    "Record",
    "SFTRecord",
    "iter_rows",
    "load_records",
    "parse_preference",
    "parse_prompt",
    "parse_sft",
    "split_hh",
]
