"""Tokenizing a list of records for a stage, with counted truncation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample, tokenize_conversation
from rlhfkit.data.types import SFTRecord

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
