"""SFT on the built-in task learns: held-out loss falls, greedy accuracy is far above chance."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.config import SFTConfig
from rlhfkit.evaluation.evaluate import evaluate_policy
from rlhfkit.training.stages.sft import run_sft
from rlhfkit.training.tracking import read_metrics


def test_sft_learns_heldout_arithmetic(sft_policy, task):
    result = sft_policy
    out = result.final_dir.parent

    metrics = read_metrics(out / "metrics.jsonl")
    evals = [m["eval_loss"] for m in metrics if "eval_loss" in m]
    assert metrics[0]["step"] == 0 and len(evals) == 3
    # A random 512-token model starts near ln(512) = 6.2 nats per token.
    assert evals[0] > 4.0
    assert evals[-1] < 0.8, evals
    assert all(m["step"] > 0 and "lr" in m and "loss" in m for m in metrics[1:])
    assert (out / "config.yaml").is_file()

    # The final folder loads like any checkpoint.
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tok = AutoTokenizer.from_pretrained(result.final_dir)
    assert model.config.vocab_size == len(tok)

    # Chance is about 1 in 60 (answers range over -19..38). The demonstrations
    # are 15% wrong; a broken mask or loss shift stays near zero.
    scores, samples = evaluate_policy(result.final_dir, task)
    assert scores.accuracy >= 0.15, (scores, samples[:10])
    assert scores.refusal_benign <= 0.1


def test_sft_trains_gpt2(tiny_gpt2, sft_data, tmp_path: Path):
    out = tmp_path / "gpt2"
    cfg = SFTConfig(
        model=str(tiny_gpt2), data=str(sft_data), out=str(out), learning_rate=3e-3,
        batch_size=32, max_steps=60, max_length=64, seed=0, log_every=10, eval_on_start=True,
    )  # fmt: skip
    result = run_sft(cfg)
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["eval_loss"] > 4.0
    assert result.eval["eval_loss"] < 0.5 * metrics[0]["eval_loss"]
    assert AutoModelForCausalLM.from_pretrained(result.final_dir).config.model_type == "gpt2"


def test_packing_trains_like_padding(tiny_llama, sft_data, tmp_path: Path):
    """Packed rows reach a held-out loss close to padded batches at equal steps."""
    losses = {}
    for packing in (False, True):
        cfg = SFTConfig(
            model=str(tiny_llama), data=str(sft_data), out=str(tmp_path / f"p{packing}"),
            learning_rate=3e-3, batch_size=16, max_steps=40, max_length=64, seed=0,
            packing=packing, log_every=10,
        )  # fmt: skip
        # Packed rows hold several examples, so 16 packed rows carry more tokens.
        losses[packing] = run_sft(cfg).eval["eval_loss"]
    assert losses[True] < 2.0 and losses[False] < 2.5
    assert losses[True] <= losses[False] + 0.1, losses
