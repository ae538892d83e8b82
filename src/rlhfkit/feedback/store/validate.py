"""Checks of what annotators submit and admins configure (shown-order answers, settings)."""

from __future__ import annotations

import math
from typing import Any

from rlhfkit.data.types import DIMENSIONS, MARGIN_LABELS
from rlhfkit.feedback.store.errors import Invalid
from rlhfkit.feedback.store.schema import PAIRWISE

CHOICES = ("A", "B", "tie", "both_bad")
MAX_REASON_CHARS = 2000
MAX_TIME_MS = 24 * 3600 * 1000


def check_settings(values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key == "overlap":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise Invalid(f"setting 'overlap': expected an integer >= 1, got {value!r}")
        elif key == "claim_minutes":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise Invalid(f"setting 'claim_minutes': expected an integer >= 0, got {value!r}")
        elif key == "gold_rate":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise Invalid(f"setting 'gold_rate': expected a number in [0, 1], got {value!r}")
        elif key == "dimensions":
            if (
                not isinstance(value, list)
                or not value
                or len(set(value)) != len(value)
                or any(d not in DIMENSIONS for d in value)
            ):
                raise Invalid(
                    f"setting 'dimensions': expected a non-empty list of distinct values "
                    f"from {', '.join(DIMENSIONS)}, got {value!r}"
                )
        else:
            raise Invalid(
                f"unknown setting {key!r}; expected overlap, gold_rate, dimensions or claim_minutes"
            )


def check_answer(kind: str, k: int, dimensions: list[str], answer: Any) -> dict[str, Any]:
    """The answer in shown terms, normalised; raises :class:`Invalid` naming the field.

    Pairwise: ``{dim: {"choice": "A" | "B" | "tie" | "both_bad", "margin": label}}``
    (the margin only, and always, with A or B). Ranking: ``{dim: [rank per shown
    response]}``, integers 1..k, 1 = best, ties allowed.
    """
    if not isinstance(answer, dict):
        raise Invalid(f"answer: expected an object with one entry per dimension, got {answer!r}")
    extra = sorted(set(answer) - set(dimensions))
    if extra:
        raise Invalid(f"answer: unknown dimension(s) {extra}; this project asks {dimensions}")
    out: dict[str, Any] = {}
    for dim in dimensions:
        if dim not in answer:
            raise Invalid(f"answer.{dim}: missing (every dimension must be answered)")
        value = answer[dim]
        out[dim] = _pairwise(dim, value) if kind == PAIRWISE else _ranking(dim, k, value)
    return out


def _pairwise(dim: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"answer.{dim}: expected {{'choice', 'margin'}}, got {value!r}")
    choice, margin = value.get("choice"), value.get("margin") or None
    if choice not in CHOICES:
        raise Invalid(f"answer.{dim}.choice: expected one of {', '.join(CHOICES)}, got {choice!r}")
    if choice in ("A", "B"):
        if margin not in MARGIN_LABELS:
            raise Invalid(
                f"answer.{dim}.margin: expected one of {', '.join(MARGIN_LABELS)} "
                f"when {choice} is better, got {margin!r}"
            )
    elif margin is not None:
        raise Invalid(f"answer.{dim}.margin: expected none for {choice!r}, got {margin!r}")
    return {"choice": choice, "margin": margin}


def _ranking(dim: str, k: int, value: Any) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) != k
        or any(isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= k for r in value)
    ):
        raise Invalid(
            f"answer.{dim}: expected a list of {k} integers from 1 to {k} "
            f"(rank of each response as shown, 1 = best, ties allowed), got {value!r}"
        )
    return list(value)


def check_reason(action: str, reason: Any) -> str | None:
    if reason is None or reason == "":
        if action == "flag":
            raise Invalid("reason: a flag needs a reason")
        return None
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
        raise Invalid(f"reason: expected text of at most {MAX_REASON_CHARS} characters")
    return reason.strip() or None


def check_time(value: Any) -> int | None:
    """Milliseconds the annotator spent, as the page measured it (None: not given)."""
    if value is None or value == "":
        return None
    try:
        ms = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"time_spent_ms: expected an integer, got {value!r}") from None
    if not 0 <= ms <= MAX_TIME_MS:
        raise Invalid(f"time_spent_ms: expected 0..{MAX_TIME_MS}, got {ms}")
    return ms
