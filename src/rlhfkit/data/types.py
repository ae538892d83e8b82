"""The record types every stage consumes, after validation.

A prompt is always a conversation (a list of messages); a response is the text
of one assistant turn. Plain ``{"prompt": "..."}`` strings become a one-message
conversation, so the chat template decides how everything is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfkit.errors import Location

Role = Literal["system", "user", "assistant", "tool"]
MARGIN_LABELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
DIMENSIONS = ("helpfulness", "safety")


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


Conversation = tuple[Message, ...]


@dataclass(frozen=True)
class SFTRecord:
    """A demonstration. The loss is on every assistant message of ``messages``."""

    messages: Conversation
    location: Location | None = None


@dataclass(frozen=True)
class PreferenceRecord:
    """One comparison: ``chosen`` was preferred over ``rejected`` for ``prompt``.

    ``margin`` is a number when the record gave one; ``margin_label`` is one of
    :data:`MARGIN_LABELS` when it gave a label instead (the reward stage maps
    labels to numbers through its configurable table).
    """

    prompt: Conversation
    chosen: str
    rejected: str
    margin: float | None = None
    margin_label: str | None = None
    dimension: str | None = None
    location: Location | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready row that :func:`parse_preference` reads back."""
        out: dict[str, Any] = {
            "prompt": [m.as_dict() for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        for key in ("margin", "margin_label", "dimension"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class RankedPair:
    """One ordered pair expanded from a ranking: ``better`` is ranked above ``worse``."""

    group: int  # index of the ranking record the pair came from
    better: int  # index into the ranking's responses
    worse: int
    gap: int  # rank[worse] - rank[better] >= 1


@dataclass(frozen=True)
class RankingRecord:
    """``responses`` ranked by ``rank`` (1 = best; equal ranks are ties)."""

    prompt: Conversation
    responses: tuple[str, ...]
    rank: tuple[int, ...]
    dimension: str | None = None
    location: Location | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": [m.as_dict() for m in self.prompt],
            "responses": list(self.responses),
            "rank": list(self.rank),
        }
        if self.dimension is not None:
            out["dimension"] = self.dimension
        return out

    def pairs(self, group: int = 0) -> list[RankedPair]:
        """All C(K,2) pairs with a strict order (tied pairs carry no preference)."""
        out: list[RankedPair] = []
        k = len(self.responses)
        for i in range(k):
            for j in range(i + 1, k):
                ri, rj = self.rank[i], self.rank[j]
                if ri == rj:
                    continue
                better, worse = (i, j) if ri < rj else (j, i)
                out.append(RankedPair(group, better, worse, abs(ri - rj)))
        return out

    def preference_records(self) -> list[PreferenceRecord]:
        """The ranking as independent pairwise records (for DPO-style losses)."""
        return [
            PreferenceRecord(
                prompt=self.prompt,
                chosen=self.responses[p.better],
                rejected=self.responses[p.worse],
                margin=float(p.gap),
                dimension=self.dimension,
                location=self.location,
            )
            for p in self.pairs()
        ]


@dataclass(frozen=True)
class PromptRecord:
    """A prompt for online stages; ``extra`` keeps the record's other fields
    (for example a reference ``answer`` a reward function can check)."""

    prompt: Conversation
    extra: dict[str, Any] = field(default_factory=dict)
    location: Location | None = None


@dataclass(frozen=True)
class ResponseRecord:
    """A prompt and one response to score: ``{"prompt", "response"}``."""

    prompt: Conversation
    response: str
    extra: dict[str, Any] = field(default_factory=dict)
    location: Location | None = None


Record = SFTRecord | PreferenceRecord | RankingRecord | PromptRecord | ResponseRecord
