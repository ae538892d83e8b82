"""Scored candidates: scoring with a reward function, empty responses, the samples file
round trip, SFT rows and per-round statistics (hand-worked numbers)."""

from __future__ import annotations

import math

import pytest

from rlhfkit.config import HIRConfig, RejectionSamplingConfig, ReSTConfig, build_config
from rlhfkit.data.types import Message, PromptRecord
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.candidates import (
    Candidates,
    eligible_scores,
    read_samples,
    score_candidates,
    sft_rows,
    write_samples,
)
from rlhfkit.rollout.rewards import FunctionReward
from rlhfkit.rollout.selection import SelectionRule, select
from rlhfkit.training.stages.selftrain import sample_stats


def candidates() -> Candidates:
    records = [
        PromptRecord((Message("user", "What is 2 + 3?"),), {"answer": 5}),
        PromptRecord((Message("system", "brief"), Message("user", "Hi?")), {"answer": None}),
    ]
    texts = [["5", "6", "5"], ["", "hello there", "hi"]]
    truncated = [[False, False, True], [False, True, False]]
    return Candidates(records, texts, truncated)


def length_or_answer(completions, answer, **fields):
    # 1 for the right number; otherwise minus the word count
    return [
        1.0 if a is not None and c == str(a) else -len(c.split())
        for c, a in zip(completions, answer, strict=True)
    ]


def test_score_candidates_with_eos_penalty():
    c = candidates()
    got = score_candidates(
        c, FunctionReward(length_or_answer), batch_size=2, missing_eos_penalty=0.5
    )
    # prompt 1: 1, -1, 1 - 0.5 (truncated); prompt 2: -0 (empty), -2 - 0.5, -1
    assert got == [[1.0, -1.0, 0.5], [0.0, -2.5, -1.0]]
    assert c.scores is got


def test_empty_responses_are_never_kept_even_with_the_best_score():
    c = candidates()
    c.scores = [[1.0, -1.0, 0.5], [0.0, -2.5, -1.0]]
    scores, empty = eligible_scores(c)
    assert empty == 1 and math.isnan(scores[1][0])
    kept = select(scores, SelectionRule("best"))
    assert kept == [[0], [2]]  # the empty response (score 0.0) loses to "hi" (-1.0)
    rows = sft_rows(c, kept)
    assert rows[1] == {
        "messages": [
            {"role": "system", "content": "brief"},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "hi"},
        ],
        "score": -1.0,
    }


def test_samples_file_round_trip(tmp_path):
    c = candidates()
    c.scores = [[1.0, float("nan"), 0.5], [0.0, -2.5, -1.0]]
    path = write_samples(tmp_path / "s.jsonl", c, [[0], [2]])
    back = read_samples(path)
    assert back.records == c.records and back.texts == c.texts and back.truncated == c.truncated
    assert back.scores is not None and math.isnan(back.scores[0][1])
    assert back.scores[1] == [0.0, -2.5, -1.0]


def test_sample_stats_by_hand():
    c = candidates()
    c.scores = [[1.0, -1.0, 0.5], [0.0, -2.5, -1.0]]
    stats = sample_stats(c, [[0, 2], []])
    assert stats["samples"] == 6
    assert stats["truncated_share"] == pytest.approx(2 / 6)
    assert stats["distinct_share"] == pytest.approx(5 / 6)  # "5" twice
    assert stats["reward_mean"] == pytest.approx(-3.0 / 6)
    assert stats["reward_best_mean"] == pytest.approx((1.0 + 0.0) / 2)
    assert stats["kept"] == 2 and stats["prompts_kept"] == 1
    assert stats["kept_reward_mean"] == pytest.approx(0.75)


def test_config_errors_name_the_key():
    base = {"model": "m", "prompts": "p", "out": "o"}
    with pytest.raises(ConfigError, match="key 'reward_model'"):
        build_config(RejectionSamplingConfig, None, base)
    with pytest.raises(ConfigError, match="key 'ppo': unknown key 'kl_coeff'"):
        build_config(
            RejectionSamplingConfig, None, {**base, "reward_fn": ["m:f"]}, ["ppo={kl_coeff: 1}"]
        )
    with pytest.raises(ConfigError, match="key 'keep'"):
        build_config(RejectionSamplingConfig, None, {**base, "reward_fn": ["m:f"], "keep": "worst"})
    with pytest.raises(ConfigError, match="key 'thresholds': thresholds must not decrease"):
        build_config(ReSTConfig, None, {**base, "reward_fn": ["m:f"]}, ["thresholds=[0.9, 0.5]"])
    with pytest.raises(ConfigError, match="key 'relabel_fn'"):
        build_config(HIRConfig, None, base)  # HIR needs no reward, but a relabel function
    cfg = build_config(HIRConfig, None, {**base, "relabel_fn": "m:f"})
    assert cfg.samples_per_prompt == 4 and cfg.contrastive_weight == 0.0
