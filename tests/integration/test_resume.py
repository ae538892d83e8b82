"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhfkit.training.tracking import read_metrics

STEPS = 150


def sft_cmd(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    sets = [
        f"max_steps={STEPS}", "batch_size=16", "max_length=64", "learning_rate=2e-3",
        "log_every=5", "save_every=10", "eval_every=50", "seed=3",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "rlhfkit", "-q", "sft", "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), *extra]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def test_sigkill_then_resume_matches_uninterrupted(tiny_llama, sft_data, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(sft_cmd(tiny_llama, sft_data, ref), check=True, env=env, capture_output=True)

    run = tmp_path / "run"
    proc = subprocess.Popen(
        sft_cmd(tiny_llama, sft_data, run),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-30").exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final").exists(), "the run finished before it could be killed"
    done = [
        int(p.name.split("-")[1])
        for p in (run / "checkpoints").glob("step-*")
        if p.name[5:].isdigit()
    ]
    assert 30 <= max(done) < STEPS

    # Without --resume the folder is protected.
    refused = subprocess.run(
        sft_cmd(tiny_llama, sft_data, run), env=env, capture_output=True, text=True
    )
    assert refused.returncode == 78 and "--resume" in refused.stderr

    subprocess.run(
        sft_cmd(tiny_llama, sft_data, run, "--resume"), check=True, env=env, capture_output=True
    )

    a = load_file(ref / "final" / "model.safetensors")
    b = load_file(run / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k

    ma, mb = read_metrics(ref / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in mb] == [m["step"] for m in ma]  # no duplicated or missing steps
    for x, y in zip(ma, mb, strict=True):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x, y)
        assert abs(x["lr"] - y["lr"]) < 1e-12
    assert not list((run / "checkpoints").glob("*.tmp"))
