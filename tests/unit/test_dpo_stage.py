"""DPO plumbing: one concatenated forward, live vs precomputed reference, LoRA reference."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import DPOConfig
from rlhfkit.data.batching import PairCollator
from rlhfkit.data.prepare import tokenize_pairs
from rlhfkit.data.templates import resolve_template
from rlhfkit.data.types import Message, PreferenceRecord, RankingRecord
from rlhfkit.models.tiny import TinySpec, build_tiny
from rlhfkit.training.stages.dpo import (
    DPOObjective,
    frozen_reference,
    precompute_reference,
    run_dpo,
)
from rlhfkit.training.tracking import read_metrics

CORPUS = [
    "What is 2 + 3?",
    "What is 4 + 4?",
    "5",
    "6",
    "8",
    "I can't help with that.",
    "The answer is 5.",
] * 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny(
        tmp_path_factory.mktemp("tiny"), TinySpec(vocab_size=300, hidden=32, layers=1), CORPUS
    )
    return path, AutoTokenizer.from_pretrained(path)


def pairs_for(tok):
    p1, p2 = (Message("user", "What is 2 + 3?"),), (Message("user", "What is 4 + 4?"),)
    recs = [
        PreferenceRecord(p1, "5", "6"),
        PreferenceRecord(p2, "8", "I can't help with that."),
        RankingRecord(p1, ("5", "The answer is 5.", "6"), (1, 2, 3)),  # 3 pairs
    ]
    return tokenize_pairs(recs, tok, resolve_template(tok), 64)[0]


class Acc:
    device = torch.device("cpu")

    def autocast(self):
        return torch.autocast("cpu", enabled=False)


def test_pairs_concatenate_chosen_then_rejected(tiny):
    _, tok = tiny
    pairs = pairs_for(tok)
    assert len(pairs) == 5
    batch = PairCollator(tok.pad_token_id)(pairs)
    assert batch["input_ids"].shape[0] == 10 and batch["n_pairs"] == 5
    assert "ref_logps" not in batch


def test_precomputed_and_live_reference_give_the_same_loss(tiny):
    path, tok = tiny
    policy = AutoModelForCausalLM.from_pretrained(path)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    reference = frozen_reference(AutoModelForCausalLM.from_pretrained(path))
    cfg = DPOConfig(model=str(path), data="d", out="o", beta=0.3)
    live_pairs = pairs_for(tok)
    pre_pairs = pairs_for(tok)
    collate = PairCollator(tok.pad_token_id)
    precompute_reference(reference, policy, pre_pairs, collate, Acc(), batch_size=2)
    assert all(p.ref is not None for p in pre_pairs)
    live = DPOObjective(cfg, reference).loss(policy, collate(live_pairs))
    pre_batch = collate(pre_pairs)
    assert "ref_logps" in pre_batch
    pre = DPOObjective(cfg, None).loss(policy, pre_batch)
    assert abs(float(live.loss.detach()) - float(pre.loss.detach())) < 1e-6
    moved = float(live.loss.detach())
    assert moved != pytest.approx(5 * math.log(2), abs=1e-3)  # the policy did move


@pytest.mark.parametrize("lora_r", [0, 4])
def test_first_step_loss_is_log2_with_frozen_or_adapter_reference(tiny, tmp_path, lora_r):
    """At step 1 the policy equals its reference (a frozen copy, or the LoRA policy with
    adapters disabled, whose B matrices start at zero): the DPO loss is log 2."""
    path, _ = tiny
    data = tmp_path / "p.jsonl"
    rows = [{"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"}] * 8
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DPOConfig(model=str(path), data=str(data), out=str(tmp_path / "run"), learning_rate=1e-2, batch_size=4,
                    max_steps=3, log_every=1, eval_fraction=0.0, lora_r=lora_r)  # fmt: skip
    cfg.validate()
    run_dpo(cfg)
    losses = [m["loss"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert losses[-1] < losses[0]  # and it learns from there
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final") is not None


def test_dpo_config_validation():
    from rlhfkit.errors import ConfigError

    with pytest.raises(ConfigError, match="key 'loss'"):
        DPOConfig(model="m", data="d", out="o", loss="kto").validate()
    with pytest.raises(ConfigError, match="key 'label_smoothing'"):
        DPOConfig(model="m", data="d", out="o", loss="robust", label_smoothing=0.5).validate()
    with pytest.raises(ConfigError, match="key 'beta'"):
        DPOConfig(model="m", data="d", out="o", beta=0).validate()
