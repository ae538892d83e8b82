"""``rlhfkit ppo`` configuration (rlhfkit.config.PPOConfig) and the reward source its
keys build (rlhfkit.rollout.rewards.build_reward_source)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhfkit.config import PPOConfig, build_config
from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.rewards import (
    FunctionReward,
    ModelReward,
    SafetyGated,
    WeightedSum,
    build_reward_source,
)

REQUIRED = {"model": "sft", "prompts": "prompts.jsonl", "out": "runs/ppo", "reward_fn": ["r.py:f"]}


def ppo(overrides: list[str] | None = None, drop: tuple[str, ...] = (), **cli) -> PPOConfig:
    values = {k: v for k, v in {**REQUIRED, **cli}.items() if k not in drop}
    return build_config(PPOConfig, cli=values, overrides=overrides)


# ---------------------------------------------------------------- defaults


def test_defaults_follow_the_issue() -> None:
    cfg = ppo()
    assert cfg.kl_estimator == "k1"
    assert (cfg.gamma, cfg.lam) == (1.0, 0.95)
    assert cfg.cliprange == 0.2 and cfg.cliprange_high is None
    assert cfg.cliprange_value == 0.2
    assert cfg.entropy_coef == 0.01
    assert cfg.adaptive_kl is False
    assert (cfg.kl_target, cfg.kl_horizon) == (6.0, 10000)
    assert cfg.ptx_coef == 0.0 and cfg.ptx_data is None
    assert cfg.reward_fn == ["r.py:f"] and cfg.reward_model == []


def test_set_overrides_parse() -> None:
    cfg = ppo(
        [
            "kl_estimator=k3",
            "cliprange_value=null",
            "reward_model=a,b",
            "reward_weights=[1, 0.5, 2]",
            "adaptive_kl=true",
            "gamma=0.99",
        ]
    )
    assert cfg.kl_estimator == "k3"
    assert cfg.cliprange_value is None
    assert cfg.reward_model == ["a", "b"]
    assert cfg.reward_weights == [1.0, 0.5, 2.0]
    assert cfg.adaptive_kl is True and cfg.gamma == 0.99


def test_valid_llama2_and_ptx_configs() -> None:
    cfg = ppo(drop=("reward_fn",), reward_model=["help", "safe"], reward_combine="llama2")
    assert cfg.reward_combine == "llama2"
    cfg = ppo(reward_model=["help", "safe"], reward_combine="llama2", reward_weights=[1.0, 0.5])
    assert cfg.reward_weights == [1.0, 0.5]  # the gated pair, then the function
    assert ppo(ptx_coef=0.5, ptx_data="sft.jsonl").ptx_coef == 0.5


# ---------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"drop": ("prompts",)}, "prompts"),
        ({"drop": ("reward_fn",)}, "reward_model"),  # no RM and no function
        ({"drop": ("model",)}, "model"),
        ({"drop": ("out",)}, "out"),
        # llama2 needs exactly two reward models; functions add to the gated pair (one source)
        ({"drop": ("reward_fn",), "reward_model": ["h"], "reward_combine": "llama2"}, "reward_combine"),
        ({"drop": ("reward_fn",), "reward_model": ["h", "s", "x"], "reward_combine": "llama2"}, "reward_combine"),
        ({"reward_model": ["h", "s"], "reward_combine": "llama2", "reward_weights": [1.0, 1.0, 1.0]}, "reward_weights"),
        ({"reward_combine": "max"}, "reward_combine"),
        ({"kl_estimator": "k4"}, "kl_estimator"),
        ({"ptx_coef": 0.1}, "ptx_data"),  # ptx_coef without ptx_data
        ({"reward_weights": [1.0, 2.0]}, "reward_weights"),  # 2 weights, 1 source
        ({"gamma": 1.5}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"cliprange": 0.0}, "cliprange"),
        ({"cliprange": 1.0}, "cliprange"),
        ({"cliprange_high": 0.0}, "cliprange_high"),
        ({"kl_coef": -0.1}, "kl_coef"),
        ({"entropy_coef": -0.01}, "entropy_coef"),
        ({"vf_coef": -1.0}, "vf_coef"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"rollout_batch_size": 0}, "rollout_batch_size"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"ppo_epochs": 0}, "ppo_epochs"),
        ({"safety_threshold": 1.0}, "safety_threshold"),
        ({"value_model": "reward"}, "value_model"),  # 'reward' without a reward model
        ({"adaptive_kl": True, "kl_target": 0.0}, "kl_target"),
        ({"value_learning_rate": 0.0}, "value_learning_rate"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        ppo(**kwargs)


def test_unknown_key_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'kl_coeff'.*'kl_coef'"):
        ppo(["kl_coeff=0.1"])


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError, match="'ppo_epochs'"):
        ppo(["ppo_epochs=two"])


# ---------------------------------------------------------------- build_reward_source

REWARD_FILE = """
def has_five(completions, **fields):
    return [1.0 if "5" in c else 0.0 for c in completions]


