"""SFT options that change the model or the loop: LoRA, bf16, TensorBoard, chat records, datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlhfkit.config import SFTConfig
from rlhfkit.training.stages.sft import run_sft
from rlhfkit.training.tracking import read_metrics


def short(model: Path, data: Path, out: Path, **kw) -> SFTConfig:
    base = dict(model=str(model), data=str(data), out=str(out), learning_rate=3e-3, batch_size=16,
                max_steps=30, max_length=64, seed=0, log_every=5, eval_on_start=True)  # fmt: skip
    base.update(kw)
    cfg = SFTConfig(**base)
    cfg.validate()
    return cfg


def test_lora_trains_adapters_and_saves_merged(tiny_llama, sft_data, tmp_path):
    pytest.importorskip("peft")
    result = run_sft(
        short(tiny_llama, sft_data, tmp_path / "lora", lora_r=8, lora_alpha=16, learning_rate=1e-2)
    )
    m = read_metrics(tmp_path / "lora" / "metrics.jsonl")
    assert result.eval["eval_loss"] < m[0]["eval_loss"] - 0.5
    merged = AutoModelForCausalLM.from_pretrained(result.final_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not any("lora" in k for k in merged.state_dict())
    # Adapters on the linear layers changed them; the embeddings were frozen.
    emb = "model.embed_tokens.weight"
    assert torch.equal(merged.state_dict()[emb], base.state_dict()[emb])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])


def test_bf16_and_tensorboard(tiny_llama, sft_data, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "bf16"
    result = run_sft(short(tiny_llama, sft_data, out, precision="bf16", tensorboard=True))
    m = read_metrics(out / "metrics.jsonl")
    assert result.eval["eval_loss"] < m[0]["eval_loss"] - 1.0
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert all("ppl" in x for x in m[1:])


def test_chat_records_from_saved_dataset_with_eval_file(tiny_llama, task, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"messages": [m.as_dict() for m in r.messages]} for r in task.demonstrations(400, seed=5)
    ]
    path = tmp_path / "ds"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(path))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"messages": [m.as_dict() for m in r.messages]}) + "\n"
                            for r in task.heldout_sft_records()[:50]))  # fmt: skip
    result = run_sft(short(tiny_llama, path, tmp_path / "run", eval_data=str(held)))
    m = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.eval["eval_loss"] < m[0]["eval_loss"] - 1.0


def test_grad_accum_matches_big_batch(tiny_llama, sft_data, tmp_path):
    """4 micro-batches of 4 = one batch of 16: same per-step loss, same weights."""
    a = run_sft(
        short(
            tiny_llama,
            sft_data,
            tmp_path / "a",
            batch_size=16,
            max_steps=5,
            eval_fraction=0.0,
            log_every=1,
        )
    )
    b = run_sft(
        short(
            tiny_llama,
            sft_data,
            tmp_path / "b",
            batch_size=4,
            grad_accum=4,
            max_steps=5,
            eval_fraction=0.0,
            log_every=1,
        )
    )
    la = [x["loss"] for x in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    lb = [x["loss"] for x in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert la == pytest.approx(lb, rel=1e-4)
    wa = AutoModelForCausalLM.from_pretrained(a.final_dir).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b.final_dir).state_dict()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
