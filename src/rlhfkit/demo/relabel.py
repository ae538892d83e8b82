"""The built-in task's hindsight relabeling for HIR: the prompt a response is right for.

``--set relabel_fn=rlhfkit.demo.relabel:relabel``. For each sampled response:

* arithmetic: a correct answer keeps its prompt; a wrong number ``n`` gets the prompt
  with the same template, operator and first operand whose answer is ``n`` (else the
  same second operand); a worked answer ``a op b = n`` gets the prompt ``a op b`` when
  the sum is right; refusals and answers no prompt fits are dropped;
* harmful requests: a refusal keeps its prompt; a compliance is dropped (no request
  makes it right);
* benign requests: the right answer keeps its prompt; the answer of another benign
  request gets that request (same person); a refusal gets the harmful look-alike
  (``How can I help X?`` refused -> ``How can I hurt X?``), where refusing is right.

New prompts come from the task's training split only, so relabeling never trains on
a held-out prompt; a response whose only fitting prompt is held out is dropped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from rlhfkit.demo.task import (
    ARITHMETIC_TEMPLATES,
    BENIGN_TEMPLATES,
    HARMFUL_TEMPLATES,
    Task,
    TaskPrompt,
    is_refusal,
)

_INT_RE = re.compile(r"-?\d+")
_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}


class TaskRelabeler:
    """The relabeling of one :class:`Task` (its operand range and split)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def train_prompt(self, text: str) -> str | None:
        """``text`` when it is a training prompt of the task, else None."""
        try:
            return text if self.task.split_of(text) == "train" else None
        except ValueError:
            return None

    def __call__(self, prompt: str, completion: str) -> str | None:
        try:
            p = self.task.lookup(prompt)
        except ValueError:
            return None
        text = completion.strip()
        if p.kind == "arithmetic":
            return self._arithmetic(p, text)
        if p.kind == "harmful":
            return p.text if is_refusal(text) else None
        return self._benign(p, text)

    def _arithmetic(self, p: TaskPrompt, text: str) -> str | None:
        assert p.a is not None and p.b is not None and p.op is not None
        if is_refusal(text):
            return None
        numbers = [int(x) for x in _INT_RE.findall(text)]
        template = next(
            t for t in ARITHMETIC_TEMPLATES if t.format(a=p.a, op=p.op, b=p.b) == p.text
        )
        op = _OPS[p.op]
        if len(numbers) == 1:
            n = numbers[0]
            if n == p.answer:
                return p.text
            # the second operand rewritten, else the first
            for a, b in [(p.a, b) for b in self._operands()] + [(a, p.b) for a in self._operands()]:
                if op(a, b) == n and (
                    found := self.train_prompt(template.format(a=a, op=p.op, b=b))
                ):
                    return found
            return None
        if len(numbers) == 3 and op(numbers[0], numbers[1]) == numbers[2]:
            return self.train_prompt(template.format(a=numbers[0], op=p.op, b=numbers[1]))
        return None

    def _operands(self) -> range:
        lo, hi = self.task.config.operands
        return range(lo, hi + 1)

    def _benign(self, p: TaskPrompt, text: str) -> str | None:
        if is_refusal(text):
            benign = list(BENIGN_TEMPLATES)
            harmful = list(HARMFUL_TEMPLATES)
            twin = harmful[benign.index(p.template)] if p.template in benign else None
            for t in [twin, *harmful]:
                if t and (found := self.train_prompt(t.format(person=p.person))):
                    return found
            return None
        for t, answers in BENIGN_TEMPLATES.items():
            if text in answers:
                return p.text if t == p.template else self.train_prompt(t.format(person=p.person))
        return None

    def relabel(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list:
        """The relabel-function signature (:mod:`rlhfkit.rollout.relabel`)."""
        return [self(p, c) for p, c in zip(prompts, completions, strict=True)]


@functools.cache
def _default() -> TaskRelabeler:
    return TaskRelabeler(Task())


def relabel(prompts: Sequence[str], completions: Sequence[str], **fields: Any) -> list:
    """HIR relabeling for the default built-in task (``Task()``); for another
    :class:`~rlhfkit.demo.task.TaskConfig` use ``TaskRelabeler(Task(config)).relabel``."""
    return _default().relabel(prompts, completions)
