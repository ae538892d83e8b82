"""Validation of single rows into records (rlhfkit.data.records)."""

from __future__ import annotations

from typing import Any

import pytest

from rlhfkit.data.records import (
    InvalidRecord,
    parse_preference,
    parse_prompt,
    parse_sft,
    split_hh,
)
from rlhfkit.data.types import (
    Message,
    PreferenceRecord,
    PromptRecord,
    RankedPair,
    RankingRecord,
    SFTRecord,
)
from rlhfkit.errors import Location

LOC = Location("bad.jsonl", 3)
U = Message("user", "What is 2+2?")


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def errors_of(parser: Any, row: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidRecord) as info:
        parser(row, LOC)
    return [str(issue) for issue in info.value.issues]


# ---------------------------------------------------------------- SFT


def test_sft_prompt_answer() -> None:
    rec = parse_sft({"prompt": "What is 2+2?", "answer": "4"}, LOC)
    assert isinstance(rec, SFTRecord)
    assert rec.messages == (U, Message("assistant", "4"))
    assert rec.location == LOC


def test_sft_completion_key_and_message_prompt() -> None:
    row = {"prompt": [msg("system", "Be brief."), msg("user", "Hi")], "completion": "Hello"}
    rec = parse_sft(row, LOC)
    assert rec.messages == (
        Message("system", "Be brief."),
        Message("user", "Hi"),
        Message("assistant", "Hello"),
    )


def test_sft_chat_messages() -> None:
    row = {
        "messages": [
            msg("user", "Hi"),
            msg("assistant", "Hello"),
            msg("user", "2+2?"),
            msg("assistant", "4"),
        ]
    }
    rec = parse_sft(row, LOC)
    assert [m.role for m in rec.messages] == ["user", "assistant", "user", "assistant"]
    assert rec.messages[-1].content == "4"


def test_sft_empty_answer() -> None:
    assert errors_of(parse_sft, {"prompt": "Hi", "answer": "  "}) == [
        "bad.jsonl:3: field 'answer': expected a non-empty string, got \"  \" (empty string)"
    ]


def test_sft_missing_answer_and_empty_prompt_reported_together() -> None:
    assert errors_of(parse_sft, {"prompt": ""}) == [
        "bad.jsonl:3: field 'prompt': expected a non-empty string or a list of messages, "
        'got "" (empty string)',
        "bad.jsonl:3: field 'answer': expected a non-empty string, "
        "got nothing (the field is missing)",
    ]


def test_sft_no_known_fields() -> None:
    assert errors_of(parse_sft, {"text": "hello"}) == [
        "bad.jsonl:3: field 'messages': expected a list of messages "
        "(or 'prompt' and 'answer' fields), got nothing (the field is missing)"
    ]


def test_sft_wrong_type() -> None:
    assert errors_of(parse_sft, {"prompt": "Hi", "answer": 42}) == [
        "bad.jsonl:3: field 'answer': expected a non-empty string, got 42 (number)"
    ]


def test_sft_chat_without_assistant() -> None:
    assert errors_of(parse_sft, {"messages": [msg("user", "Hi")]}) == [
        "bad.jsonl:3: field 'messages': expected at least one assistant message, "
        'got [{"role": "user", "content": "Hi"}] (list of 1)'
    ]


def test_bad_role_and_content_all_reported() -> None:
    row = {"messages": [msg("user", "Hi"), {"role": "bot", "content": 5}, "hello"]}
    assert errors_of(parse_sft, row) == [
        "bad.jsonl:3: field 'messages[1].role': expected one of 'system', 'user', "
        "'assistant', 'tool', got \"bot\" (string)",
        "bad.jsonl:3: field 'messages[1].content': expected a string, got 5 (number)",
        "bad.jsonl:3: field 'messages[2]': expected an object with 'role' and 'content', "
        'got "hello" (string)',
    ]


def test_missing_role() -> None:
    assert errors_of(parse_sft, {"messages": [{"content": "Hi"}, msg("assistant", "a")]}) == [
        "bad.jsonl:3: field 'messages[0].role': expected one of 'system', 'user', "
        "'assistant', 'tool', got nothing (the field is missing)"
    ]


# ---------------------------------------------------------------- preferences


def test_preference_explicit_prompt() -> None:
    row = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "margin": 2}
    rec = parse_preference(row, LOC)
    assert rec == PreferenceRecord(prompt=(U,), chosen="4", rejected="5", margin=2.0, location=LOC)
    assert isinstance(rec.margin, float)


