"""Reward sources: functions, weighted sums with calibration, Llama 2's safety gate."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.rewards import FunctionReward, SafetyGated, WeightedSum, load_function


def conv(text: str):
    return (Message("system", "be brief"), Message("user", text))


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def answer_checker(completions, answer):
    return [1.0 if c.strip() == str(a) else 0.0 for c, a in zip(completions, answer, strict=True)]


class Fixed:
    """A source returning given values (stands in for a reward model in gate tests)."""

    def __init__(self, values, name):
        self.values, self.name = torch.tensor(values), name

    def score(self, prompts, completions, fields=None):
        return self.values.clone()


def test_function_reward_gets_prompts_completions_and_fields():
    seen = {}

    def spy(prompts, completions, conversations, answer, **rest):
        seen.update(prompts=prompts, conversations=conversations, answer=answer, rest=rest)
        return [0.5] * len(completions)

    out = FunctionReward(spy).score([conv("2+3?")], ["5"], [{"answer": 5, "kind": "arithmetic"}])
    assert out.tolist() == [0.5]
    assert (
        seen["prompts"] == ["2+3?"]
        and seen["answer"] == [5]
        and seen["rest"] == {"kind": ["arithmetic"]}
    )
    assert seen["conversations"][0][1] == {"role": "user", "content": "2+3?"}


def test_function_reward_passes_only_the_arguments_it_takes():
    r = FunctionReward(answer_checker).score(
        [conv("a"), conv("b")], ["5", "7"], [{"answer": 5, "x": 1}, {"answer": 6, "x": 2}]
    )
    assert r.tolist() == [1.0, 0.0]


def test_load_function_from_module_and_file(tmp_path):
    assert load_function("math:sqrt") is math.sqrt
    f = tmp_path / "rewards.py"
    f.write_text(
        "def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n"
    )
    src = FunctionReward(f"{f}:short")
    assert src.name == "short" and src.score([conv("q")], ["abc"]).tolist() == [-3.0]
    for bad in ("nocolon", f"{tmp_path}/missing.py:f", "math:nope", "no_such_module_xyz:f"):
        with pytest.raises(ConfigError):
            load_function(bad)


def test_function_returning_wrong_count_is_an_error():
    with pytest.raises(ConfigError, match="returned"):
        FunctionReward(lambda prompts, completions: [1.0]).score([conv("a"), conv("b")], ["x", "y"])


def test_weighted_sum_normalises_by_calibration():
    a, b = FunctionReward(length_reward, "len"), FunctionReward(answer_checker, "exact")
    ws = WeightedSum([a, b], [1.0, 2.0])
    prompts = [conv("q")] * 4
    calib = ["1", "22", "333", "4444"]
    fields = [{"answer": "1"}, {"answer": "x"}, {"answer": "x"}, {"answer": "x"}]
    ws.calibrate(prompts, calib, fields)
    # len: mean 2.5, std (unbiased) 1.2909944; exact: mean 0.25, std 0.5
    out = ws.score(prompts[:1], ["22"], [{"answer": "22"}])
    expected = 1.0 * (2 - 2.5) / 1.2909944 + 2.0 * (1 - 0.25) / 0.5
    assert out.item() == pytest.approx(expected, abs=1e-5)
    parts = ws.components(prompts[:1], ["22"], [{"answer": "22"}])
    assert set(parts) == {"len", "exact"}


def test_weighted_sum_weight_count_mismatch():
    with pytest.raises(ConfigError):
        WeightedSum([FunctionReward(length_reward)], [1.0, 2.0])


def test_safety_gate_follows_llama2_rule():
    # helpfulness and safety logits for 4 samples
    h = Fixed([2.0, 2.0, 2.0, -1.0], "h")
    s = Fixed([3.0, -3.0, 1.0, 0.5], "s")  # sigmoid: 0.95, 0.047, 0.73, 0.62
    gate = SafetyGated(h, s, threshold=0.15, whiten=False)
    fields = [{"unsafe": False}, {"unsafe": False}, {"unsafe": True}, {}]
    r, used = gate.combined([conv("q")] * 4, ["a"] * 4, fields)
    # 0: safe prompt, safe score -> helpfulness; 1: safety below 0.15 -> safety;
    # 2: flagged unsafe prompt -> safety; 3: safe -> helpfulness
    assert used.tolist() == [False, True, True, False]
    assert r.tolist() == [2.0, -3.0, 1.0, -1.0]
    white = SafetyGated(h, s).score([conv("q")] * 4, ["a"] * 4, fields)
    assert white.mean().item() == pytest.approx(
        0.0, abs=1e-6
    ) and white.std().item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ConfigError):
        SafetyGated(h, s, threshold=1.5)


def test_llama2_gate_plus_a_function_is_a_weighted_sum(tmp_path, monkeypatch):
    from rlhfkit.rollout import rewards

    made = iter([Fixed([2.0, -1.0], "h"), Fixed([3.0, -3.0], "s")])
    monkeypatch.setattr(rewards, "ModelReward", lambda *a, **k: next(made))
    (tmp_path / "fn.py").write_text(
        "def bonus(completions, **f):\n    return [10.0, 20.0]\n", encoding="utf-8"
    )
    src = rewards.build_reward_source(
        ["help", "safe"], [f"{tmp_path / 'fn.py'}:bonus"], "llama2", [1.0, 0.5], normalize=False
    )
    assert isinstance(src, WeightedSum) and isinstance(src.sources[0], SafetyGated)
    total, parts = src.score_with_parts([conv("q")] * 2, ["a", "b"], [{}, {}])
    # gate: sample 0 uses helpfulness 2.0, sample 1 safety -3.0 (sigmoid < 0.15); then
    # whitened over the batch: [1/sqrt(2), -1/sqrt(2)] * sqrt(2) = [0.7071, -0.7071]
    gated = torch.tensor([2.0, -3.0])
    white = (gated - gated.mean()) / gated.std()
    assert parts["llama2"].tolist() == pytest.approx(white.tolist())
    assert total.tolist() == pytest.approx((white + 0.5 * torch.tensor([10.0, 20.0])).tolist())


@pytest.mark.parametrize("stage", ["ppo", "grpo", "rejection", "rest", "best_of_n"])
def test_every_stage_reads_the_same_reward_keys(stage, tmp_path, monkeypatch):
    """PPO, GRPO and the sampling stages validate and build their reward from the same
    keys: Llama 2's gated pair plus a checker, the pair counting as one weighted source."""
    from rlhfkit import config as C
    from rlhfkit.rollout import rewards

    cls = {"ppo": C.PPOConfig, "grpo": C.GRPOConfig, "rejection": C.RejectionSamplingConfig,
           "rest": C.ReSTConfig, "best_of_n": C.BestOfNConfig}[stage]  # fmt: skip
    (tmp_path / "fn.py").write_text(
        "def bonus(completions, **f):\n    return [1.0] * len(completions)\n", encoding="utf-8"
    )
    keys = {"model": "m", "prompts": "p.jsonl", "out": str(tmp_path / "o"),
            "reward_model": ["help", "safe"], "reward_combine": "llama2",
            "reward_fn": [f"{tmp_path / 'fn.py'}:bonus"]}  # fmt: skip
    C.from_dict(cls, {**keys, "reward_weights": [1.0, 0.5]}).validate()
    with pytest.raises(ConfigError, match="reward_weights': 3 weights for 2"):
        C.from_dict(cls, {**keys, "reward_weights": [1.0, 1.0, 0.5]}).validate()
    with pytest.raises(ConfigError, match="llama2 needs exactly two"):
        C.from_dict(cls, {**keys, "reward_model": ["help"]}).validate()

    made = iter([Fixed([2.0, -1.0], "h"), Fixed([3.0, -3.0], "s")])
    monkeypatch.setattr(rewards, "ModelReward", lambda *a, **k: next(made))
    cfg = C.from_dict(cls, {**keys, "reward_weights": [1.0, 0.5], "reward_normalize": False})
    src = rewards.reward_from_config(cfg)
    assert isinstance(src, WeightedSum) and isinstance(src.sources[0], SafetyGated)
    assert src.weights == [1.0, 0.5] and src.normalize is False
