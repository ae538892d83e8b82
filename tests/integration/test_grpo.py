"""GRPO and RLOO on the built-in task: the exact-answer checker (a verifiable reward, no
reward model) raises held-out arithmetic accuracy above the SFT model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.evaluation.evaluate import evaluate_policy
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def arithmetic_prompts(task, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("grpo-data") / "arithmetic.jsonl"
    rows = [
        {"prompt": r.prompt[0].content, **r.extra}
        for r in task.prompt_records("train", "arithmetic")
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def grpo(command: str, model: Path, prompts: Path, out: Path, rewards: list[str], *sets: str):
    args = ["-q", command, "--model", str(model), "--prompts", str(prompts), "--out", str(out)]
    for fn in rewards:
        args += ["--reward-fn", fn]
    common = ["rollout_batch_size=16", "num_generations=8", "batch_size=128",
              "max_new_tokens=12", "learning_rate=1e-4", "max_length=64", "seed=0"]  # fmt: skip
    for s in [*common, *sets]:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return read_metrics(out / "metrics.jsonl")


def reward_rise(metrics, key: str = "score_mean", n: int = 15) -> float:
    """Mean of ``key`` over the last ``n`` steps minus over the first ``n``."""
    values = [m[key] for m in metrics if key in m]
    return sum(values[-n:]) / n - sum(values[:n]) / n


@pytest.fixture(scope="module")
def sft_accuracy(sft_policy, task) -> float:
    return evaluate_policy(sft_policy.final_dir, task)[0].accuracy


def test_grpo_exact_answer_raises_heldout_accuracy(
    sft_policy, sft_accuracy, arithmetic_prompts, task, tmp_path
):
    out = tmp_path / "grpo"
    metrics = grpo(
        "grpo", sft_policy.final_dir, arithmetic_prompts, out,
        ["rlhfkit.rewards:exact_answer"], "beta=0.04", "max_steps=120",
    )  # fmt: skip
    scores = evaluate_policy(out / "final", task)[0]
    print(f"held-out arithmetic accuracy: SFT {sft_accuracy:.3f} -> GRPO {scores.accuracy:.3f}")
    # Measured 0.608 -> 0.683 (80 steps), 0.637 (70) and 0.635 (120) in three runs:
    # sampling differs run to run and the paired standard error on 600 prompts is
    # ~0.016, so the held-out check asserts the sign; the training reward's rise
    # (measured 0.37 -> 0.5) is the large effect. A flipped advantage sign or a broken
    # group normalisation moves both down, not up.
    assert scores.accuracy > sft_accuracy, (sft_accuracy, scores)
    assert reward_rise(metrics) >= 0.05, reward_rise(metrics)
    steps = [m for m in metrics if "zero_std_groups" in m]
    assert len(steps) == 120
    assert all(0 <= m["zero_std_groups"] <= 1 for m in steps)
    assert max(m["kl"] for m in steps) < 2.0  # beta > 0: the k3 KL is logged and bounded
    assert (out / "samples.jsonl").is_file()


def test_rloo_with_two_weighted_rewards(
    sft_policy, sft_accuracy, arithmetic_prompts, task, tmp_path
):
    out = tmp_path / "rloo"
    metrics = grpo(
        "rloo", sft_policy.final_dir, arithmetic_prompts, out,
        ["rlhfkit.rewards:exact_answer", "rlhfkit.rewards:overlong_penalty(max_length=8, cache=4)"],
        "beta=0.0", "loss_type=dapo", "reward_weights=[1.0,0.5]", "max_steps=120",
    )  # fmt: skip
    scores = evaluate_policy(out / "final", task)[0]
    rise = reward_rise(metrics, "reward_exact_answer", n=25)
    print(
        f"held-out arithmetic accuracy: SFT {sft_accuracy:.3f} -> RLOO {scores.accuracy:.3f}; "
        f"training exact-answer reward +{rise:.3f}"
    )
    # The training reward's rise, last 25 steps against the first 25: measured 0.074 and
    # 0.102 (seeds 0, 1), held-out accuracy 0.665 -> 0.700 and 0.742; the rise's standard
    # error is ~0.018 (per-step sd ~0.065: 16 prompts a step). 70 steps rose 0.017-0.072
    # (a 0.04 bound failed once in CI); lr 2e-4 rose 0.11 on the training prompts but
    # lowered held-out accuracy (0.617, 0.648).
    assert rise >= 0.03, rise
    assert scores.accuracy > sft_accuracy, (sft_accuracy, scores)
    steps = [m for m in metrics if "reward_exact_answer" in m]
    assert len(steps) == 120  # each reward function's mean is logged on its own
    assert all(-1 <= m["reward_overlong_penalty"] <= 0 for m in steps)
    assert "kl" not in steps[0]  # beta = 0: no reference model, no KL
