"""The built-in task's reward-model refresh between rejection-sampling rounds.

Llama 2 collected new preference labels on the latest model's samples every round
and retrained its reward models on all labels so far (Touvron et al. 2023, sec. 3.2.2,
3.2.3: RLHF-V1 ... V5). Here the simulated labelers play the annotators:

    --set rm_refresh=rlhfkit.demo.refresh:refresh_reward_model
    --set 'rm_refresh_args={n_prompts: 600, k: 4}'

Each call samples ``k`` responses per training prompt from the new policy, has them
compared (helpfulness, or safety for harmful requests), adds the comparisons to those
of the earlier refreshes of the same run, and continues training the current reward
model on all of them. It returns the new reward model's folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError

log = logging.getLogger("rlhfkit")


def refresh_reward_model(
    *,
    round: int,
    policy: str,
    out: str,
    reward_model: list[str],
    n_prompts: int = 600,
    k: int = 4,
    seed: int = 0,
    learning_rate: float = 1e-4,
    epochs: float = 1.0,
    batch_size: int = 32,
    max_length: int = 64,
    max_new_tokens: int = 12,
    **_: Any,
) -> str:
    """New simulated labels of ``policy``'s samples -> ``reward_model`` trained further
    on every label of this run so far, in ``out/model``."""
    from rlhfkit.config import RMConfig
    from rlhfkit.data.jsonl import write_jsonl
    from rlhfkit.demo.onpolicy import labeled_comparisons, mixed_prompts, sample_responses
    from rlhfkit.demo.task import Task
    from rlhfkit.training.stages.reward import run_rm

    if len(reward_model) != 1:
        raise ConfigError(
            "key 'rm_refresh': rlhfkit.demo.refresh:refresh_reward_model refreshes one reward "
            f"model, the run has {len(reward_model)}"
        )
    task = Task()
    folder = Path(out)
    prompts = mixed_prompts(task, "train", n_prompts, seed * 1_000 + round)
    responses = sample_responses(
        policy, prompts, k=k, max_new_tokens=max_new_tokens, seed=seed * 1_000 + round
    )
    comparisons = labeled_comparisons(task, prompts, responses, seed=seed * 1_000 + round)
    write_jsonl(folder / "labels.jsonl", [c.to_dict() for c in comparisons])
    files = {*folder.parent.parent.glob("round-*/rm/labels.jsonl"), folder / "labels.jsonl"}
    rows = [line for path in sorted(files) for line in path.read_text("utf-8").splitlines()]
    data = folder / "all_labels.jsonl"
    data.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    log.info("rm refresh: %d new comparisons, %d in all", len(comparisons), len(rows))
    cfg = RMConfig(
        model=reward_model[0], data=str(data), out=str(folder / "model"),
        learning_rate=learning_rate, batch_size=batch_size, max_length=max_length,
        epochs=epochs, seed=seed, log_every=25, eval_every=0,
    )  # fmt: skip
    cfg.validate()
    result = run_rm(cfg, overwrite=True)
    return str(result.final_dir)
