"""Options of the online stages on the tiny (untrained) model: PPO with a LoRA policy
and PPO-ptx, GRPO with a LoRA policy. The reference of a LoRA policy is the policy
with its adapters disabled, not a second copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from rlhfkit.config import GRPOConfig, PPOConfig
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.training.online import load_policy
from rlhfkit.training.stages.grpo import run_grpo
from rlhfkit.training.stages.ppo import run_ppo
from rlhfkit.training.tracking import read_metrics

REWARD = (
    "def length(completions, **fields):\n    return [min(len(c), 20) / 20 for c in completions]\n"
)


@pytest.fixture(scope="module")
def files(task, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("online-options")
    (tmp / "reward.py").write_text(REWARD, encoding="utf-8")
    prompts = tmp / "prompts.jsonl"
    rows = [{"prompt": r.prompt[0].content, **r.extra} for r in task.prompt_records("train")][:256]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"prompts": prompts, "reward": tmp / "reward.py"}


def test_lora_policy_reference_is_the_adapter_free_model(tiny_llama):
    pytest.importorskip("peft")
    cfg = GRPOConfig(model=str(tiny_llama), lora_r=4)
    policy, reference = load_policy(cfg, load_tokenizer(str(tiny_llama)), need_reference=True)
    assert reference is None and hasattr(policy, "disable_adapter")
    _, reference = load_policy(GRPOConfig(model=str(tiny_llama)), load_tokenizer(str(tiny_llama)))
    assert reference is not None  # full fine-tuning: a frozen copy


def test_ppo_lora_with_ptx(tiny_llama, sft_data, files, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "ppo"
    cfg = PPOConfig(
        model=str(tiny_llama), prompts=str(files["prompts"]), out=str(out),
        reward_fn=[f"{files['reward']}:length"], lora_r=8, lora_alpha=16, learning_rate=5e-3,
        rollout_batch_size=16, batch_size=16, ppo_epochs=1, max_new_tokens=8, max_steps=12,
        ptx_data=str(sft_data), ptx_coef=1.0, value_model="shared", seed=0, max_length=64,
    )  # fmt: skip
    run_ppo(cfg)
    m = read_metrics(out / "metrics.jsonl")
    # Step 1 scores the rollout before any update: adapters start as a no-op (LoRA's
    # B = 0), so the policy equals its adapter-free reference and the KL is 0.
    assert abs(m[0]["kl"]) < 1e-5, m[0]["kl"]
    assert m[-1]["kl"] != 0.0
    # The ptx term is trained: the SFT loss of the untrained model falls.
    ptx = [s["ptx_loss"] for s in m]
    assert sum(ptx[-3:]) / 3 < sum(ptx[:3]) / 3 - 0.3, ptx
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    assert not any("lora" in k for k in merged.state_dict())


def test_grpo_lora_with_kl(tiny_llama, files, tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "grpo"
    cfg = GRPOConfig(
        model=str(tiny_llama), prompts=str(files["prompts"]), out=str(out),
        reward_fn=[f"{files['reward']}:length"], lora_r=8, lora_alpha=16, learning_rate=5e-3,
        rollout_batch_size=4, num_generations=4, batch_size=16, max_new_tokens=8, max_steps=6,
        beta=0.1, seed=0, max_length=64,
    )  # fmt: skip
    run_grpo(cfg)
    m = read_metrics(out / "metrics.jsonl")
    assert abs(m[0]["kl"]) < 1e-5 and m[-1]["kl"] > 0
    assert AutoModelForCausalLM.from_pretrained(out / "final") is not None
