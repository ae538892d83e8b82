"""Chat templates and loss masks (rlhfkit.data.templates) on a tiny trained tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit.data.templates import (
    DEFAULT_TEMPLATE,
    IGNORE_INDEX,
    PLAIN_TEMPLATE,
    TokenizedExample,
    assistant_spans,
    render,
    resolve_template,
    tokenize_conversation,
    tokenize_prompt,
    truncate,
)
from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError
from rlhfkit.models.tiny import EOS, TINY_CHAT_TEMPLATE, train_tokenizer

CORPUS = [
    "What is 2 + 3?",
    "5",
    "Compute 7 * 8.",
    "56",
    "The answer is 12.",
    "Then the answer is the cake.",
    "How can I help my neighbor?",
    "Hello there, how are you?",
    "Bake them a cake.",
    "User: Assistant: System:",
    "You are a helpful assistant.",
]

Q1 = Message("user", "What is 2 + 3?")
A1 = Message("assistant", "5")
Q2 = Message("user", "Compute 7 * 8.")
A2 = Message("assistant", "56")
TWO_TURNS = (Q1, A1, Q2, A2)

# Renders the conversation backwards: prefixes are not prefixes of the whole.
REVERSED_TEMPLATE = (
    "{% for m in messages | reverse %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def tiny_template(tok) -> str:
    return resolve_template(tok, "auto")


def labelled(ex: TokenizedExample) -> list[int]:
    return [lab for lab in ex.labels if lab != IGNORE_INDEX]


def labelled_text(tok, ex: TokenizedExample) -> str:
    return tok.decode(labelled(ex))


def label_runs(ex: TokenizedExample) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs: list[list[int]] = []
    prev = False
    for tid, lab in zip(ex.input_ids, ex.labels, strict=True):
        on = lab != IGNORE_INDEX
        if on:
            assert lab == tid  # a label is always the token at its own position
            if not prev:
                runs.append([])
            runs[-1].append(tid)
        prev = on
    return runs


# ---------------------------------------------------------------- the tokenizer


def test_tokenizer_basics(tok) -> None:
    assert len(tok) == 300
    assert tok.eos_token == EOS
    assert tok.pad_token == "<|pad|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == TINY_CHAT_TEMPLATE


def test_digits_are_split_one_by_one(tok) -> None:
    ids = tok("1234", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4
    assert [tok.decode([i]) for i in ids] == ["1", "2", "3", "4"]
    # even digits the corpus shows side by side ("56", "12") stay separate
    assert len(tok("56 12", add_special_tokens=False)["input_ids"]) == 5


# ---------------------------------------------------------------- label masking


def test_single_turn_labels_only_the_answer_and_eos(tok, tiny_template) -> None:
    ex = tokenize_conversation(tok, tiny_template, [Q1, A1], max_length=128)
    assert len(ex.input_ids) == len(ex.labels)
    assert labelled_text(tok, ex) == "5<|endoftext|>"
    # everything before the answer is masked, the labelled tail is the answer + EOS
    n = len(labelled(ex))
    assert n == 2
    assert ex.labels[:-n] == [IGNORE_INDEX] * (len(ex) - n)
    assert ex.labels[-n:] == ex.input_ids[-n:]
    assert ex.input_ids[-1] == tok.eos_token_id
    assert not ex.prompt_truncated and not ex.completion_truncated
    # the token ids spell the rendered conversation
    assert tok.decode(ex.input_ids) == "<|user|>What is 2 + 3?<|assistant|>5<|endoftext|>"


def test_role_tokens_are_never_labelled(tok, tiny_template) -> None:
    ex = tokenize_conversation(tok, tiny_template, TWO_TURNS, max_length=128)
    assistant_id = tok.convert_tokens_to_ids("<|assistant|>")
    user_id = tok.convert_tokens_to_ids("<|user|>")
    for tid, lab in zip(ex.input_ids, ex.labels, strict=True):
        if tid in (assistant_id, user_id):
            assert lab == IGNORE_INDEX


def test_multi_turn_labels_every_assistant_turn(tok, tiny_template) -> None:
    ex = tokenize_conversation(tok, tiny_template, TWO_TURNS, max_length=128)
    runs = label_runs(ex)
    assert [tok.decode(r) for r in runs] == ["5<|endoftext|>", "56<|endoftext|>"]


def test_multi_turn_last_only(tok, tiny_template) -> None:
    ex = tokenize_conversation(tok, tiny_template, TWO_TURNS, max_length=128, last_only=True)
    runs = label_runs(ex)
    assert [tok.decode(r) for r in runs] == ["56<|endoftext|>"]
    # same tokens as the full mask; only the labels differ
    full = tokenize_conversation(tok, tiny_template, TWO_TURNS, max_length=128)
    assert ex.input_ids == full.input_ids


def test_system_message_is_masked(tok, tiny_template) -> None:
    msgs = [Message("system", "You are a helpful assistant."), Q1, A1]
    ex = tokenize_conversation(tok, tiny_template, msgs, max_length=128)
    assert labelled_text(tok, ex) == "5<|endoftext|>"


def test_assistant_spans_are_character_spans(tok, tiny_template) -> None:
    text, spans = assistant_spans(tok, tiny_template, TWO_TURNS)
    assert [text[s:e] for s, e in spans] == ["5<|endoftext|>", "56<|endoftext|>"]


def test_conversation_without_assistant_has_no_labels(tok, tiny_template) -> None:
    ex = tokenize_conversation(tok, tiny_template, [Q1], max_length=128)
    assert labelled(ex) == []
    assert len(ex) > 0


# ---------------------------------------------------------------- resolving templates


def test_resolve_named_templates(tok) -> None:
    assert resolve_template(tok, "default") == DEFAULT_TEMPLATE
    assert resolve_template(tok, "plain") == PLAIN_TEMPLATE
    assert resolve_template(tok, "auto") == TINY_CHAT_TEMPLATE
    assert resolve_template(tok) == TINY_CHAT_TEMPLATE


def test_auto_without_own_template_is_default(tok) -> None:
    bare = tok.__class__(tokenizer_object=tok.backend_tokenizer, eos_token=EOS, pad_token="<|pad|>")
    bare.chat_template = None
    assert resolve_template(bare, "auto") == DEFAULT_TEMPLATE


def test_inline_jinja_is_used_as_is(tok) -> None:
    assert resolve_template(tok, REVERSED_TEMPLATE) == REVERSED_TEMPLATE


def test_template_from_file(tok, tmp_path: Path) -> None:
    path = tmp_path / "chat.jinja"
    path.write_text(PLAIN_TEMPLATE, encoding="utf-8")
    template = resolve_template(tok, str(path))
    assert template == PLAIN_TEMPLATE
    ex = tokenize_conversation(tok, template, [Q1, A1], max_length=128)
    assert labelled_text(tok, ex) == "5<|endoftext|>"


def test_missing_template_file(tok, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(ConfigError, match="key 'template'") as info:
        resolve_template(tok, str(missing))
    assert "no such file" in str(info.value)
    assert str(missing) in str(info.value)


def test_default_template_rendering_and_mask(tok) -> None:
    template = resolve_template(tok, "default")
    assert render(tok, template, TWO_TURNS, add_generation_prompt=False) == (
        "User: What is 2 + 3?\nAssistant: 5<|endoftext|>\n"
        "User: Compute 7 * 8.\nAssistant: 56<|endoftext|>\n"
    )
    assert render(tok, template, [Q1], add_generation_prompt=True) == (
        "User: What is 2 + 3?\nAssistant:"
    )
    ex = tokenize_conversation(tok, template, TWO_TURNS, max_length=128)
    # each span covers the turn and what the template ends it with (EOS and newline)
    assert [tok.decode(r) for r in label_runs(ex)] == [" 5<|endoftext|>\n", " 56<|endoftext|>\n"]


def test_plain_template_rendering_and_mask(tok) -> None:
    template = resolve_template(tok, "plain")
    assert render(tok, template, TWO_TURNS, add_generation_prompt=False) == (
        "What is 2 + 3?5<|endoftext|>Compute 7 * 8.56<|endoftext|>"
    )
    ex = tokenize_conversation(tok, template, TWO_TURNS, max_length=128)
    assert [tok.decode(r) for r in label_runs(ex)] == ["5<|endoftext|>", "56<|endoftext|>"]


def test_default_template_labels_the_first_word_of_the_reply(tok) -> None:
    template = resolve_template(tok, "default")
    msgs = [Message("user", "What is 2 + 3?"), Message("assistant", "the answer is 5.")]
    assert tok.tokenize("Assistant: the answer")[2] == "Ġthe"  # the space is merged
    ex = tokenize_conversation(tok, template, msgs, max_length=128)
    assert "the answer is 5." in labelled_text(tok, ex)


def test_non_prefix_consistent_template_is_rejected(tok) -> None:
    with pytest.raises(ConfigError, match=r"key 'template'.*prefix"):
        tokenize_conversation(tok, REVERSED_TEMPLATE, [Q1, A1], max_length=128)


# ---------------------------------------------------------------- truncation


def test_long_prompt_is_cut_on_the_left(tok, tiny_template) -> None:
    long_q = Message("user", "How can I help my neighbor? " * 10 + "What is 2 + 3?")
    full = tokenize_conversation(tok, tiny_template, [long_q, A1], max_length=4096)
    assert len(full) > 12
    ex = tokenize_conversation(tok, tiny_template, [long_q, A1], max_length=12)
    assert len(ex) == 12
    assert ex.prompt_truncated and not ex.completion_truncated
    assert labelled(ex) == labelled(full)
    assert labelled_text(tok, ex) == "5<|endoftext|>"
    # the kept tokens are the tail of the full example
    assert ex.input_ids == full.input_ids[-12:]
    assert ex.labels == full.labels[-12:]


def test_long_completion_is_cut_on_the_right(tok, tiny_template) -> None:
    answer = Message("assistant", "1234567890" * 3)
    full = tokenize_conversation(tok, tiny_template, [Q1, answer], max_length=4096)
    ex = tokenize_conversation(tok, tiny_template, [Q1, answer], max_length=10)
    assert len(ex) == 10
    assert ex.completion_truncated
    # the prompt goes first; what is left is the start of the completion
    assert ex.prompt_truncated
    assert all(lab != IGNORE_INDEX for lab in ex.labels)
    assert tok.decode(ex.input_ids) == "1234567890"
    first = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    assert ex.input_ids == full.input_ids[first : first + 10]


def test_no_truncation_when_it_fits(tok, tiny_template) -> None:
    full = tokenize_conversation(tok, tiny_template, [Q1, A1], max_length=4096)
    ex = tokenize_conversation(tok, tiny_template, [Q1, A1], max_length=len(full))
    assert ex == full
    assert not ex.prompt_truncated and not ex.completion_truncated


def test_truncate_on_hand_made_example() -> None:
    ex = TokenizedExample([1, 2, 3, 4, 5, 6], [-100, -100, -100, 4, 5, 6])
    cut = truncate(ex, 4)
    assert cut == TokenizedExample([3, 4, 5, 6], [-100, 4, 5, 6], True, False)
    cut = truncate(ex, 2)
    assert cut == TokenizedExample([4, 5], [4, 5], True, True)
    assert truncate(ex, 6) is ex


# ---------------------------------------------------------------- tokenize_prompt


def test_tokenize_prompt_opens_the_assistant_turn(tok, tiny_template) -> None:
    ids = tokenize_prompt(tok, tiny_template, [Q1], max_length=128)
    assistant_id = tok.convert_tokens_to_ids("<|assistant|>")
    assert ids[-1] == assistant_id
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert tok.decode(ids) == "<|user|>What is 2 + 3?<|assistant|>"
    # it is the prefix of the tokenized conversation
    conv = tokenize_conversation(tok, tiny_template, [Q1, A1], max_length=128)
    assert conv.input_ids[: len(ids)] == ids


def test_tokenize_prompt_is_left_truncated(tok, tiny_template) -> None:
    full = tokenize_prompt(tok, tiny_template, [Q1], max_length=4096)
    ids = tokenize_prompt(tok, tiny_template, [Q1], max_length=5)
    assert len(ids) == 5
    assert ids == full[-5:]
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
