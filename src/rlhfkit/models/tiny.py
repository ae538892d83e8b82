"""Tiny models for tests, benchmarks and the demo.

`build_tiny` trains a byte-level BPE tokenizer on a corpus (digits split one by
one, as the Llama and Qwen tokenizers do, so arithmetic generalises), gives it
pad/eos tokens and a chat template, builds a randomly initialised causal LM of
the chosen architecture from a config, and saves both with ``save_pretrained``.
Everything downstream loads the folder like any other checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PAD = "<|pad|>"
EOS = "<|endoftext|>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
ARCHITECTURES = ("llama", "gpt2", "qwen2")

# Every message opens with its role token; an assistant turn ends with EOS so a
# policy learns to stop. ``add_generation_prompt`` opens the assistant turn.
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{% elif m['role'] == 'user' %}<|user|>"
    "{% else %}<|assistant|>{% endif %}"
    "{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}<|endoftext|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    arch: str = "llama"
    vocab_size: int = 512
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    max_positions: int = 256
    seed: int = 0


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer (a ``PreTrainedTokenizerFast``) trained on ``corpus``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, EOS, *ROLE_TOKENS.values()]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(corpus)), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=TINY_CHAT_TEMPLATE,
        model_max_length=4096,
    )


def model_config(spec: TinySpec, vocab_size: int, pad_id: int, eos_id: int):
    """A transformers config for ``spec.arch`` with the tiny sizes."""
    import transformers

    common = dict(
        vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, bos_token_id=eos_id
    )
    if spec.arch == "llama":
        return transformers.LlamaConfig(
            hidden_size=spec.hidden,
            intermediate_size=spec.hidden * 4,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.heads,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            **common,
        )
    if spec.arch == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=spec.hidden,
            intermediate_size=spec.hidden * 4,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=max(1, spec.heads // 2),
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            **common,
        )
    if spec.arch == "gpt2":
        return transformers.GPT2Config(
            n_embd=spec.hidden,
            n_layer=spec.layers,
            n_head=spec.heads,
            n_positions=spec.max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    raise ValueError(
        f"unknown architecture {spec.arch!r}; expected one of {', '.join(ARCHITECTURES)}"
    )


def build_tiny(
    out: str | Path, spec: TinySpec = TinySpec(), corpus: Iterable[str] | None = None
) -> Path:
    """Build and save a tiny tokenizer + model to ``out``; same spec and corpus, same bytes."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    if corpus is None:
        from rlhfkit.demo.task import Task

        corpus = Task().corpus()
    out = Path(out)
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    config = model_config(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def read_corpus(path: str | Path) -> list[str]:
    """Lines of a text file, or the text fields of a JSONL file, as a tokenizer corpus."""
    import json

    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix not in (".jsonl", ".ndjson"):
        return [ln for ln in lines if ln.strip()]
    texts: list[str] = []
    for ln in lines:
        if ln.strip():
            texts.extend(_strings(json.loads(ln)))
    return texts


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