def length(completions):
    return [float(len(c)) for c in completions]
"""

PROMPTS = [[Message("user", "What is 2 + 3?")]] * 3
COMPLETIONS = ["5", "The answer is 5.", "six"]


@pytest.fixture
def reward_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE, encoding="utf-8")
    return path


def test_one_function_is_used_as_it_is(reward_file: Path) -> None:
    src = build_reward_source(reward_fns=[f"{reward_file}:has_five"])
    assert isinstance(src, FunctionReward)
    assert src.name == "has_five"
    assert src.score(PROMPTS, COMPLETIONS, [{}] * 3).tolist() == [1.0, 1.0, 0.0]
    # A single weight of 1 changes nothing; another weight makes it a weighted sum.
    assert isinstance(
        build_reward_source(reward_fns=[f"{reward_file}:length"], weights=[1.0]), FunctionReward
    )
    assert isinstance(build_reward_source(reward_fns=[f"{reward_file}:length"], weights=[2.0]), WeightedSum)  # fmt: skip


def test_two_functions_make_a_weighted_sum(reward_file: Path) -> None:
    src = build_reward_source(
        reward_fns=[f"{reward_file}:has_five", f"{reward_file}:length"], weights=[2.0, 0.5]
    )
    assert isinstance(src, WeightedSum)
    assert [s.name for s in src.sources] == ["has_five", "length"]
    assert src.weights == [2.0, 0.5]
    # Uncalibrated (identity normalisers): 2 * [1, 1, 0] + 0.5 * [1, 16, 3]
    #   = [2.5, 10.0, 1.5]
    assert src.score(PROMPTS, COMPLETIONS, [{}] * 3).tolist() == [2.5, 10.0, 1.5]
    default = build_reward_source(reward_fns=[f"{reward_file}:has_five", f"{reward_file}:length"])
    assert isinstance(default, WeightedSum) and default.weights == [1.0, 1.0]


def test_no_source_or_bad_llama2_raise(reward_file: Path) -> None:
    with pytest.raises(ConfigError, match="'reward_model'"):
        build_reward_source()
    fns = [f"{reward_file}:has_five", f"{reward_file}:length"]
    with pytest.raises(ConfigError, match="'reward_combine'"):
        build_reward_source(reward_fns=fns, combine="llama2")
    with pytest.raises(ConfigError, match="no function 'missing'"):
        build_reward_source(reward_fns=[f"{reward_file}:missing"])


def test_reward_models_single_and_llama2(tiny_llama: Path, reward_file: Path) -> None:
    # A causal-LM folder loads as a reward model with a fresh score head.
    one = build_reward_source(reward_models=[str(tiny_llama)])
    assert isinstance(one, ModelReward) and one.name == "rm"
    scores = one.score(PROMPTS, COMPLETIONS)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    gate = build_reward_source(
        reward_models=[str(tiny_llama), str(tiny_llama)],
        combine="llama2",
        safety_threshold=0.3,
        unsafe_field="is_unsafe",
    )
    assert isinstance(gate, SafetyGated)
    assert isinstance(gate.helpfulness, ModelReward) and isinstance(gate.safety, ModelReward)
    assert gate.helpfulness.name == "rm0" and gate.safety.name == "rm1"
    assert gate.unsafe_field == "is_unsafe"
    # logit(0.3) = ln(0.3 / 0.7) = -0.8472979
    assert gate.logit_threshold == pytest.approx(-0.8472979, abs=1e-6)
    # Mixed models and functions under "sum": a weighted sum of both kinds.
    mixed = build_reward_source(
        reward_models=[str(tiny_llama)], reward_fns=[f"{reward_file}:has_five"]
    )
    assert isinstance(mixed, WeightedSum)
    assert [type(s) for s in mixed.sources] == [ModelReward, FunctionReward]
