"""Built-in reward functions for GRPO, PPO and rejection sampling.

Use them by name, with optional keyword arguments in the spec:

    --reward-fn rlhfkit.rewards:exact_answer
    --reward-fn "rlhfkit.rewards:overlong_penalty(max_length=32, cache=8)"
    --reward-fn "rlhfkit.rewards:format_regex(pattern='-?\\d+')"

Every reward function follows one signature (see :mod:`rlhfkit.rollout.rewards`): it
is called with keyword arguments ``prompts`` (the last user message of each prompt),
``completions`` (the sampled responses), ``conversations`` (whole prompts as
``{"role", "content"}`` lists), ``completion_length`` (response tokens, in online
stages), and every other field of the prompt records as a list under its own name
(``answer`` for the built-in task's arithmetic prompts). It returns one number per
completion. Accept ``**fields`` to ignore what you do not use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")

THINK_ANSWER = r"<think>.*?</think>\s*<answer>.*?</answer>"


def parse_number(text: Any) -> Fraction | None:
    """A number written as ``12``, ``-3``, ``1,024``, ``2.5`` or ``3/4``, exactly (or None)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        return Fraction(text)
    if isinstance(text, float):  # 0.1 means 1/10, not its binary approximation
        return Fraction(repr(text)) if math.isfinite(text) else None
    try:
        return Fraction(str(text).strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def last_number(text: str) -> Fraction | None:
    """The last number in ``text`` (the final answer of a worked solution), or None."""
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def exact_answer(
    completions: Sequence[str], answer: Sequence[Any] | None = None, **fields: Any
) -> list[float]:
    """1.0 when the last number of the completion equals the record's ``answer`` exactly
    (``12 == 12.0 == 24/2``), else 0.0; 0.0 for records without an answer. The math
    checker of the mission: a verifiable reward, no model involved."""
    answers = answer if answer is not None else [None] * len(completions)
    out = []
    for text, want in zip(completions, answers, strict=True):
        target = parse_number(want)
        got = last_number(text) if target is not None else None
        out.append(1.0 if got is not None and got == target else 0.0)
    return out


def _lengths(completions: Sequence[str], completion_length: Sequence[Any] | None) -> list[int]:
    """Token counts when the stage passes them, else whitespace-separated words."""
    if completion_length is not None:
        return [int(n) for n in completion_length]
    return [len(text.split()) for text in completions]


def overlong_penalty(
    completions: Sequence[str],
    completion_length: Sequence[Any] | None = None,
    max_length: int = 64,
    cache: int = 16,
    **fields: Any,
) -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to
    ``max_length - cache`` tokens, then falling linearly to -1 at ``max_length``, and
    -1 beyond it."""
    if not 0 <= cache <= max_length:
        raise ValueError(f"overlong_penalty: expected 0 <= cache <= max_length, got {cache}")
    out = []
    for n in _lengths(completions, completion_length):
        if n <= max_length - cache:
            out.append(0.0)
        elif n <= max_length and cache > 0:
            out.append((max_length - cache - n) / cache)
        else:
            out.append(-1.0)
    return out


def length_reward(
    completions: Sequence[str],
    completion_length: Sequence[Any] | None = None,
    coef: float = -0.01,
    cap: int = 0,
    **fields: Any,
) -> list[float]:
    """``coef x length`` (tokens, or words outside online stages); a negative ``coef``
    is a length penalty (the default), a positive one rewards longer answers; ``cap > 0``
    stops counting past ``cap``."""
    return [
        coef * (min(n, cap) if cap > 0 else n) for n in _lengths(completions, completion_length)
    ]


def format_regex(
    completions: Sequence[str], pattern: str = THINK_ANSWER, **fields: Any
) -> list[float]:
    """1.0 when the whole completion (stripped) matches ``pattern`` (``re.DOTALL``), else
    0.0. The default is the R1 format ``<think>...</think> <answer>...</answer>``."""
    regex = re.compile(pattern, re.DOTALL)
    return [1.0 if regex.fullmatch(text.strip()) else 0.0 for text in completions]
