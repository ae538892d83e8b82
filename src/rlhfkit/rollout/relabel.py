"""Relabel functions for HIR: rewrite a prompt so that the sampled response is right for it.

A relabel function is called like a reward function (see
:mod:`rlhfkit.rollout.rewards`), once per batch of samples, with keyword arguments:

* ``prompts``: the text of each prompt's last user message;
* ``completions``: the sampled responses;
* ``conversations``: each whole prompt as a list of ``{"role", "content"}``;
* every other field of the prompt records as a list under its own name (``answer``,
  ``kind``, ...).

It returns one entry per completion: the new text of the last user message (a
string), a whole new conversation (a list of ``{"role", "content"}`` ending with a user
message), or ``None`` when no instruction fits (the sample is dropped and counted).
Returning the prompt unchanged keeps a sample that was already right. Accept
``**fields`` to ignore what you do not use. Load one with ``module:function`` or
``path/file.py:function``; the built-in task's is ``rlhfkit.demo.relabel:relabel``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from rlhfkit.data.types import Conversation, Message
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.rewards import load_function


def _last_user_text(prompt: Conversation) -> str:
    users = [m for m in prompt if m.role == "user"]
    return users[-1].content if users else ""


def _replace_last_user(prompt: Conversation, text: str) -> Conversation:
    idx = max((i for i, m in enumerate(prompt) if m.role == "user"), default=len(prompt) - 1)
    return (*prompt[:idx], Message("user", text), *prompt[idx + 1 :])


class Relabeler:
    """A user relabel function with the call convention above."""

    def __init__(self, fn: Callable[..., Any] | str) -> None:
        self.spec = fn if isinstance(fn, str) else getattr(fn, "__name__", "relabel")
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        params = inspect.signature(self.fn).parameters.values()
        self._takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._accepts = {p.name for p in params}

    def __call__(
        self,
        prompts: Sequence[Conversation],
        completions: Sequence[str],
        fields: Sequence[dict[str, Any]],
    ) -> list[Conversation | None]:
        kwargs: dict[str, Any] = {
            "prompts": [_last_user_text(p) for p in prompts],
            "completions": list(completions),
            "conversations": [[m.as_dict() for m in p] for p in prompts],
        }
        for key in sorted({k for f in fields for k in f}):
            kwargs.setdefault(key, [f.get(key) for f in fields])
        if not self._takes_any:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        out = list(self.fn(**kwargs))
        if len(out) != len(completions):
            raise ConfigError(
                f"key 'relabel_fn': {self.spec} returned {len(out)} prompts for "
                f"{len(completions)} completions"
            )
        return [
            self._conversation(p, new, i)
            for i, (p, new) in enumerate(zip(prompts, out, strict=True))
        ]

    def _conversation(self, prompt: Conversation, new: Any, i: int) -> Conversation | None:
        if new is None:
            return None
        if isinstance(new, str):
            return _replace_last_user(prompt, new)
        if isinstance(new, list | tuple) and new:
            try:
                conv = tuple(Message(str(m["role"]), str(m["content"])) for m in new)
            except (KeyError, TypeError):
                conv = ()
            if conv and conv[-1].role == "user":
                return conv
        raise ConfigError(
            f"key 'relabel_fn': {self.spec} returned {new!r} for completion {i}; expected a "
            "string, a list of {'role', 'content'} messages ending with a user message, or None"
        )
