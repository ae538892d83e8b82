"""Run folders: ``config.yaml``, ``metrics.jsonl``, ``checkpoints/``, ``final/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rlhfkit.config import to_yaml
from rlhfkit.errors import ConfigError

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
