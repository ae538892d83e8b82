"""Tokenizing a list of records for a stage, with counted truncation."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample, tokenize_conversation
from rlhfkit.data.types import Message, PreferenceRecord, RankingRecord, SFTRecord

log = logging.getLogger("rlhfkit")


@dataclass
class PrepareStats:
    examples: int = 0
    prompt_truncated: int = 0
    completion_truncated: int = 0
    no_labels: int = 0

    def report(self, what: str, max_length: int) -> None:
        """A counted warning for everything truncated or dropped (never silent)."""
        if self.prompt_truncated:
            log.warning(
                "%s: %d of %d example(s) longer than max_length=%d had their prompt cut on the left",
                what, self.prompt_truncated, self.examples, max_length,
            )  # fmt: skip
        if self.completion_truncated:
            log.warning(
                "%s: %d of %d example(s) had their completion cut on the right to max_length=%d",
                what, self.completion_truncated, self.examples, max_length,
            )  # fmt: skip
        if self.no_labels:
            log.warning(
                "%s: dropped %d example(s) with no completion token left", what, self.no_labels
            )


def tokenize_sft(
    records: Sequence[SFTRecord], tokenizer, template: str, max_length: int
) -> tuple[list[TokenizedExample], PrepareStats]:
    stats = PrepareStats()
    out = []
    for rec in records:
        ex = tokenize_conversation(tokenizer, template, rec.messages, max_length)
        stats.examples += 1
        stats.prompt_truncated += ex.prompt_truncated
        stats.completion_truncated += ex.completion_truncated
        if all(lab == IGNORE_INDEX for lab in ex.labels[1:]):
            stats.no_labels += 1
            continue
        out.append(ex)
    return out, stats


def tokenize_response(
    prompt: Sequence[Message],
    response: str,
    tokenizer,
    template: str,
    max_length: int,
    stats: PrepareStats,
) -> TokenizedExample:
    """The prompt plus one assistant response, labels on the response, truncation counted."""
    ex = tokenize_conversation(
        tokenizer, template, (*prompt, Message("assistant", response)), max_length, last_only=True
    )
    stats.examples += 1
    stats.prompt_truncated += ex.prompt_truncated
    stats.completion_truncated += ex.completion_truncated
    return ex


@dataclass
class ResponseGroup:
    """The K responses to one prompt (each tokenized with the prompt) and its ordered pairs.

    ``pairs`` holds ``(better, worse, margin)`` indices into ``responses``: one pair
    for a preference record, every strict pair of a ranking. ``dimension`` is the
    record's ``helpfulness`` / ``safety`` tag, if any.
    """

    responses: list[list[int]]
    pairs: list[tuple[int, int, float]]
    dimension: str | None = None

    def __len__(self) -> int:
        return sum(len(r) for r in self.responses)


def tokenize_groups(
    records: Sequence[PreferenceRecord | RankingRecord],
    tokenizer,
    template: str,
    max_length: int,
    margin_of: Callable[[PreferenceRecord], float],
) -> tuple[list[ResponseGroup], PrepareStats]:
    """Preference and ranking records as response groups (rankings stay whole)."""
    stats = PrepareStats()
    groups = []
    for rec in records:
        if isinstance(rec, RankingRecord):
            responses = list(rec.responses)
            pairs = [(p.better, p.worse, 0.0) for p in rec.pairs()]
        else:
            responses = [rec.chosen, rec.rejected]
            pairs = [(0, 1, margin_of(rec))]
        ids = [
            tokenize_response(rec.prompt, t, tokenizer, template, max_length, stats).input_ids
            for t in responses
        ]
        groups.append(ResponseGroup(ids, pairs, rec.dimension))
    return groups, stats


@dataclass
class PairExample:
    """A preference pair tokenized for DPO-style losses: both sequences carry labels on
    their completion only. ``ref`` holds precomputed reference log-probs (chosen,
    rejected) when the stage computed them once up front."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    ref: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def as_pairs(records: Sequence[PreferenceRecord | RankingRecord]) -> list[PreferenceRecord]:
    """Rankings expanded to their C(K,2) strict pairs; preference records as they are."""
    out: list[PreferenceRecord] = []
    for rec in records:
        out += rec.preference_records() if isinstance(rec, RankingRecord) else [rec]
    return out


def tokenize_pairs(
    records: Sequence[PreferenceRecord | RankingRecord], tokenizer, template: str, max_length: int
) -> tuple[list[PairExample], PrepareStats]:
    stats = PrepareStats()
    out = []
    for rec in as_pairs(records):
        chosen, rejected = (
            tokenize_response(rec.prompt, t, tokenizer, template, max_length, stats)
            for t in (rec.chosen, rec.rejected)
        )
        out.append(PairExample(chosen, rejected))
    return out, stats
