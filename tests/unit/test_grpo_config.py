"""``rlhfkit grpo`` / ``rlhfkit rloo`` configuration (rlhfkit.config.GRPOConfig), and the
clip keys PPOConfig shares with it (cliprange / cliprange_high)."""

from __future__ import annotations

import pytest

from rlhfkit.config import GRPOConfig, PPOConfig, build_config
from rlhfkit.errors import ConfigError

REQUIRED = {"model": "sft", "prompts": "prompts.jsonl", "out": "runs/grpo", "reward_fn": ["r.py:f"]}


def grpo(overrides: list[str] | None = None, drop: tuple[str, ...] = (), **cli) -> GRPOConfig:
    values = {k: v for k, v in {**REQUIRED, **cli}.items() if k not in drop}
    return build_config(GRPOConfig, cli=values, overrides=overrides)


def ppo(**cli) -> PPOConfig:
    return build_config(PPOConfig, cli={**REQUIRED, "out": "runs/ppo", **cli})


# ---------------------------------------------------------------- defaults


def test_defaults() -> None:
    cfg = grpo()
    assert cfg.num_generations == 8
    assert cfg.advantage_estimator == "grpo"
    assert cfg.scale_rewards == "group"
    assert cfg.loss_type == "grpo"
    assert cfg.beta == 0.04
    assert cfg.epsilon_low == 0.2 and cfg.epsilon_high is None
    assert cfg.reward_normalize is False
    assert cfg.learning_rate == 1e-6
    assert cfg.rollout_batch_size == 16
    assert cfg.scheduler == "linear" and cfg.log_every == 1


def test_set_overrides_parse() -> None:
    cfg = grpo(
        [
            "num_generations=4",
            "advantage_estimator=rloo",
            "scale_rewards=none",
            "loss_type=dr_grpo",
            "beta=0",
            "epsilon_high=0.28",
            "reward_normalize=true",
        ]
    )
    assert cfg.num_generations == 4
    assert cfg.advantage_estimator == "rloo"
    assert cfg.scale_rewards == "none"
    assert cfg.loss_type == "dr_grpo"
    assert cfg.beta == 0.0
    assert cfg.epsilon_high == 0.28
    assert cfg.reward_normalize is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_generations": 2},  # the smallest group
        {"beta": 0.0},  # no KL term, no reference model
        {"epsilon_low": 0.01},
        {"epsilon_low": 0.99},
        {"epsilon_high": 0.28},  # DAPO's clip-higher
        {"epsilon_high": 1.5},  # only > 0 is required
        {"advantage_estimator": "rloo"},
        {"scale_rewards": "batch"},
        {"scale_rewards": "none"},
        {"loss_type": "dapo"},
        {"loss_type": "dr_grpo"},
    ],
)
def test_valid_values_pass(kwargs: dict) -> None:
    cfg = grpo(**kwargs)
    for key, value in kwargs.items():
        assert getattr(cfg, key) == value


# ---------------------------------------------------------------- errors name the key


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"num_generations": 0}, "num_generations"),
        ({"beta": -0.01}, "beta"),
        ({"epsilon_low": 0.0}, "epsilon_low"),
        ({"epsilon_low": 1.0}, "epsilon_low"),
        ({"epsilon_low": -0.2}, "epsilon_low"),
        ({"epsilon_high": 0.0}, "epsilon_high"),
        ({"epsilon_high": -0.28}, "epsilon_high"),
        ({"advantage_estimator": "ppo"}, "advantage_estimator"),
        ({"scale_rewards": "prompt"}, "scale_rewards"),
        ({"scale_rewards": "true"}, "scale_rewards"),
        ({"loss_type": "bnpo"}, "loss_type"),
        ({"drop": ("prompts",)}, "prompts"),
        ({"drop": ("reward_fn",)}, "reward_model"),
        ({"drop": ("model",)}, "model"),
        ({"rollout_batch_size": 0}, "rollout_batch_size"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights"),  # 2 weights, 1 source
    ],
)
def test_validation_errors_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        grpo(**kwargs)


def test_choice_errors_list_the_choices() -> None:
    with pytest.raises(ConfigError, match="group, batch, none"):
        grpo(scale_rewards="prompt")
    with pytest.raises(ConfigError, match="grpo, dapo, dr_grpo"):
        grpo(loss_type="bnpo")
    with pytest.raises(ConfigError, match="grpo, rloo"):
        grpo(advantage_estimator="ppo")


def test_num_generations_error_says_why() -> None:
    with pytest.raises(ConfigError, match=r"'num_generations'.*>= 2.*got 1"):
        grpo(num_generations=1)


def test_ppo_keys_are_not_grpo_keys() -> None:
    # GRPO's clip keys are epsilon_low / epsilon_high; PPO's names are unknown here.
    with pytest.raises(ConfigError, match=r"unknown key 'cliprange'"):
        grpo(["cliprange=0.2"])


def test_nan_beta_is_rejected() -> None:
    # 'beta < 0' alone would let NaN through; the key's type check rejects it first.
    with pytest.raises(ConfigError, match="'beta'"):
        grpo(beta=float("nan"))
    with pytest.raises(ConfigError, match="'beta'"):
        grpo(["beta=.nan"])


# ---------------------------------------------------------------- PPOConfig clip keys


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"cliprange": 0.0}, "cliprange"),
        ({"cliprange": 1.0}, "cliprange"),
        ({"cliprange": -0.1}, "cliprange"),
        ({"cliprange_high": 0.0}, "cliprange_high"),
        ({"cliprange_high": -0.28}, "cliprange_high"),
    ],
)
def test_ppo_still_validates_its_clip_keys(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=f"'{key}'"):
        ppo(**kwargs)


def test_ppo_clip_keys_accept_valid_values() -> None:
    cfg = ppo(cliprange=0.1, cliprange_high=0.28)
    assert (cfg.cliprange, cfg.cliprange_high) == (0.1, 0.28)
    assert ppo().cliprange_high is None
    assert ppo(cliprange_high=1.5).cliprange_high == 1.5  # only > 0 is required