def test_preference_message_responses_with_prompt() -> None:
    row = {
        "prompt": [msg("user", "What is 2+2?")],
        "chosen": [msg("assistant", "4")],
        "rejected": [msg("assistant", "5")],
        "margin_label": "significantly_better",
        "dimension": "helpfulness",
    }
    rec = parse_preference(row, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert (rec.prompt, rec.chosen, rec.rejected) == ((U,), "4", "5")
    assert rec.margin is None
    assert rec.margin_label == "significantly_better"
    assert rec.dimension == "helpfulness"


def test_preference_full_conversations_repeating_the_prompt() -> None:
    """UltraFeedback-binarized style: prompt string + full conversations."""
    row = {
        "prompt": "What is 2+2?",
        "chosen": [msg("user", "What is 2+2?"), msg("assistant", "4")],
        "rejected": [msg("user", "What is 2+2?"), msg("assistant", "5")],
    }
    rec = parse_preference(row, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert (rec.prompt, rec.chosen, rec.rejected) == ((U,), "4", "5")


def test_preference_explicit_prompt_rejects_multi_message_response() -> None:
    row = {
        "prompt": "Hi",
        "chosen": [msg("assistant", "a"), msg("assistant", "b")],
        "rejected": "c",
    }
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'chosen': expected a non-empty string or a list with one "
        'assistant message, got [{"role": "assistant", "content": "a"}, {"role": "assista... '
        "(list of 2)"
    ]


def test_preference_implicit_prompt_from_message_lists() -> None:
    shared = [msg("system", "Be brief."), msg("user", "What is 2+2?")]
    row = {
        "chosen": [*shared, msg("assistant", "4")],
        "rejected": [*shared, msg("assistant", "5")],
    }
    rec = parse_preference(row, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert rec.prompt == (Message("system", "Be brief."), U)
    assert (rec.chosen, rec.rejected) == ("4", "5")


def test_preference_implicit_prompt_remainder_must_be_one_assistant_message() -> None:
    row = {
        "chosen": [msg("user", "Hi"), msg("assistant", "a"), msg("user", "more")],
        "rejected": [msg("user", "Hi"), msg("assistant", "b")],
    }
    errors = errors_of(parse_preference, row)
    assert len(errors) == 1
    assert errors[0].startswith(
        "bad.jsonl:3: field 'chosen': expected a conversation that ends with exactly one "
        "assistant message after the shared prompt, got "
    )


HH_SINGLE_CHOSEN = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
HH_SINGLE_REJECTED = "\n\nHuman: What is 2+2?\n\nAssistant: It is 5."
HH_MULTI_PREFIX = (
    "\n\nHuman: Hi there!\n\nAssistant: Hello, how can I help?"
    "\n\nHuman:   Tell me a joke. \n\nAssistant:"
)


def test_hh_single_turn() -> None:
    rec = parse_preference({"chosen": HH_SINGLE_CHOSEN, "rejected": HH_SINGLE_REJECTED}, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert rec.prompt == (U,)
    assert rec.chosen == "It is 4."
    assert rec.rejected == "It is 5."


def test_hh_multi_turn() -> None:
    chosen = HH_MULTI_PREFIX + " Why did the chicken cross the road?\n"
    rejected = HH_MULTI_PREFIX + " No."
    rec = parse_preference({"chosen": chosen, "rejected": rejected}, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert rec.prompt == (
        Message("user", "Hi there!"),
        Message("assistant", "Hello, how can I help?"),
        Message("user", "Tell me a joke."),
    )
    assert rec.chosen == "Why did the chicken cross the road?"
    assert rec.rejected == "No."


def test_split_hh_responses_sharing_a_prefix() -> None:
    prompt, chosen, rejected = split_hh(
        "\n\nHuman: Count.\n\nAssistant: 1 2 3", "\n\nHuman: Count.\n\nAssistant: 1 2 4"
    )
    assert prompt == (Message("user", "Count."),)
    assert (chosen, rejected) == ("1 2 3", "1 2 4")


def test_split_hh_without_shared_assistant_turn() -> None:
    with pytest.raises(ValueError, match="share no"):
        split_hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


def test_plain_strings_without_prompt() -> None:
    assert errors_of(parse_preference, {"chosen": "yes", "rejected": "no"}) == [
        "bad.jsonl:3: field 'prompt': expected a 'prompt' field or HH-style transcripts "
        "with a shared '\\n\\nAssistant:' turn, got nothing (the field is missing)"
    ]


def test_chosen_equals_rejected() -> None:
    row = {"prompt": "Hi", "chosen": "Hello", "rejected": " Hello\n"}
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'rejected': expected a response different from 'chosen', "
        'got " Hello\\n" (string)'
    ]


def test_preference_missing_fields_and_bad_options_all_reported() -> None:
    row = {"prompt": "Hi", "chosen": "", "margin": "big", "margin_label": "way_better"}
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'chosen': expected a non-empty string, got \"\" (empty string)",
        "bad.jsonl:3: field 'rejected': expected a non-empty string or a list with one "
        "assistant message, got nothing (the field is missing)",
        "bad.jsonl:3: field 'margin': expected a finite number, got \"big\" (string)",
        "bad.jsonl:3: field 'margin_label': expected one of 'significantly_better', "
        "'better', 'slightly_better', 'negligibly_better', got \"way_better\" (string)",
    ]


def test_bad_dimension_and_boolean_margin() -> None:
    row = {"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": True, "dimension": "fun"}
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'margin': expected a finite number, got true (boolean)",
        "bad.jsonl:3: field 'dimension': expected one of 'helpfulness', 'safety', "
        'got "fun" (string)',
    ]


def test_null_optional_fields_are_absent() -> None:
    row = {"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": None, "dimension": None}
    rec = parse_preference(row, LOC)
    assert isinstance(rec, PreferenceRecord)
    assert rec.margin is None and rec.dimension is None


# ---------------------------------------------------------------- rankings


def test_ranking_k4_expands_to_six_pairs() -> None:
    row = {
        "prompt": "Rank these",
        "responses": ["a", "b", [msg("assistant", "c")], "d"],
        "rank": [2, 1, 4, 3],
        "dimension": "safety",
    }
    rec = parse_preference(row, LOC)
    assert isinstance(rec, RankingRecord)
    assert rec.responses == ("a", "b", "c", "d")
    assert rec.rank == (2, 1, 4, 3)
    assert rec.dimension == "safety"
    pairs = rec.pairs(group=7)
    assert len(pairs) == 6
    assert {(p.better, p.worse): p.gap for p in pairs} == {
        (1, 0): 1,
        (0, 2): 2,
        (0, 3): 1,
        (1, 2): 3,
        (1, 3): 2,
        (3, 2): 1,
    }
    assert all(p.group == 7 for p in pairs)
    prefs = rec.preference_records()
    assert len(prefs) == 6
    assert ("b", "c", 3.0) in {(p.chosen, p.rejected, p.margin) for p in prefs}


def test_ranking_with_tie_gives_fewer_pairs() -> None:
    row = {"prompt": "Rank", "responses": ["a", "b", "c", "d"], "rank": [1, 2, 2, 3]}
    rec = parse_preference(row, LOC)
    assert isinstance(rec, RankingRecord)
    pairs = rec.pairs()
    assert len(pairs) == 5
    assert RankedPair(0, 1, 2, 1) not in pairs
    assert RankedPair(0, 0, 3, 2) in pairs


def test_ranking_rank_length_mismatch() -> None:
    row = {"prompt": "Rank", "responses": ["a", "b", "c", "d"], "rank": [1, 2]}
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'rank': expected a list of 4 integers >= 1 (one per response, "
        "1 = best), got [1, 2] (list of 2)"
    ]


def test_ranking_bad_values() -> None:
    row = {"responses": ["a", ""], "rank": [1, 0]}
    assert errors_of(parse_preference, row) == [
        "bad.jsonl:3: field 'prompt': expected a non-empty string or a list of messages, "
        "got nothing (the field is missing)",
        "bad.jsonl:3: field 'responses[1]': expected a non-empty string, got \"\" (empty string)",
        "bad.jsonl:3: field 'rank': expected a list of 2 integers >= 1 (one per response, "
        "1 = best), got [1, 0] (list of 2)",
    ]


def test_ranking_too_few_responses_and_all_ties() -> None:
    assert errors_of(parse_preference, {"prompt": "P", "responses": ["a"], "rank": [1]}) == [
        "bad.jsonl:3: field 'responses': expected a list of 2 to 9 responses, "
        'got ["a"] (list of 1)'
    ]
    assert errors_of(
        parse_preference, {"prompt": "P", "responses": ["a", "b"], "rank": [2, 2]}
    ) == [
        "bad.jsonl:3: field 'rank': expected at least two different ranks "
        "(all equal means no preference), got [2, 2] (list of 2)"
    ]


# ---------------------------------------------------------------- prompts


def test_prompt_record_keeps_extra_fields() -> None:
    rec = parse_prompt({"prompt": "What is 2+2?", "answer": "4", "id": 17}, LOC)
    assert isinstance(rec, PromptRecord)
    assert rec.prompt == (U,)
    assert rec.extra == {"answer": "4", "id": 17}
    assert rec.location == LOC


def test_prompt_record_from_messages() -> None:
    row = {"messages": [msg("system", "Be brief."), msg("user", "Hi")], "tag": "x"}
    rec = parse_prompt(row, LOC)
    assert rec.prompt == (Message("system", "Be brief."), Message("user", "Hi"))
    assert rec.extra == {"tag": "x"}


def test_prompt_record_ending_with_assistant() -> None:
    row = {"messages": [msg("user", "Hi"), msg("assistant", "Hello")]}
    errors = errors_of(parse_prompt, row)
    assert len(errors) == 1
    assert errors[0].startswith(
        "bad.jsonl:3: field 'messages': expected a conversation that ends with a user message, got "
    )


def test_prompt_record_missing() -> None:
    assert errors_of(parse_prompt, {"question": "Hi"}) == [
        "bad.jsonl:3: field 'prompt': expected a non-empty string or a list of messages "
        "(or a 'messages' field), got nothing (the field is missing)"
    ]
