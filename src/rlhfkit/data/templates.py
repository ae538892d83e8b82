"""Rendering conversations with chat templates, and tokenizing them with a loss mask.

The template is the tokenizer's own (``template: auto``); a tokenizer without
one gets :data:`DEFAULT_TEMPLATE`. ``template: plain`` concatenates the message
texts (for base models trained on raw continuations) and ends assistant turns
with EOS. Any other value is a Jinja template, inline or as a file path.

Tokens of assistant turns are found by rendering the conversation up to each
assistant turn (with and without the generation prompt) and mapping those
character spans onto the tokens through the fast tokenizer's offsets (a token
that overlaps a span is labelled), so the mask is right for any template that
renders prefixes consistently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError

IGNORE_INDEX = -100

# Used when a tokenizer has no chat template of its own.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n"
    "{% else %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
)


def resolve_template(tokenizer, template: str = "auto") -> str:
    """The Jinja text of the chat template named by ``template``."""
    if template == "auto":
        own = getattr(tokenizer, "chat_template", None)
        return own if isinstance(own, str) and own else DEFAULT_TEMPLATE
    if template == "default":
        return DEFAULT_TEMPLATE
    if template == "plain":
        return PLAIN_TEMPLATE
    if "{" not in template:
        path = Path(template)
        if not path.is_file():
            raise ConfigError(
                f"key 'template': expected auto, default, plain, a Jinja string or a file, "
                f"got {template!r} (no such file)"
            )
        return path.read_text(encoding="utf-8")
    return template


def render(
    tokenizer, template: str, messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    """The conversation as text, through ``template`` (a resolved Jinja string)."""
    return tokenizer.apply_chat_template(
        [m.as_dict() for m in messages],
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    prompt_truncated: bool = False
    completion_truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


def assistant_spans(
    tokenizer, template: str, messages: Sequence[Message], last_only: bool = False
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its assistant turns
    (each span covers the turn's text and whatever the template ends it with)."""
    full = render(tokenizer, template, messages, add_generation_prompt=False)
    idx = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if last_only:
        idx = idx[-1:]
    spans = []
    for i in idx:
        start_text = render(tokenizer, template, messages[:i], add_generation_prompt=True)
        end_text = render(tokenizer, template, messages[: i + 1], add_generation_prompt=False)
        if not (full.startswith(start_text) and full.startswith(end_text)):
            raise ConfigError(
                "key 'template': the chat template does not render a conversation's prefix as a "
                "prefix of the whole conversation, so assistant tokens cannot be located; "
                "set 'template' to a template that does"
            )
        spans.append((len(start_text), len(end_text)))
    return full, spans


def tokenize_conversation(
    tokenizer,
    template: str,
    messages: Sequence[Message],
    max_length: int,
    last_only: bool = False,
) -> TokenizedExample:
    """Token ids with labels on assistant turns only (``IGNORE_INDEX`` elsewhere).

    Longer than ``max_length``: the prompt is cut from the left first (the
    completion is what is learned); if the completion alone is too long it is
    cut on the right. Both are flagged so callers can count them.
    """
    text, spans = assistant_spans(tokenizer, template, messages, last_only)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    labels = [IGNORE_INDEX] * len(ids)
    for t, (start, end) in enumerate(enc["offset_mapping"]):
        # A token that overlaps an assistant span is learned, including one that
        # starts before it (byte-level BPE merges the space before a reply's
        # first word into that word's token).
        if end > start and any(start < e and end > s for s, e in spans):
            labels[t] = ids[t]
    return truncate(TokenizedExample(ids, labels), max_length)


def truncate(ex: TokenizedExample, max_length: int) -> TokenizedExample:
    excess = len(ex.input_ids) - max_length
    if excess <= 0:
        return ex
    first = next((i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX), len(ex.labels))
    cut_left = min(excess, first)
    ids, labels = ex.input_ids[cut_left:], ex.labels[cut_left:]
    cut_right = len(ids) - max_length
    if cut_right > 0:
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedExample(ids, labels, cut_left > 0, cut_right > 0)


def tokenize_prompt(
    tokenizer, template: str, prompt: Sequence[Message], max_length: int
) -> list[int]:
    """A prompt ready for generation (the assistant turn opened), left-truncated."""
    text = render(tokenizer, template, prompt, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_length:]
