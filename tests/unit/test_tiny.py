"""Tiny model folders (rlhfkit.models.tiny): reproducible bytes, loadable with Auto* classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.models.tiny import (
    ARCHITECTURES,
    EOS,
    PAD,
    ROLE_TOKENS,
    TINY_CHAT_TEMPLATE,
    TinySpec,
    build_tiny,
    model_config,
    read_corpus,
)

CORPUS = [
    "What is 2 + 3?",
    "5",
    "Compute 7 * 8.",
    "The answer is 56.",
    "How can I help my neighbor?",
    "Bake them a cake.",
]
SMALL = TinySpec(vocab_size=300, hidden=32, layers=1, heads=2, max_positions=64)


def spec(**kw) -> TinySpec:
    return TinySpec(**{**SMALL.__dict__, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """One folder per architecture (llama twice, for the reproducibility check)."""
    out = {}
    for arch in ARCHITECTURES:
        out[arch] = build_tiny(tmp_path_factory.mktemp(arch), spec(arch=arch), CORPUS)
    out["llama-again"] = build_tiny(tmp_path_factory.mktemp("again"), spec(), CORPUS)
    return out


def test_same_spec_and_corpus_same_bytes(built) -> None:
    a, b = built["llama"], built["llama-again"]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_corpus_order_does_not_matter(tmp_path: Path, built) -> None:
    other = build_tiny(tmp_path / "rev", spec(), list(reversed(CORPUS)) + CORPUS[:2])
    a = built["llama"]
    assert (other / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() == (a / "model.safetensors").read_bytes()


def test_different_seed_different_weights(tmp_path: Path, built) -> None:
    from safetensors.torch import load_file

    other = build_tiny(tmp_path / "seed1", spec(seed=1), CORPUS)
    a = built["llama"]
    assert (other / "tokenizer.json").read_bytes() == (a / "tokenizer.json").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(other / "model.safetensors")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if wa[k].ndim >= 2 and not torch.equal(wa[k], wb[k])]
    assert differ  # every random matrix differs
    assert all(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].ndim >= 2)


def test_build_does_not_disturb_the_global_rng(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(tmp_path / "m", spec(), CORPUS)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_folder_loads_with_auto_classes(built, arch: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = built[arch]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == arch
    assert model.config.vocab_size == len(tok) == 300
    assert model.config.num_hidden_layers == 1
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    ids = tok("What is 2 + 3?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], 300)
    assert torch.isfinite(logits).all()


def test_tokenizer_has_pad_eos_and_chat_template(built) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["llama"])
    assert tok.pad_token == PAD
    assert tok.eos_token == EOS
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    for role_token in ROLE_TOKENS.values():
        ids = tok(role_token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1  # special tokens are single tokens
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>Hi<|assistant|>"


def test_tokenizer_splits_digits(built) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["gpt2"])
    assert len(tok("1234", add_special_tokens=False)["input_ids"]) == 4


def test_model_config_unknown_arch() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'mamba'"):
        model_config(spec(arch="mamba"), 300, 0, 1)


def test_model_config_sizes() -> None:
    cfg = model_config(TinySpec(arch="qwen2", hidden=64, layers=3, heads=4), 300, 0, 1)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 3, 4)
    assert cfg.num_key_value_heads == 2
    gpt2 = model_config(TinySpec(arch="gpt2", hidden=64, layers=3, heads=4), 300, 0, 1)
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.n_head, gpt2.vocab_size) == (64, 3, 4, 300)


# ---------------------------------------------------------------- read_corpus


def test_read_corpus_txt_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n   \nsecond line\nthird\n", encoding="utf-8")
    assert read_corpus(path) == ["first line", "second line", "third"]


def test_read_corpus_jsonl_collects_every_string(tmp_path: Path) -> None:
    rows = [
        {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6", "margin": 1.5},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {"ok": True, "n": 3, "none": None},
    ]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_corpus(path) == [
        "What is 2 + 3?",
        "5",
        "6",
        "user",
        "Hi",
        "assistant",
        "Hello",
    ]


def test_read_corpus_ndjson_and_a_bare_string_row(tmp_path: Path) -> None:
    path = tmp_path / "data.ndjson"
    path.write_text('"just text"\n["a", {"b": "c"}]\n', encoding="utf-8")
    assert read_corpus(path) == ["just text", "a", "c"]


def test_build_from_read_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    out = build_tiny(tmp_path / "m", spec(), read_corpus(path))
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
