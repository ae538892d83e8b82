"""Shared fixtures: the built-in task, tiny models built once per session, data files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rlhfkit.demo.task import Task


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def task() -> Task:
    return Task()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, task) -> Path:
    """A small Llama (hidden 96, 2 layers) with a BPE tokenizer trained on the task."""
    from rlhfkit.models.tiny import TinySpec, build_tiny

    return build_tiny(
        tmp_path_factory.mktemp("tiny-llama"), TinySpec(hidden=96, layers=2), task.corpus()
    )


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, task) -> Path:
    from rlhfkit.models.tiny import TinySpec, build_tiny

    spec = TinySpec(arch="gpt2", hidden=96, layers=2)
    return build_tiny(tmp_path_factory.mktemp("tiny-gpt2"), spec, task.corpus())


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, task) -> Path:
    from rlhfkit.models.tiny import TinySpec, build_tiny

    spec = TinySpec(arch="qwen2", hidden=96, layers=2)
    return build_tiny(tmp_path_factory.mktemp("tiny-qwen2"), spec, task.corpus())


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory, task) -> Path:
    """3,000 noisy demonstrations of the built-in task, in prompt/answer form."""
    rows = [
        {"prompt": r.messages[0].content, "answer": r.messages[1].content}
        for r in task.demonstrations(3000, seed=0)
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "sft.jsonl", rows)


@pytest.fixture(scope="session")
def sft_policy(tmp_path_factory, task, sft_data):
    """The demo's tiny Llama (hidden 128, 4 layers) after SFT on the task.

    Trained once per session: the SFT test checks what it learned, and the reward
    model tests start from it, as the RLHF pipeline does (a reward model is only as
    good as the SFT backbone it starts from)."""
    from rlhfkit.config import SFTConfig
    from rlhfkit.models.tiny import TinySpec, build_tiny
    from rlhfkit.training.stages.sft import run_sft

    base = build_tiny(
        tmp_path_factory.mktemp("tiny-base"), TinySpec(hidden=128, layers=4), task.corpus()
    )
    out = tmp_path_factory.mktemp("sft-policy")
    cfg = SFTConfig(
        model=str(base), data=str(sft_data), out=str(out), learning_rate=2e-3,
        batch_size=64, max_steps=600, warmup_steps=30, max_length=64, seed=0,
        log_every=50, eval_every=300, eval_on_start=True,
    )  # fmt: skip
    cfg.validate()
    return run_sft(cfg)


TRL_PYTHON = Path(__file__).resolve().parents[1] / "bench" / ".trl-venv" / "bin" / "python"


@pytest.fixture(scope="session")
def trl_side():
    """``run(script, data, work, *args)``: saves ``data`` to ``work/in.pt``, runs
    ``script`` with the python of TRL's venv (``make bench-setup`` builds it) as
    ``script in.pt out.pt *args`` and returns what it saved to ``out.pt``. Skips,
    saying why, when that venv does not exist."""
    if not TRL_PYTHON.exists():
        pytest.skip(f"no TRL venv at {TRL_PYTHON}: run `make bench-setup` for the TRL parity tests")
    import torch

    def run(script: str, data: dict, work: Path, *args: str) -> dict:
        torch.save(data, work / "in.pt")
        proc = subprocess.run(
            [str(TRL_PYTHON), "-c", script, str(work / "in.pt"), str(work / "out.pt"), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(work / "out.pt")

    return run
