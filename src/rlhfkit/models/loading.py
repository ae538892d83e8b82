"""Loading and saving Hugging Face models: dtype, pad token, LoRA, atomic saves."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError, InputNotFoundError

log = logging.getLogger("rlhfkit")

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters (peft) on the policy. ``r == 0`` means full fine-tuning."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


def _check_exists(name_or_path: str) -> None:
    p = Path(name_or_path)
    looks_local = (
        name_or_path.startswith((".", "/", "~")) or p.exists() or name_or_path.count("/") > 1
    )
    if looks_local and not p.exists():
        raise InputNotFoundError(f"model {name_or_path!r}: no such folder")


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False):
    """The model's tokenizer, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    _check_exists(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise InputNotFoundError(f"tokenizer {name_or_path!r}: {e}") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer {name_or_path!r} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
        log.info("tokenizer has no pad token; using eos %r", tok.eos_token)
    return tok


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ConfigError(f"key 'dtype': expected one of {', '.join(DTYPES)}, got {name!r}")
    return "auto" if name == "auto" else getattr(torch, name)


def load_causal_lm(
    name_or_path: str,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    lora: LoraSpec | None = None,
):
    """A causal LM from a local folder or a hub name, optionally wrapped in LoRA adapters."""
    from transformers import AutoModelForCausalLM

    _check_exists(name_or_path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        raise InputNotFoundError(f"model {name_or_path!r}: {e}") from e
    if lora is not None and lora.r > 0:
        model = apply_lora(model, lora)
    return model


def lora_spec(cfg) -> LoraSpec:
    """The LoRA settings of a config with ``ModelKeys``."""
    targets = cfg.lora_target_modules
    target: str | list[str] = "all-linear" if targets == ["all-linear"] else list(targets)
    return LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, target)


def apply_lora(model, spec: LoraSpec, task_type: str = "CAUSAL_LM"):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ConfigError("key 'lora_r' > 0 needs peft: pip install 'rlhfkit[lora]'") from e
    cfg = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, cfg)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def save_pretrained_atomic(model, tokenizer, out: str | Path, *, merge_lora: bool = True) -> Path:
    """Save model + tokenizer to ``out`` through a temporary folder and a rename,
    so a crash never leaves a half-written checkpoint under the final name.
    LoRA models are merged first (``merge_lora``) so ``from_pretrained`` loads them."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    if is_peft(model) and merge_lora:
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    replace_dir(tmp, out)
    return out


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``, replacing ``dst``; the old one is removed only after."""
    old = dst.with_name(dst.name + ".old")
    if dst.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old)
