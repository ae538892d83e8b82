"""SFT under `accelerate launch` with 2 CPU processes (gloo) matches one process at equal
global batch: the loop normalises the loss over the tokens of the whole optimizer step,
so the only differences are float summation order (tolerance 1e-4 relative)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.training.tracking import read_metrics

COMMON = [
    "max_steps=12",
    "log_every=1",
    "learning_rate=2e-3",
    "max_length=64",
    "eval_fraction=0.02",
    "seed=0",
]


def run(cmd: list[str], env: dict) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not Path(sys.executable).with_name("accelerate").exists(),
    reason="accelerate CLI not installed",
)
def test_two_processes_match_one(tiny_llama, sft_data, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    accel = str(Path(sys.executable).with_name("accelerate"))
    args = ["sft", "--model", str(tiny_llama), "--data", str(sft_data)]

    one = tmp_path / "one"
    cmd = [sys.executable, "-m", "rlhfkit", "-q", *args, "--out", str(one)]
    for s in [*COMMON, "batch_size=16"]:
        cmd += ["--set", s]
    run(cmd, env)

    two = tmp_path / "two"
    # `--multi_gpu` selects accelerate's torchrun launcher; with cpu=true (or no GPU) the
    # processes join a gloo process group. (`--cpu` alone starts a single process.)
    launch = [accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rlhfkit"]  # fmt: skip
    cmd = [*launch, "-q", *args, "--out", str(two)]
    for s in [*COMMON, "batch_size=8", "cpu=true"]:
        cmd += ["--set", s]
    run(cmd, env)

    m1, m2 = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [m["step"] for m in m1] == [m["step"] for m in m2] == list(range(1, 13))
    for a, b in zip(m1, m2, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a, b)
    assert abs(m1[-1]["eval_loss"] - m2[-1]["eval_loss"]) <= 1e-4 * m1[-1]["eval_loss"]
    assert m1[0]["loss"] > m1[-1]["loss"]  # it trained
    assert (two / "final" / "model.safetensors").is_file()
