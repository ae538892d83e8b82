"""Run folders: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``final/``."""

from __future__ import annotations

import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import to_yaml
from rlhfkit.errors import ConfigError

log = logging.getLogger("rlhfkit")

RUN_FILES = ("metrics.jsonl", "checkpoints", "final", "tensorboard", "config.yaml")


def prepare_run_dir(cfg: Any, accelerator, *, resume: bool, overwrite: bool) -> Path:
    """Create the run folder and write the resolved config; refuse to mix two runs."""
    out = Path(cfg.out)
    if accelerator.is_main_process:
        existing = [n for n in RUN_FILES if (out / n).exists()]
        if existing and not (resume or overwrite):
            raise ConfigError(
                f"key 'out': {out} already holds a run ({', '.join(existing)}); "
                "pass --resume to continue it or --overwrite to start over"
            )
        if overwrite and not resume:
            for name in existing:
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
    accelerator.wait_for_everyone()
    return out


@dataclass
class StageInputs:
    """What every offline stage starts from: the accelerator, the tokenizer and its
    resolved chat template, and the train / eval records."""

    accelerator: Any
    tokenizer: Any
    template: str
    train: list
    eval: list


def split_eval(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``records`` (seeded, order kept)."""
    n_eval = int(len(records) * fraction)
    if n_eval == 0:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]


def prepare_stage(
    cfg: Any,
    kind: str,
    *,
    resume: bool,
    overwrite: bool,
    keep: Callable[[Any], bool] | None = None,
    what: str = "",
    data_key: str = "data",
    eval_key: str = "eval_data",
) -> StageInputs:
    """Load and validate the data first (bad input fails fast, before any model is
    loaded), then the accelerator, the run folder and the tokenizer.

    ``keep`` filters records (for example by ``dimension``), logging how many it kept.
    Records come from ``cfg.<data_key>``; eval records from ``cfg.<eval_key>``, else
    ``cfg.eval_fraction`` of them (none when the config has no such key).
    """
    from rlhfkit.data.load import load_records
    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.training.loop import make_accelerator

    source, eval_source = getattr(cfg, data_key), getattr(cfg, eval_key)
    records = load_records(source, kind, split=cfg.split, skip_invalid=cfg.skip_invalid).records
    evals = None
    if eval_source:
        evals = load_records(eval_source, kind, skip_invalid=cfg.skip_invalid).records
    if keep is not None:
        before = len(records)
        records = [r for r in records if keep(r)]
        evals = None if evals is None else [r for r in evals if keep(r)]
        log.info("using %d of %d records (%s)", len(records), before, what)
        if not records:
            raise ConfigError(f"no records left after selecting {what}")
    if evals is None:
        records, evals = split_eval(records, getattr(cfg, "eval_fraction", 0.0), cfg.seed)
    accelerator = make_accelerator(cfg)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # before any model is built: new heads (a reward model's) are seeded
    prepare_run_dir(cfg, accelerator, resume=resume, overwrite=overwrite)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    return StageInputs(
        accelerator, tokenizer, resolve_template(tokenizer, cfg.template), records, evals
    )


def tokenize_splits(
    tokenize: Callable[..., tuple[list, Any]], s: StageInputs, max_length: int, *extra: Any
) -> tuple[list, list]:
    """``tokenize(records, tokenizer, template, max_length, *extra)`` on the train and
    eval records, reporting each split's truncations."""
    out = []
    for name, records in (("train", s.train), ("eval", s.eval)):
        examples, stats = tokenize(records, s.tokenizer, s.template, max_length, *extra)
        stats.report(name, max_length)
        out.append(examples)
    return out[0], out[1]
