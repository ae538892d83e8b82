"""Validate one raw row (a dict) into one record.

Every parser has the signature ``(row, loc) -> Record`` and raises
:class:`InvalidRecord` with *every* problem of the row, each one a
``file:line: field 'x': expected ..., got ...`` :class:`DataIssue`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from rlhfkit.data.types import (
    DIMENSIONS,
    MARGIN_LABELS,
    Conversation,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    ResponseRecord,
    SFTRecord,
)
from rlhfkit.errors import MISSING, DataIssue, Location, field_issue

ROLES = ("system", "user", "assistant", "tool")
MIN_RESPONSES, MAX_RESPONSES = 2, 9

_TEXT = "a non-empty string"
_PROMPT = "a non-empty string or a list of messages"
_RESPONSE = "a non-empty string or a list with one assistant message"
_HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_NO_HH = "a 'prompt' field or HH-style transcripts with a shared '\\n\\nAssistant:' turn"

Issues = list[DataIssue]


class InvalidRecord(Exception):
    """A row that is not a valid record; ``issues`` lists every problem found."""

    def __init__(self, issues: list[DataIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def one_of(options: tuple[str, ...]) -> str:
    """``one of 'a', 'b'`` for error messages."""
    return "one of " + ", ".join(f"'{o}'" for o in options)


# ---------------------------------------------------------------- public parsers


def parse_sft(row: dict[str, Any], loc: Location) -> SFTRecord:
    """``{"prompt", "answer" | "completion"}`` or chat ``{"messages": [...]}``."""
    issues: Issues = []
    conv: Conversation | None = None
    if _present(row, "messages"):
        conv = _check_messages(row["messages"], loc, "messages", issues)
        if conv is not None:
            _check_assistant_turns(conv, row["messages"], loc, issues)
    elif any(k in row for k in ("prompt", "answer", "completion")):
        conv = _sft_prompt_answer(row, loc, issues)
    else:
        expected = "a list of messages (or 'prompt' and 'answer' fields)"
        issues.append(field_issue(loc, "messages", expected, MISSING))
    if issues or conv is None:
        raise InvalidRecord(issues)
    return SFTRecord(messages=conv, location=loc)


def parse_preference(row: dict[str, Any], loc: Location) -> PreferenceRecord | RankingRecord:
    """A pairwise comparison, or a ranking when the row has ``responses``."""
    if _present(row, "responses"):
        return _parse_ranking(row, loc)
    issues: Issues = []
    prompt, chosen, rejected = _preference_parts(row, loc, issues)
    if chosen is not None and rejected is not None and chosen.strip() == rejected.strip():
        issues.append(field_issue(loc, "rejected", "a response different from 'chosen'", rejected))
    margin, label = _check_margin(row, loc, issues)
    dimension = _check_dimension(row, loc, issues)
    if issues or prompt is None or chosen is None or rejected is None:
        raise InvalidRecord(issues)
    return PreferenceRecord(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        margin=margin,
        margin_label=label,
        dimension=dimension,
        location=loc,
    )


def parse_prompt(row: dict[str, Any], loc: Location) -> PromptRecord:
    """``{"prompt": ...}`` or ``{"messages": [...]}``; other keys go to ``extra``."""
    issues: Issues = []
    key = "prompt" if _present(row, "prompt") or not _present(row, "messages") else "messages"
    value = row.get(key, MISSING)
    if value is MISSING:
        expected = f"{_PROMPT} (or a 'messages' field)"
        issues.append(field_issue(loc, "prompt", expected, MISSING))
        conv = None
    elif key == "prompt":
        conv = _check_prompt(value, loc, "prompt", issues)
    else:
        conv = _check_messages(value, loc, "messages", issues)
    if conv is not None and conv[-1].role == "assistant":
        expected = "a conversation that ends with a user message"
        issues.append(field_issue(loc, key, expected, value))
    if issues or conv is None:
        raise InvalidRecord(issues)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "messages")}
    return PromptRecord(prompt=conv, extra=extra, location=loc)


def parse_response(row: dict[str, Any], loc: Location) -> ResponseRecord:
    """``{"prompt": str | messages, "response": str}``; other keys go to ``extra``."""
    issues: Issues = []
    prompt = _check_prompt(row.get("prompt", MISSING), loc, "prompt", issues)
    response = row.get("response", MISSING)
    if not isinstance(response, str) or not response.strip():
        issues.append(field_issue(loc, "response", _TEXT, response))
    if issues or prompt is None:
        raise InvalidRecord(issues)
    extra = {k: v for k, v in row.items() if k not in ("prompt", "response")}
    return ResponseRecord(prompt=prompt, response=response, extra=extra, location=loc)


def parse_scorable(
    row: dict[str, Any], loc: Location
) -> ResponseRecord | PreferenceRecord | RankingRecord:
    """What ``rlhfkit score`` reads: a preference or ranking record, else prompt + response."""
    if any(_present(row, k) for k in ("chosen", "rejected", "responses")):
        return parse_preference(row, loc)
    return parse_response(row, loc)


def split_hh(chosen: str, rejected: str) -> tuple[Conversation, str, str]:
    """Split two Anthropic HH-RLHF transcripts into (prompt, chosen, rejected).

    The cut is the last ``"\\n\\nAssistant:"`` inside their common prefix.
    Raises ValueError with the reason when there is no such shared turn.
    """
    shared = _common_prefix_len(chosen, rejected)
    cut = chosen.rfind(_HH_ASSISTANT, 0, shared)
    if cut < 0:
        raise ValueError("'chosen' and 'rejected' share no '\\n\\nAssistant:' turn")
    prompt = _hh_turns(chosen[:cut])
    start = cut + len(_HH_ASSISTANT)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


# ---------------------------------------------------------------- field checks


def _present(row: dict[str, Any], key: str) -> bool:
    return row.get(key) is not None


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _check_text(value: Any, loc: Location, field: str, issues: Issues) -> str | None:
    if _is_text(value):
        return value
    issues.append(field_issue(loc, field, _TEXT, value))
    return None


def _check_message(item: Any, loc: Location, field: str, issues: Issues) -> Message | None:
    if not isinstance(item, dict):
        issues.append(field_issue(loc, field, "an object with 'role' and 'content'", item))
        return None
    role, content = item.get("role", MISSING), item.get("content", MISSING)
    ok = True
    if not isinstance(role, str) or role not in ROLES:
        issues.append(field_issue(loc, f"{field}.role", one_of(ROLES), role))
        ok = False
    if not isinstance(content, str):
        issues.append(field_issue(loc, f"{field}.content", "a string", content))
        ok = False
    return Message(role, content) if ok else None


def _check_messages(value: Any, loc: Location, field: str, issues: Issues) -> Conversation | None:
    if not isinstance(value, list) or not value:
        issues.append(field_issue(loc, field, "a non-empty list of messages", value))
        return None
    checked = [_check_message(item, loc, f"{field}[{i}]", issues) for i, item in enumerate(value)]
    if any(m is None for m in checked):
        return None
    return tuple(m for m in checked if m is not None)


def _check_prompt(value: Any, loc: Location, field: str, issues: Issues) -> Conversation | None:
    if isinstance(value, list):
        return _check_messages(value, loc, field, issues)
    if _is_text(value):
        return (Message("user", value),)
    issues.append(field_issue(loc, field, _PROMPT, value))
    return None


def _check_response(
    value: Any, loc: Location, field: str, issues: Issues, prompt: Conversation | None = None
) -> str | None:
    """A string, or ``[assistant]`` (or ``prompt + [assistant]``) as a message list."""
    if isinstance(value, str):
        return _check_text(value, loc, field, issues)
    if not isinstance(value, list):
        issues.append(field_issue(loc, field, _RESPONSE, value))
        return None
    conv = _check_messages(value, loc, field, issues)
    if conv is None:
        return None
    if len(conv) > 1 and prompt is not None and conv[:-1] == prompt:
        conv = conv[-1:]  # the whole conversation, repeating the explicit prompt
    if len(conv) != 1 or conv[0].role != "assistant":
        issues.append(field_issue(loc, field, _RESPONSE, value))
        return None
    return _check_text(conv[0].content, loc, f"{field}[{len(value) - 1}].content", issues)


def _check_assistant_turns(conv: Conversation, raw: Any, loc: Location, issues: Issues) -> None:
    if not any(m.role == "assistant" for m in conv):
        issues.append(field_issue(loc, "messages", "at least one assistant message", raw))
    for i, m in enumerate(conv):
        if m.role == "assistant" and not m.content.strip():
            issues.append(field_issue(loc, f"messages[{i}].content", _TEXT, m.content))


def _check_margin(
    row: dict[str, Any], loc: Location, issues: Issues
) -> tuple[float | None, str | None]:
    margin, label = row.get("margin"), row.get("margin_label")
    if margin is not None:
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float)
            or not math.isfinite(margin)
        ):
            issues.append(field_issue(loc, "margin", "a finite number", margin))
            margin = None
        else:
            margin = float(margin)
    if label is not None and (not isinstance(label, str) or label not in MARGIN_LABELS):
        issues.append(field_issue(loc, "margin_label", one_of(MARGIN_LABELS), label))
        label = None
    return margin, label


def _check_dimension(row: dict[str, Any], loc: Location, issues: Issues) -> str | None:
    dimension = row.get("dimension")
    if dimension is None:
        return None
    if isinstance(dimension, str) and dimension in DIMENSIONS:
        return dimension
    issues.append(field_issue(loc, "dimension", one_of(DIMENSIONS), dimension))
    return None


# ---------------------------------------------------------------- SFT


def _sft_prompt_answer(row: dict[str, Any], loc: Location, issues: Issues) -> Conversation | None:
    prompt = _check_prompt(row.get("prompt", MISSING), loc, "prompt", issues)
    key = "completion" if "completion" in row and "answer" not in row else "answer"
    answer = _check_text(row.get(key, MISSING), loc, key, issues)
    if prompt is None or answer is None:
        return None
    return (*prompt, Message("assistant", answer))


# ---------------------------------------------------------------- preferences

_Parts = tuple[Conversation | None, str | None, str | None]
_NONE: _Parts = (None, None, None)


def _preference_parts(row: dict[str, Any], loc: Location, issues: Issues) -> _Parts:
    chosen, rejected = row.get("chosen", MISSING), row.get("rejected", MISSING)
    if _present(row, "prompt"):
        prompt = _check_prompt(row["prompt"], loc, "prompt", issues)
        return (
            prompt,
            _check_response(chosen, loc, "chosen", issues, prompt),
            _check_response(rejected, loc, "rejected", issues, prompt),
        )
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _split_conversations(chosen, rejected, loc, issues)
    if isinstance(chosen, str) and isinstance(rejected, str):
        return _split_transcripts(chosen, rejected, loc, issues)
    n_before = len(issues)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str | list):
            issues.append(field_issue(loc, field, _RESPONSE, value))
    if len(issues) == n_before:  # a string and a list: no way to find the prompt
        issues.append(field_issue(loc, "prompt", _PROMPT, MISSING))
    return _NONE


def _split_transcripts(chosen: str, rejected: str, loc: Location, issues: Issues) -> _Parts:
    """No prompt and two strings: Anthropic HH-RLHF transcripts."""
    if not (_is_text(chosen) and _is_text(rejected)):
        _check_text(chosen, loc, "chosen", issues)
        _check_text(rejected, loc, "rejected", issues)
        return _NONE
    try:
        prompt, chosen_text, rejected_text = split_hh(chosen, rejected)
    except ValueError:
        issues.append(field_issue(loc, "prompt", _NO_HH, MISSING))
        return _NONE
    expected = "a non-empty response after the shared '\\n\\nAssistant:' turn"
    ok = True
    for field, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        if not text:
            issues.append(field_issue(loc, field, expected, text))
            ok = False
    return (prompt, chosen_text, rejected_text) if ok else _NONE


def _split_conversations(
    chosen: list[Any], rejected: list[Any], loc: Location, issues: Issues
) -> _Parts:
    """No prompt and two message lists: the prompt is their common prefix."""
    c = _check_messages(chosen, loc, "chosen", issues)
    r = _check_messages(rejected, loc, "rejected", issues)
    if c is None or r is None:
        return _NONE
    n = 0
    while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
        n += 1
    if n == 0:
        expected = "a 'prompt' field or 'chosen'/'rejected' conversations that share their first message(s)"
        issues.append(field_issue(loc, "prompt", expected, MISSING))
        return _NONE
    chosen_text = _final_answer(c[n:], chosen, n, loc, "chosen", issues)
    rejected_text = _final_answer(r[n:], rejected, n, loc, "rejected", issues)
    return c[:n], chosen_text, rejected_text


def _final_answer(
    rest: Conversation, raw: list[Any], n: int, loc: Location, field: str, issues: Issues
) -> str | None:
    if len(rest) != 1 or rest[0].role != "assistant":
        expected = (
            "a conversation that ends with exactly one assistant message after the shared prompt"
        )
        issues.append(field_issue(loc, field, expected, raw))
        return None
    return _check_text(rest[0].content, loc, f"{field}[{n}].content", issues)


def _common_prefix_len(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _hh_turns(text: str) -> Conversation:
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first '\\n\\nHuman:' turn")
    turns = tuple(
        Message(_HH_ROLES[role], body.strip())
        for role, body in zip(parts[1::2], parts[2::2], strict=True)
    )
    if not any(m.role == "user" for m in turns):
        raise ValueError("no '\\n\\nHuman:' turn before the shared '\\n\\nAssistant:' turn")
    return turns


# ---------------------------------------------------------------- rankings


def _parse_ranking(row: dict[str, Any], loc: Location) -> RankingRecord:
    issues: Issues = []
    prompt = _check_prompt(row.get("prompt", MISSING), loc, "prompt", issues)
    responses = _check_responses(row["responses"], loc, issues, prompt)
    raw = row["responses"]
    k = len(raw) if isinstance(raw, list) and MIN_RESPONSES <= len(raw) <= MAX_RESPONSES else None
    rank = _check_rank(row.get("rank", MISSING), k, loc, issues)
    dimension = _check_dimension(row, loc, issues)
    if issues or prompt is None or responses is None or rank is None:
        raise InvalidRecord(issues)
    return RankingRecord(prompt, responses, rank, dimension=dimension, location=loc)


def _check_responses(
    value: Any, loc: Location, issues: Issues, prompt: Conversation | None
) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not MIN_RESPONSES <= len(value) <= MAX_RESPONSES:
        expected = f"a list of {MIN_RESPONSES} to {MAX_RESPONSES} responses"
        issues.append(field_issue(loc, "responses", expected, value))
        return None
    texts = [
        _check_response(v, loc, f"responses[{i}]", issues, prompt) for i, v in enumerate(value)
    ]
    if any(t is None for t in texts):
        return None
    return tuple(t for t in texts if t is not None)


def _check_rank(value: Any, k: int | None, loc: Location, issues: Issues) -> tuple[int, ...] | None:
    count = f"{k} " if k is not None else ""
    expected = f"a list of {count}integers >= 1 (one per response, 1 = best)"
    ok = (
        isinstance(value, list)
        and bool(value)
        and (k is None or len(value) == k)
        and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)
    )
    if not ok:
        issues.append(field_issue(loc, "rank", expected, value))
        return None
    if k is None:  # the responses are bad; nothing more to check against
        return None
    if len(set(value)) == 1:
        expected = "at least two different ranks (all equal means no preference)"
        issues.append(field_issue(loc, "rank", expected, value))
        return None
    return tuple(value)
