"""DPO and CPL on the built-in task improve the SFT policy, judged by the gold judge."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.demo.preferences import synthetic_preferences
from rlhfkit.evaluation.evaluate import evaluate_policy
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()


def dpo_preferences(task, split: str, scale: int, seed: int):
    """Each prompt judged on the dimension that matters for it, as in Llama 2's
    combined reward: helpfulness for arithmetic and benign requests, safety for
    harmful ones."""
    recs = synthetic_preferences(
        task, split, n=16 * scale, dimensions=("helpfulness",), kind="arithmetic", seed=seed
    )
    recs += synthetic_preferences(
        task, split, n=4 * scale, dimensions=("helpfulness",), kind="benign", seed=seed + 1
    )
    recs += synthetic_preferences(
        task, split, n=4 * scale, dimensions=("safety",), kind="harmful", seed=seed + 2
    )
    random.Random(seed).shuffle(recs)
    return recs


@pytest.fixture(scope="module")
def pref_files(task, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dpo-data")
    files = {}
    for name, split, scale, seed in (("train", "train", 100, 0), ("heldout", "heldout", 20, 50)):
        path = tmp / f"{name}.jsonl"
        path.write_text(
            "".join(
                json.dumps(r.to_dict()) + "\n" for r in dpo_preferences(task, split, scale, seed)
            )
        )
        files[name] = path
    return files


@pytest.fixture(scope="module")
def sft_scores(sft_policy, task):
    return evaluate_policy(sft_policy.final_dir, task)[0]


def run_cli(model: Path, data: Path, held: Path, out: Path, loss: str, *sets: str) -> None:
    args = [
        "-q",
        "dpo",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--loss",
        loss,
    ]
    common = ["learning_rate=1e-4", "batch_size=32", "max_steps=75", "max_length=64", "log_every=15",
              "eval_every=25", f"eval_data={held}", "seed=0"]  # fmt: skip
    for s in [*common, *sets]:
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output


def test_dpo_beats_sft_on_gold(sft_policy, sft_scores, pref_files, task, tmp_path):
    out = tmp_path / "dpo"
    run_cli(
        sft_policy.final_dir,
        pref_files["train"],
        pref_files["heldout"],
        out,
        "sigmoid",
        "beta=0.5",
        "sft_weight=1.0",
    )
    metrics = read_metrics(out / "metrics.jsonl")
    held = [m for m in metrics if "eval_rewards_accuracy" in m]
    # Held-out comparisons (held-out prompts): implicit-reward accuracy well above chance.
    assert held[-1]["eval_rewards_accuracy"] >= 0.7, held[-1]
    scores, _ = evaluate_policy(out / "final", task)
    print(f"gold: SFT {sft_scores.gold:.3f} -> DPO {scores.gold:.3f}; {sft_scores} -> {scores}")
    # Above +0.03 on earlier SFT policies, +0.010 on one whose arithmetic
    # is weaker (accuracy 0.61; DPO 0.52): these comparisons come from the task's
    # synthetic candidates, whose verbose answers beat bare numbers, so DPO gains
    # safety and gives back arithmetic. The gold gain's sign is asserted; the refusal
    # gain is the large, sign-sensitive effect.
    assert scores.gold > sft_scores.gold, (sft_scores, scores)
    assert scores.refusal_harmful >= sft_scores.refusal_harmful + 0.5
    assert scores.refusal_benign <= 0.2


def test_cpl_improves_on_sft_without_a_reference(
    sft_policy, sft_scores, pref_files, task, tmp_path
):
    out = tmp_path / "cpl"
    run_cli(
        sft_policy.final_dir,
        pref_files["train"],
        pref_files["heldout"],
        out,
        "cpl",
        "beta=0.5",
        "cpl_bc_weight=1.0",
    )
    scores, _ = evaluate_policy(out / "final", task)
    print(f"gold: SFT {sft_scores.gold:.3f} -> CPL {scores.gold:.3f}; {sft_scores} -> {scores}")
    # Measured +0.023 here and +0.008 on the CI machine (refusals of harmful requests
    # 0 -> 1.0, arithmetic 0.665 -> 0.53): CPL trades arithmetic for safety on this
    # task, so the gold gain is small and only its sign is asserted; the refusal
    # gain is the large, sign-sensitive effect.
    assert scores.gold > sft_scores.gold, (sft_scores, scores)
    assert scores.refusal_harmful >= sft_scores.refusal_harmful + 0.5
    assert scores.accuracy >= sft_scores.accuracy - 0.2, (sft_scores, scores)
    held = [m for m in read_metrics(out / "metrics.jsonl") if "eval_rewards_accuracy" in m]
    assert held[-1]["eval_rewards_accuracy"] >= 0.7
