"""Built-in reward functions (rlhfkit.rewards), reward specs with bound keyword arguments,
the plain (unnormalised) weighted sum and score_with_parts (rlhfkit.rollout.rewards).

Expected values are worked out by hand in the comments.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError
from rlhfkit.rewards import (
    exact_answer,
    format_regex,
    last_number,
    length_reward,
    overlong_penalty,
    parse_number,
)
from rlhfkit.rollout.rewards import (
    FunctionReward,
    SafetyGated,
    WeightedSum,
    build_reward_source,
    load_function,
)


def conv(text: str):
    return (Message("user", text),)


class Fixed:
    """A source returning given values (stands in for a reward model)."""

    def __init__(self, values, name):
        self.values, self.name = torch.tensor(values), name

    def score(self, prompts, completions, fields=None):
        return self.values.clone()


# ---------------------------------------------------------------- parse_number / last_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12", Fraction(12)),
        ("-3", Fraction(-3)),
        ("1,024", Fraction(1024)),
        ("2.5", Fraction(5, 2)),
        ("3/4", Fraction(3, 4)),
        ("  7 ", Fraction(7)),
        ("12.0", Fraction(12)),
        (12, Fraction(12)),
        (2.5, Fraction(5, 2)),  # exact in binary
    ],
)
def test_parse_number_reads_numbers_exactly(text, expected: Fraction) -> None:
    got = parse_number(text)
    assert isinstance(got, Fraction) and got == expected


@pytest.mark.parametrize(
    "text", [None, "", "abc", "1/0", "12 apples", True, float("nan"), float("inf")]
)
def test_parse_number_returns_none_for_non_numbers(text) -> None:
    assert parse_number(text) is None


def test_parse_number_float_equals_its_decimal_text() -> None:
    assert parse_number(0.1) == Fraction(1, 10)
    assert parse_number(3.14) == parse_number("3.14")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 42.", Fraction(42)),  # sentence full stop is not a decimal point
        ("2 + 3 = 5", Fraction(5)),
        ("first 7, then -12", Fraction(-12)),
        ("we have 1,024 apples", Fraction(1024)),
        ("half is 1/2", Fraction(1, 2)),
        ("x = 2.75 m", Fraction(11, 4)),
    ],
)
def test_last_number_is_the_final_number(text: str, expected: Fraction) -> None:
    assert last_number(text) == expected


def test_last_number_none_without_digits() -> None:
    assert last_number("no digits here") is None


# ---------------------------------------------------------------- exact_answer


def test_exact_answer_compares_the_last_number() -> None:
    completions = [
        "2 + 10 = 12",  # 12 == 12
        "It is 12.0",  # 12.0 == 12
        "24/2",  # 24/2 == 12
        "12 or maybe 13",  # last number 13 != 12
        "twelve",  # no number
        "1024",  # "1,024" == 1024
        "The answer: -4.",  # -4 == -4
    ]
    answers = [12, "12", "12", 12, 12, "1,024", -4]
    assert exact_answer(completions, answers) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]


def test_exact_answer_without_or_with_unparseable_answers_is_zero() -> None:
    assert exact_answer(["12", "5"]) == [0.0, 0.0]
    assert exact_answer(["12", "5"], [None, "five"]) == [0.0, 0.0]
    with pytest.raises(ValueError):  # one answer per completion
        exact_answer(["12", "5"], [12])


def test_exact_answer_ignores_other_fields() -> None:
    assert exact_answer(completions=["9"], answer=[9], prompts=["?"], kind=["x"]) == [1.0]


def test_exact_answer_with_a_float_answer() -> None:
    assert exact_answer(["The answer is 0.1", "1.1"], [0.1, 1.1]) == [1.0, 1.0]


# ---------------------------------------------------------------- overlong_penalty


def test_overlong_penalty_follows_dapo_eq_13() -> None:
    # max_length 32, cache 8: 0 up to 32 - 8 = 24 tokens, then (24 - n) / 8, -1 past 32
    #   n 10 -> 0; 24 -> 0; 25 -> -1/8; 28 -> -4/8; 31 -> -7/8; 32 -> -1; 33, 100 -> -1
    lengths = [10, 24, 25, 28, 31, 32, 33, 100]
    out = overlong_penalty(["x"] * 8, completion_length=lengths, max_length=32, cache=8)
    assert out == [0.0, 0.0, -0.125, -0.5, -0.875, -1.0, -1.0, -1.0]


def test_overlong_penalty_counts_words_without_token_lengths() -> None:
    # max_length 4, cache 2: threshold 2 words; 3 words -> (2 - 3) / 2 = -0.5
    out = overlong_penalty(["a b", "a b c", "a b c d e"], max_length=4, cache=2)
    assert out == [0.0, -0.5, -1.0]


def test_overlong_penalty_defaults_and_zero_cache() -> None:
    # defaults max_length 64, cache 16: 48 -> 0, 56 -> (48 - 56) / 16 = -0.5
    assert overlong_penalty(["x", "x"], completion_length=[48, 56]) == [0.0, -0.5]
    # cache 0: a hard cut, 0 up to max_length and -1 beyond
    assert overlong_penalty(["x"] * 2, completion_length=[10, 11], max_length=10, cache=0) == [
        0.0,
        -1.0,
    ]


@pytest.mark.parametrize("cache", [-1, 33])
def test_overlong_penalty_rejects_a_bad_cache(cache: int) -> None:
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(["x"], completion_length=[1], max_length=32, cache=cache)


# ---------------------------------------------------------------- length_reward


def test_length_reward_is_coef_times_length() -> None:
    # default coef -0.01: 10 tokens -> -0.1, 50 -> -0.5
    assert length_reward(["x", "x"], completion_length=[10, 50]) == pytest.approx([-0.1, -0.5])
    # cap 20: 50 counts as 20 -> -0.2; a positive coef rewards length
    out = length_reward(["x", "x"], completion_length=[10, 50], cap=20)
    assert out == pytest.approx([-0.1, -0.2])
    assert length_reward(["x"], completion_length=[7], coef=0.5) == pytest.approx([3.5])
    # words when no token lengths are given: 3 words x 2.0 = 6
    assert length_reward(["one two three"], coef=2.0) == pytest.approx([6.0])


# ---------------------------------------------------------------- format_regex


def test_format_regex_default_is_think_then_answer() -> None:
    completions = [
        "<think>2 + 3 is 5</think> <answer>5</answer>",
        "\n<think>multi\nline</think>\n<answer>5</answer>\n",  # DOTALL, stripped
        "<answer>5</answer>",  # no think
        "<think>a</think> <answer>5</answer> trailing",  # must match the whole text
        "<answer>5</answer><think>a</think>",  # wrong order
    ]
    assert format_regex(completions) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_format_regex_custom_pattern_matches_whole_text() -> None:
    assert format_regex(["42", " -7 ", "x42", "4 2"], pattern=r"-?\d+") == [1.0, 1.0, 0.0, 0.0]


# ---------------------------------------------------------------- specs with bound arguments


def test_spec_binds_keyword_arguments() -> None:
    fn = load_function("rlhfkit.rewards:overlong_penalty(max_length=32, cache=8)")
    # same numbers as DAPO eq. 13 above: 28 tokens -> -0.5 (the default 64/16 would give 0)
    assert fn(completions=["x"], completion_length=[28]) == [-0.5]
    assert fn.__name__ == "overlong_penalty"
    src = FunctionReward("rlhfkit.rewards:length_reward( coef = 2.0 , cap = 3 )")
    assert src.name == "length_reward"
    # words: 5 capped at 3 -> 6.0; 1 -> 2.0
    assert src.score([conv("q")] * 2, ["a b c d e", "a"]).tolist() == [6.0, 2.0]


def test_spec_binds_string_arguments() -> None:
    src = FunctionReward("rlhfkit.rewards:format_regex(pattern='-?[0-9]+')")
    assert src.score([conv("q")] * 3, ["-12", "12a", "7"]).tolist() == [1.0, 0.0, 1.0]
    escaped = load_function("rlhfkit.rewards:format_regex(pattern='-?\\\\d+')")  # '-?\\d+'
    assert escaped(completions=["-12", "x"]) == [1.0, 0.0]


def test_spec_with_empty_parentheses_is_the_plain_function() -> None:
    fn = load_function("rlhfkit.rewards:exact_answer()")
    assert fn is exact_answer


def test_spec_binds_arguments_of_a_function_in_a_file(tmp_path) -> None:
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def scaled(completions, scale=1.0):\n    return [scale * len(c) for c in completions]\n"
    )
    fn = load_function(f"{f}:scaled(scale=0.5)")
    assert fn(completions=["abcd", "ab"]) == [2.0, 1.0]
    with pytest.raises(ConfigError, match="no argument 'scael'"):
        load_function(f"{f}:scaled(scael=0.5)")


@pytest.mark.parametrize(
    "spec",
    [
        "rlhfkit.rewards:overlong_penalty(32)",  # positional
        "rlhfkit.rewards:overlong_penalty(32, cache=8)",  # positional and keyword
        "rlhfkit.rewards:overlong_penalty(max_length=n)",  # a name, not a literal
        "rlhfkit.rewards:overlong_penalty(max_length=len('abc'))",  # a call
        "rlhfkit.rewards:overlong_penalty(**{'max_length': 3})",  # ** unpacking
        "rlhfkit.rewards:overlong_penalty(max_length=)",  # syntax error
    ],
)
def test_spec_arguments_must_be_keyword_literals(spec: str) -> None:
    with pytest.raises(ConfigError, match="keyword=literal"):
        load_function(spec)


@pytest.mark.parametrize(
    "spec",
    [
        "rlhfkit.rewards:overlong_penalty(max_length=32, max_length=16)",  # repeated
        "rlhfkit.rewards:overlong_penalty(max_length=32)(cache=8)",  # chained call
    ],
)
def test_spec_repeated_or_chained_arguments_are_errors(spec: str) -> None:
    with pytest.raises(ConfigError):
        load_function(spec)


def test_misspelt_argument_of_a_builtin_reward_is_an_error() -> None:
    with pytest.raises(ConfigError, match="max_len"):
        load_function("rlhfkit.rewards:overlong_penalty(max_len=32)")


def test_bound_argument_wins_over_a_record_field_of_the_same_name() -> None:
    src = FunctionReward("rlhfkit.rewards:length_reward(coef=2.0)")
    # 3 words x 2.0 = 6.0, whatever the record's own 'coef' field holds
    assert src.score([conv("q")], ["a b c"], [{"coef": 5}]).tolist() == [6.0]


# ---------------------------------------------------------------- WeightedSum(normalize=False)


def test_plain_weighted_sum_adds_raw_values() -> None:
    a, b = Fixed([1.0, 0.0, 1.0], "exact"), Fixed([-0.5, 0.0, -1.0], "overlong")
    ws = WeightedSum([a, b], [1.0, 0.5], normalize=False)
    prompts, completions = [conv("q")] * 3, ["x"] * 3
    # 1 * [1, 0, 1] + 0.5 * [-0.5, 0, -1] = [0.75, 0, 0.5]
    assert ws.score(prompts, completions).tolist() == [0.75, 0.0, 0.5]
    # calibrate is a no-op: no normaliser is fitted and the score stays the raw sum
    ws.calibrate(prompts, completions)
    assert ws.score(prompts, completions).tolist() == [0.75, 0.0, 0.5]
    assert all(not n.fitted for n in ws.norms)


def test_normalised_weighted_sum_still_calibrates() -> None:
    # normalize=True (the default): exact [1, 0, 1] has mean 2/3, std (unbiased)
    # sqrt(((1/3)^2 * 2 + (2/3)^2) / 2) = sqrt(1/3) = 0.5773503
    a = Fixed([1.0, 0.0, 1.0], "exact")
    ws = WeightedSum([a])
    ws.calibrate([conv("q")] * 3, ["x"] * 3)
    # (1 - 2/3) / 0.5773503 = 0.5773503; (0 - 2/3) / 0.5773503 = -1.1547005
    torch.testing.assert_close(
        ws.score([conv("q")] * 3, ["x"] * 3),
        torch.tensor([0.5773503, -1.1547005, 0.5773503]),
        atol=1e-6,
        rtol=0,
    )


def test_weighted_sum_score_with_parts_gives_each_raw_part() -> None:
    a, b = Fixed([1.0, 0.0], "exact"), Fixed([-0.5, -1.0], "overlong")
    c = Fixed([2.0, 4.0], "exact")  # a second source with the same name
    ws = WeightedSum([a, b, c], [1.0, 2.0, 0.25], normalize=False)
    total, parts = ws.score_with_parts([conv("q")] * 2, ["x"] * 2)
    # [1, 0] + 2 * [-0.5, -1] + 0.25 * [2, 4] = [1 - 1 + 0.5, 0 - 2 + 1] = [0.5, -1]
    assert total.tolist() == [0.5, -1.0]
    assert list(parts) == ["exact", "overlong", "exact_2"]
    assert parts["exact"].tolist() == [1.0, 0.0]
    assert parts["overlong"].tolist() == [-0.5, -1.0]
    assert parts["exact_2"].tolist() == [2.0, 4.0]


def test_weighted_sum_parts_are_normalised_when_normalising() -> None:
    # calibrated on [0, 2]: mean 1, std sqrt(2) = 1.4142136; score [2, 2]:
    # part = (2 - 1) / 1.4142136 = 0.7071068, total = 3 * 0.7071068 = 2.1213203
    calib, live = Fixed([0.0, 2.0], "r"), Fixed([2.0, 2.0], "r")
    ws = WeightedSum([calib], [3.0])
    ws.calibrate([conv("q")] * 2, ["x"] * 2)
    ws.sources = [live]
    total, parts = ws.score_with_parts([conv("q")] * 2, ["x"] * 2)
    torch.testing.assert_close(parts["r"], torch.tensor([0.7071068] * 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(total, torch.tensor([2.1213203] * 2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- SafetyGated.score_with_parts
#
# helpfulness h = [2, 2, 2, -1], safety s = [3, -3, 1, 0.5], threshold 0.15
# (logit -1.7346): sample 1 is below it, sample 2's prompt is flagged unsafe.
# gated r = [2, -3, 1, -1]; gate = [0, 1, 1, 0]
# whitened over the batch: mean -0.25, deviations [2.25, -2.75, 1.25, -0.75],
#   squares sum 14.75, unbiased var 14.75 / 3 = 4.9166667, std 2.2173558
#   -> [1.0147221, -1.2402159, 0.5637345, -0.3382407]
H, S = [2.0, 2.0, 2.0, -1.0], [3.0, -3.0, 1.0, 0.5]
GATE_FIELDS = [{"unsafe": False}, {"unsafe": False}, {"unsafe": True}, {}]


def test_safety_gate_score_with_parts_unwhitened() -> None:
    gate = SafetyGated(Fixed(H, "h"), Fixed(S, "s"), whiten=False)
    r, parts = gate.score_with_parts([conv("q")] * 4, ["a"] * 4, GATE_FIELDS)
    assert r.tolist() == [2.0, -3.0, 1.0, -1.0]
    assert set(parts) == {"helpfulness", "safety", "safety_gate"}
    assert parts["helpfulness"].tolist() == H
    assert parts["safety"].tolist() == S
    assert parts["safety_gate"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert parts["safety_gate"].mean().item() == 0.5  # share judged on safety


def test_safety_gate_score_with_parts_whitens_the_total_only() -> None:
    gate = SafetyGated(Fixed(H, "h"), Fixed(S, "s"))
    r, parts = gate.score_with_parts([conv("q")] * 4, ["a"] * 4, GATE_FIELDS)
    torch.testing.assert_close(
        r, torch.tensor([1.0147221, -1.2402159, 0.5637345, -0.3382407]), atol=1e-6, rtol=0
    )
    assert parts["helpfulness"].tolist() == H  # parts stay raw
    # calibrated: whitened by the calibration mean / std instead of the batch's
    # calibration set = the same gated [2, -3, 1, -1]; score a batch gated to [2, 2, 2, -1]
    # (all safe): (2 + 0.25) / 2.2173558 = 1.0147221, (-1 + 0.25) / 2.2173558 = -0.3382407
    gate.calibrate([conv("q")] * 4, ["a"] * 4, GATE_FIELDS)
    gate.safety = Fixed([3.0, 3.0, 3.0, 3.0], "s")
    r, _ = gate.score_with_parts([conv("q")] * 4, ["a"] * 4, [{}] * 4)
    torch.testing.assert_close(
        r, torch.tensor([1.0147221, 1.0147221, 1.0147221, -0.3382407]), atol=1e-6, rtol=0
    )
    assert gate.score([conv("q")] * 4, ["a"] * 4, [{}] * 4).tolist() == r.tolist()


# ---------------------------------------------------------------- build_reward_source

SPECS = [
    "rlhfkit.rewards:exact_answer",
    "rlhfkit.rewards:overlong_penalty(max_length=4, cache=2)",
]


def test_build_reward_source_without_normalising_sums_raw_rewards() -> None:
    src = build_reward_source(reward_fns=SPECS, weights=[1.0, 0.5], normalize=False)
    assert isinstance(src, WeightedSum) and src.normalize is False
    assert [s.name for s in src.sources] == ["exact_answer", "overlong_penalty"]
    completions = ["5", "it is 5", "it is 4"]
    fields = [{"answer": 5}, {"answer": 5}, {"answer": 5}]
    # exact: [1, 1, 0]; overlong (max 4, cache 2, words): 1 -> 0, 3 -> -0.5, 3 -> -0.5
    # total: [1, 1 - 0.25, 0 - 0.25] = [1, 0.75, -0.25]
    src.calibrate([conv("q")] * 3, completions, fields)  # no-op
    total, parts = src.score_with_parts([conv("q")] * 3, completions, fields)
    assert total.tolist() == [1.0, 0.75, -0.25]
    assert parts["exact_answer"].tolist() == [1.0, 1.0, 0.0]
    assert parts["overlong_penalty"].tolist() == [0.0, -0.5, -0.5]


def test_build_reward_source_normalises_by_default() -> None:
    src = build_reward_source(reward_fns=SPECS)
    assert isinstance(src, WeightedSum) and src.normalize is True
