"""The alignment algorithms ``rlhfkit demo --algorithms`` can run, by name.

Each is one function ``(AlgorithmInputs) -> policy folder`` that trains a policy from
what the pipeline's earlier steps made (the SFT model, the comparisons, the two reward
models, the prompts) into ``inputs.out`` and returns the folder ``from_pretrained``
loads. Adding an algorithm is one function and one :data:`REGISTRY` entry; the
pipeline evaluates its policy next to SFT and puts it in the report (reward / KL
curves too, when its ``metrics.jsonl`` logs ``score_mean`` and ``kl`` per step, as
online stages do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class AlgorithmInputs:
    """What every algorithm may train from.

    ``sft``: the SFT policy folder; ``sft_data``: the demonstrations it learned from;
    ``preferences``: comparisons on the dimension that matters for each prompt
    (``*_eval``: held-out prompts', or None); ``helpfulness`` / ``safety``: all
    comparisons of each dimension; ``reward_models``: (helpfulness, safety) folders,
    combined by Llama 2's rule (``reward_combine="llama2"``); ``prompts``: training
    prompt records with ``kind`` / ``answer`` / ``unsafe`` fields; ``eval_prompts``:
    held-out prompt records (for a stage's own evaluation, never for training).
    ``quick``: the short demo; ``max_kl``: the bound the demo holds policies to
    (nats per response).
    """

    sft: Path
    sft_data: Path
    preferences: Path
    preferences_eval: Path | None
    helpfulness: Path
    safety: Path
    reward_models: tuple[Path, Path]
    prompts: Path
    eval_prompts: Path
    out: Path
    quick: bool
    max_kl: float
    seed: int = 0

    def run_kwargs(self) -> dict[str, bool]:
        """How to start the run in ``out``: :func:`resume_or_overwrite`."""
        return resume_or_overwrite(self.out)


def resume_or_overwrite(folder: Path) -> dict[str, bool]:
    """``resume`` a training run that left checkpoints in ``folder`` (it was killed), or
    a self-training run that finished some rounds (their ``summary.json``), else start
    it over (``overwrite``)."""
    ckpt = folder / "checkpoints"
    resume = (ckpt.is_dir() and any(ckpt.iterdir())) or any(folder.rglob("summary.json"))
    return {"resume": resume, "overwrite": not resume}


Algorithm = Callable[[AlgorithmInputs], Path]


def train_ppo(inputs: AlgorithmInputs) -> Path:
    """PPO-ptx against the safety-gated combination of the two reward models (InstructGPT:
    a KL penalty to the SFT model, a value model initialised from the reward model, and
    the SFT loss on the demonstrations mixed into every update, which keeps the
    arithmetic the reward models cannot check). Every rollout is logged to
    ``samples.jsonl`` for the over-optimisation plot."""
    from rlhfkit.config import PPOConfig
    from rlhfkit.training.stages.ppo import run_ppo

    cfg = PPOConfig(
        model=str(inputs.sft), prompts=str(inputs.prompts), out=str(inputs.out),
        reward_model=[str(p) for p in inputs.reward_models], reward_combine="llama2",
        max_steps=15 if inputs.quick else 30, rollout_batch_size=64, batch_size=32,
        ppo_epochs=2, max_new_tokens=12, learning_rate=5e-5, kl_coef=0.1,
        ptx_data=str(inputs.sft_data), ptx_coef=1.0, max_length=64, seed=inputs.seed,
        sample_every=1, n_samples_logged=64, kl_warn=inputs.max_kl, save_every=5,
        keep_checkpoints=1,
    )  # fmt: skip
    return run_ppo(cfg, **inputs.run_kwargs()).final_dir


def train_dpo(inputs: AlgorithmInputs) -> Path:
    """DPO (sigmoid loss, the paper's beta 0.1) on the same comparisons the reward models
    learned from, each prompt judged on the dimension that matters for it, with an SFT
    term on the chosen responses. Its weight 3 and lr 3e-5 keep the SFT model's
    arithmetic: with weight 1, lr 1e-4 and beta 0.5 DPO lowered held-out accuracy on
    three quick-recipe SFT models (0.347 -> 0.253, 0.620 -> 0.527), below SFT's gold on
    one; the preferences cannot teach sums the model does not know (docs/demo.md)."""
    from rlhfkit.config import DPOConfig
    from rlhfkit.training.stages.dpo import run_dpo

    extra: dict[str, Any] = {}
    if inputs.preferences_eval is not None:
        extra["eval_data"] = str(inputs.preferences_eval)
    cfg = DPOConfig(
        model=str(inputs.sft), data=str(inputs.preferences), out=str(inputs.out),
        loss="sigmoid", beta=0.1, sft_weight=3.0, learning_rate=3e-5, batch_size=32,
        max_steps=40 if inputs.quick else 80, max_length=64, seed=inputs.seed,
        log_every=10, eval_every=20, save_every=20, keep_checkpoints=1, **extra,
    )  # fmt: skip
    return run_dpo(cfg, **inputs.run_kwargs()).final_dir


def _group_relative(inputs: AlgorithmInputs, estimator: str) -> Path:
    """GRPO / RLOO: 8 samples per prompt, scored by the safety-gated pair of reward
    models plus the exact-answer checker (the verifiable reward the helpfulness model
    lacks: it cannot check a sum), k3 KL to the SFT model."""
    from rlhfkit.config import GRPOConfig
    from rlhfkit.training.stages.grpo import run_grpo

    cfg = GRPOConfig(
        model=str(inputs.sft), prompts=str(inputs.prompts), out=str(inputs.out),
        reward_model=[str(p) for p in inputs.reward_models], reward_combine="llama2",
        reward_fn=["rlhfkit.rewards:exact_answer"], reward_weights=[1.0, 1.0],
        advantage_estimator=estimator, num_generations=8, rollout_batch_size=16,
        batch_size=128, max_steps=30 if inputs.quick else 60, max_new_tokens=12,
        learning_rate=1e-4, beta=0.04, max_length=64, seed=inputs.seed, sample_every=1,
        n_samples_logged=64, kl_warn=inputs.max_kl, save_every=10, keep_checkpoints=1,
    )  # fmt: skip
    return run_grpo(cfg, **inputs.run_kwargs()).final_dir


def train_grpo(inputs: AlgorithmInputs) -> Path:
    """GRPO: group-normalised advantages (see :func:`_group_relative`)."""
    return _group_relative(inputs, "grpo")


def train_rloo(inputs: AlgorithmInputs) -> Path:
    """RLOO: the leave-one-out baseline on GRPO's machinery."""
    return _group_relative(inputs, "rloo")


def _selftrain_keys(inputs: AlgorithmInputs) -> dict[str, Any]:
    """What the self-training methods share: 4 samples per prompt from the policy,
    scored like GRPO's (the gated reward models plus the exact-answer checker, each
    standardised on the samples: the reward models alone cannot check a sum, and
    selecting by them lowered arithmetic accuracy, docs/selftrain.md), one epoch of
    fine-tuning per round at DPO's learning rate."""
    return dict(
        model=str(inputs.sft), prompts=str(inputs.prompts), out=str(inputs.out),
        reward_model=[str(p) for p in inputs.reward_models], reward_combine="llama2",
        reward_fn=["rlhfkit.rewards:exact_answer"], reward_weights=[1.0, 1.0],
        samples_per_prompt=4, max_new_tokens=12, generation_batch_size=256,
        learning_rate=5e-5, batch_size=32, epochs=1, max_length=64, seed=inputs.seed,
        log_every=10, save_every=50, keep_checkpoints=1,
    )  # fmt: skip


def train_rejection_sampling(inputs: AlgorithmInputs) -> Path:
    """Llama 2's rejection sampling: the best of 4 samples per prompt by reward, SFT on
    them; two rounds (one in the quick demo), each sampling from the last policy."""
    from rlhfkit.config import RejectionSamplingConfig
    from rlhfkit.training.stages.rejection import run_rejection_sampling

    cfg = RejectionSamplingConfig(
        **_selftrain_keys(inputs), keep="best", rounds=1 if inputs.quick else 2
    )
    return run_rejection_sampling(cfg, **inputs.run_kwargs()).final_dir


def train_rest(inputs: AlgorithmInputs) -> Path:
    """ReST: one Grow step (4 samples per prompt), then Improve steps on the samples
    above the 50th and then the 75th percentile of its rewards."""
    from rlhfkit.config import ReSTConfig
    from rlhfkit.training.stages.rest import run_rest

    cfg = ReSTConfig(**_selftrain_keys(inputs), thresholds=[0.5, 0.75], threshold_mode="quantile")
    return run_rest(cfg, **inputs.run_kwargs()).final_dir


def train_hir(inputs: AlgorithmInputs) -> Path:
    """HIR: each sampled prompt rewritten by the built-in relabeler so that its response
    is right for it (no reward model; the reward is only logged), SFT on the pairs."""
    from rlhfkit.config import HIRConfig
    from rlhfkit.training.stages.hir import run_hir

    keys = {**_selftrain_keys(inputs), "relabel_fn": "rlhfkit.demo.relabel:relabel"}
    return run_hir(HIRConfig(**keys), **inputs.run_kwargs()).final_dir


REGISTRY: dict[str, Algorithm] = {
    "ppo": train_ppo,
    "dpo": train_dpo,
    "grpo": train_grpo,
    "rloo": train_rloo,
    "rejection-sampling": train_rejection_sampling,
    "rest": train_rest,
    "hir": train_hir,
}


def parse_algorithms(spec: str) -> list[str]:
    """``"ppo,dpo"`` -> ``["ppo", "dpo"]``; unknown names fail, listing the known ones."""
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--algorithms: expected names from {', '.join(REGISTRY)}, got nothing")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(
            f"--algorithms: unknown {', '.join(repr(n) for n in unknown)}; "
            f"known: {', '.join(REGISTRY)}"
        )
    return list(dict.fromkeys(names))
