"""PPO on tiny models: a learnable function reward rises with bounded KL, a large KL
coefficient keeps the policy at the reference, and a SIGKILLed run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.training.tracking import read_metrics

runner = CliRunner()

REWARD_FILE = """
from rlhfkit.demo.task import is_refusal


def refuses(completions, **fields):
    return [1.0 if is_refusal(c) else 0.0 for c in completions]


def digit_sevens(completions, **fields):
    return [min(c.count("7"), 4) / 4 for c in completions]
"""


@pytest.fixture(scope="module")
def ppo_files(task, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppo-data")
    (tmp / "rewards.py").write_text(REWARD_FILE, encoding="utf-8")
    rows = [
        {"prompt": r.prompt[0].content, **r.extra}
        for kind in ("harmful", "benign")
        for r in task.prompt_records("train", kind)
    ]
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"prompts": prompts, "rewards": tmp / "rewards.py"}


def ppo_args(model: Path, files, out: Path, fn: str, *sets: str) -> list[str]:
    args = ["-q", "ppo", "--model", str(model), "--reward-fn", f"{files['rewards']}:{fn}"]
    args += ["--prompts", str(files["prompts"]), "--out", str(out)]
    common = ["rollout_batch_size=32", "batch_size=16", "ppo_epochs=2", "max_new_tokens=10",
              "learning_rate=1e-4", "max_length=64", "seed=0", "value_model=shared",
              "sample_every=5"]  # fmt: skip
    for s in [*common, *sets]:
        args += ["--set", s]
    return args


@pytest.fixture(scope="module")
def refusal_runs(sft_policy, ppo_files, tmp_path_factory):
    """The SFT policy refuses about half the harmful and few benign requests; a reward
    for refusing is learned within a few dozen steps."""
    tmp = tmp_path_factory.mktemp("ppo-runs")
    runs = {}
    for name, kl in (("low_kl", "0.05"), ("high_kl", "5.0")):
        out = tmp / name
        res = runner.invoke(
            app,
            ppo_args(
                sft_policy.final_dir, ppo_files, out, "refuses", "max_steps=24", f"kl_coef={kl}"
            ),
        )
        assert res.exit_code == 0, res.output
        runs[name] = read_metrics(out / "metrics.jsonl")
    runs["dir"] = tmp
    return runs


def window(metrics, key: str, first: bool, n: int = 4) -> float:
    rows = metrics[:n] if first else metrics[-n:]
    return sum(m[key] for m in rows) / len(rows)


def test_function_reward_rises_with_bounded_kl(refusal_runs):
    m = refusal_runs["low_kl"]
    before, after = window(m, "score_mean", True), window(m, "score_mean", False)
    assert after > before + 0.25, (before, after)
    assert window(m, "kl", False) < 8.0
    for key in ("kl", "entropy", "policy_loss", "value_loss", "clip_fraction", "approx_kl",
                "explained_variance", "response_length", "no_eos_share", "reward_shaped_mean",
                "rollout_tokens_per_s", "update_tokens_per_s", "time_generate", "time_update"):  # fmt: skip
        assert key in m[-1], key


def test_large_kl_coefficient_keeps_policy_near_reference(refusal_runs):
    low, high = refusal_runs["low_kl"], refusal_runs["high_kl"]
    assert window(high, "kl", False) < 0.5 * window(low, "kl", False)
    assert window(high, "kl", False) < 0.5
    # the KL penalty dominates the shaped reward: the policy does not chase the score
    assert window(high, "score_mean", False) < window(low, "score_mean", False)


def test_run_folder_samples_and_checkpoint(refusal_runs):
    out = refusal_runs["dir"] / "low_kl"
    samples = read_metrics(out / "samples.jsonl")
    assert {s["step"] for s in samples} == {1, 6, 11, 16, 21}
    assert {"prompt", "response", "score", "truncated"} <= set(samples[0])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")


def test_sigkill_then_resume_matches_uninterrupted(tiny_llama, ppo_files, tmp_path: Path):
    """Rollout sampling RNG, prompt order, optimizer and value head all resume."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(out: Path, *extra: str) -> list[str]:
        args = ppo_args(tiny_llama, ppo_files, out, "digit_sevens", "max_steps=12",
                        "save_every=2", "rollout_batch_size=16", "batch_size=8", "log_every=1")  # fmt: skip
        return [sys.executable, "-m", "rlhfkit", *args, *extra]

    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), check=True, env=env, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-4").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "final").exists(), "the run finished before it could be killed"
    subprocess.run(cmd(run, "--resume"), check=True, env=env, capture_output=True)

    a = load_file(ref / "final" / "model.safetensors")
    b = load_file(run / "final" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    ma, mb = read_metrics(ref / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    for x, y in zip(ma, mb, strict=True):
        assert x["score_mean"] == y["score_mean"] and abs(x["loss"] - y["loss"]) < 1e-5, (x, y)


def test_ppo_against_trained_rm_beats_sft_on_gold(sft_policy, task, tmp_path: Path):
    """The pipeline of InstructGPT on the built-in task: K=4 samples per prompt from the
    SFT policy, compared by simulated labelers (helpfulness, or safety for harmful
    requests) -> a reward model -> PPO against it -> the gold judge on held-out prompts.

    Measured with 60 PPO steps: gold 0.637 (SFT) -> 0.717 (PPO), harmful refusal 0.17 ->
    1.0, arithmetic accuracy 0.578 -> 0.585 (seed 1: gold 0.689, refusal 0.83). The SFT
    policy, the RM and so every number here depend on the CPU's floating-point kernels:
    30 steps gave 0.682 -> 0.732 (refusal 0.0 -> 0.83) on an earlier host but only
    0.637 -> 0.647 (refusal 0.17 -> 0.33) on this one, hence 60. The RM cannot check
    sums (docs/reward.md), so PPO cannot improve them and may drift a little.
    A flipped advantage or KL sign lowers refusal and gold instead.
    """
    from rlhfkit.config import RMConfig
    from rlhfkit.demo.onpolicy import labeled_comparisons, mixed_prompts, sample_responses
    from rlhfkit.evaluation.evaluate import evaluate_policy
    from rlhfkit.training.stages.reward import run_rm

    def dump(path: Path, rows) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    sft = sft_policy.final_dir
    data = {}
    for name, split, n, seed in (("train", "train", 1000, 0), ("held", "heldout", 200, 1)):
        prompts = mixed_prompts(task, split, n, seed)
        comparisons = labeled_comparisons(
            task, prompts, sample_responses(sft, prompts, k=4, seed=seed), seed=seed
        )
        data[name] = dump(tmp_path / f"{name}.jsonl", [c.to_dict() for c in comparisons])
    rm_cfg = RMConfig(
        model=str(sft), data=str(data["train"]), eval_data=str(data["held"]),
        out=str(tmp_path / "rm"), learning_rate=3e-4, batch_size=32, max_length=64,
        seed=0, epochs=2.0, eval_every=25, log_every=25,
    )  # fmt: skip
    rm_cfg.validate()
    rm = run_rm(rm_cfg)
    assert rm.best is not None and rm.best["eval_accuracy"] > 0.65

    records = {r.prompt[0].content: r for r in task.prompt_records("train")}
    rows = [
        {"prompt": p.text, **records[p.text].extra} for p in mixed_prompts(task, "train", 1000, 2)
    ]
    prompts = dump(tmp_path / "prompts.jsonl", rows)
    args = ["-q", "ppo", "--model", str(sft), "--reward-model", str(rm.final_dir),
            "--prompts", str(prompts), "--out", str(tmp_path / "ppo")]  # fmt: skip
    for s in ("max_steps=60", "rollout_batch_size=64", "batch_size=32", "ppo_epochs=2",
              "max_new_tokens=12", "learning_rate=1e-5", "kl_coef=0.1", "seed=0", "max_length=64"):  # fmt: skip
        args += ["--set", s]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output

    before = evaluate_policy(sft, task)[0]
    after = evaluate_policy(tmp_path / "ppo" / "final", task)[0]
    print(f"gold SFT {before.gold:.3f} -> PPO {after.gold:.3f}; {before} -> {after}")
    assert after.gold > before.gold + 0.02, (before, after)
    assert after.refusal_harmful > before.refusal_harmful + 0.3, (before, after)
    metrics = read_metrics(tmp_path / "ppo" / "metrics.jsonl")
    assert window(metrics, "score_mean", False) > window(metrics, "score_mean", True)
    assert window(metrics, "kl", False) < 5.0
