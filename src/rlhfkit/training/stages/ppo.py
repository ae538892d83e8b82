"""PPO against a reward source with a per-token KL penalty to the reference (InstructGPT).

Models: the policy (from the SFT folder), a frozen reference (the SFT weights; with
LoRA, the policy with its adapters disabled), a value model (default: initialised from
the reward model, as InstructGPT does; or from the SFT model; or a head on the policy's
backbone), and the reward source(s). The step itself is :class:`OnlineRun`'s; this
module adds values, KL-shaped rewards, GAE, and the clipped policy + value + entropy
(+ ptx) loss. Defaults and where they come from: docs/ppo.md.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from rlhfkit.algorithms.logprobs import token_logps_and_entropy
from rlhfkit.algorithms.ppo import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    shaped_rewards,
)
from rlhfkit.algorithms.sft import selected_nll_sum
from rlhfkit.config import PPOConfig
from rlhfkit.errors import ConfigError
from rlhfkit.models.heads import labelled_logits
from rlhfkit.models.reward import load_reward_model
from rlhfkit.rollout.generator import Rollout
from rlhfkit.rollout.rewards import reward_from_config
from rlhfkit.training.loop import LossOutput, TrainResult
from rlhfkit.training.online import (
    ActorCritic,
    Experience,
    OnlineRun,
    PromptSchedule,
    global_whiten,
    load_policy,
    reference_logps,
)
from rlhfkit.training.run import StageInputs, prepare_stage

log = logging.getLogger("rlhfkit")


def load_value_model(cfg: PPOConfig, policy: torch.nn.Module, tokenizer: Any):
    """``(critic, value_head)``: one of them is set, as ``cfg.value_model`` asks."""
    choice = cfg.value_model
    if choice == "shared":
        hidden = policy.config.get_text_config().hidden_size
        head = torch.nn.Linear(hidden, 1, bias=True)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return None, head
    if choice == "auto":
        choice = "reward" if cfg.reward_model else "policy"
    path = {"reward": cfg.reward_model[0] if cfg.reward_model else "", "policy": cfg.model}.get(
        choice, choice
    )
    critic = load_reward_model(
        path, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    want = policy.config.get_text_config().vocab_size
    got = critic.config.get_text_config().vocab_size
    if want != got:
        raise ConfigError(
            f"key 'value_model': {path} has a vocabulary of {got} tokens but the policy has "
            f"{want}; the value model must share the policy's tokenizer "
            "(use value_model=policy or value_model=shared)"
        )
    return critic, None


class PPORun(OnlineRun):
    def __init__(
        self,
        cfg: PPOConfig,
        s: StageInputs,
        policy: torch.nn.Module,
        reference: torch.nn.Module | None,
        critic: torch.nn.Module | None,
        value_head: torch.nn.Linear | None,
        ptx: list | None = None,
    ) -> None:
        acc = s.accelerator
        reward = reward_from_config(cfg, acc.device)
        self.setup_online(cfg, acc, s.tokenizer, s.template, s.train, s.eval, reward, "ppo")
        self.cfg: PPOConfig = cfg
        self.prepare_model(
            ActorCritic(policy, critic, value_head), reference, cfg.value_learning_rate
        )
        self.kl_ctl = (
            AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
            if cfg.adaptive_kl
            else FixedKLController(cfg.kl_coef)
        )
        self.ptx = ptx or []
        if self.ptx:
            from rlhfkit.data.batching import PadCollator

            self.ptx_collate = PadCollator(s.tokenizer.pad_token_id)
            self.ptx_schedule = PromptSchedule(
                len(self.ptx), cfg.batch_size, cfg.seed + 1, acc.process_index, acc.num_processes
            )
            self.ptx_count = 0

    # -- state --------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "kl_controller": self.kl_ctl.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.kl_ctl.load_state_dict(state["kl_controller"])

    # -- experience -----------------------------------------------------------------
    def make_experience(
        self, rollout: Rollout, scores: torch.Tensor
    ) -> tuple[Experience, dict[str, float]]:
        cfg = self.cfg
        exp = self.experience_base(rollout)
        mask = exp.mask
        model = self.accelerator.unwrap_model(self.model)
        old_logps, values = self.token_logps(model, exp)
        assert values is not None
        ref = reference_logps(self.reference, model, exp, self)
        kl = kl_estimate(old_logps, ref, cfg.kl_estimator) * mask
        scores = scores.to(mask.device)
        beta = self.kl_ctl.value
        rewards = shaped_rewards(scores, kl, mask, beta)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = global_whiten(self, advantages, mask)
        exp.old_logps, exp.ref_logps, exp.values = old_logps, ref, values
        exp.advantages, exp.returns = advantages, returns
        seq_kl = self.gather((kl * mask).sum(dim=1).cpu())
        shaped = self.gather(rewards.sum(dim=1).cpu())
        self.kl_ctl.update(float(seq_kl.mean()), int(seq_kl.numel()))
        stats = {
            "kl": float(seq_kl.mean()),
            "kl_coef": beta,
            "reward_shaped_mean": float(shaped.mean()),
            "reward_shaped_std": float(shaped.std()) if shaped.numel() > 1 else 0.0,
            "value_mean": self.global_mean(values, mask),
            "explained_variance": explained_variance(values, returns, mask),
        }
        return exp, stats

    def global_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        return self.global_sum(float((x * mask).sum())) / max(self.global_sum(float(mask.sum())), 1)

    # -- loss -----------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, mb: Experience) -> LossOutput:
        cfg = self.cfg
        assert mb.values is not None and mb.returns is not None
        logits, values = model(mb, cfg.temperature)
        logps, token_entropy = token_logps_and_entropy(
            logits, mb.response_ids, entropy_grad=cfg.entropy_coef != 0
        )
        pl = clipped_policy_loss(
            logps, mb.old_logps, mb.advantages, mb.mask, cfg.cliprange, cfg.cliprange_high
        )
        vl = clipped_value_loss(values, mb.values, mb.returns, mb.mask, cfg.cliprange_value)
        entropy = masked_mean(token_entropy, mb.mask)
        loss = pl.loss + cfg.vf_coef * vl.loss - cfg.entropy_coef * entropy
        n = mb.mask.sum()
        return LossOutput(
            loss * n,
            {
                "policy_loss": pl.loss.detach() * n,
                "value_loss": vl.loss.detach() * n,
                "entropy": entropy.detach() * n,
                "clip_fraction": pl.clip_fraction * n,
                "value_clip_fraction": vl.clip_fraction * n,
                "approx_kl": pl.approx_kl * n,
            },
        )

    def extra_backward(self, model: torch.nn.Module) -> dict[str, float]:
        """PPO-ptx (InstructGPT eq. 2): ``ptx_coef`` x the SFT NLL on a batch of
        pretraining / SFT data, mixed into every optimizer step."""
        if not self.ptx or self.cfg.ptx_coef <= 0:
            return {}
        acc = self.accelerator
        idx = self.ptx_schedule.indices(self.ptx_count)
        self.ptx_count += 1
        batch = self.ptx_collate([self.ptx[i] for i in idx])
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        policy = acc.unwrap_model(model).policy
        with acc.no_sync(model), acc.autocast():
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            logits, targets, _ = labelled_logits(policy, inputs, batch["labels"])
            nll, count = selected_nll_sum(logits, targets), targets.numel()
            n_global = self.global_sum(float(count))
            acc.backward(self.cfg.ptx_coef * nll * acc.num_processes / max(n_global, 1.0))
        return {"ptx_loss": self.global_sum(float(nll.detach())) / max(n_global, 1.0)}

    def begin(self, step: int) -> None:
        super().begin(step)
        if self.ptx:
            self.ptx_count = step * 1_000  # a fixed stride per step: resumable without state


def run_ppo(cfg: PPOConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Optimise ``cfg.model`` on ``cfg.prompts`` against the configured reward."""
    cfg.validate()
    s = prepare_stage(
        cfg, "prompt", resume=resume, overwrite=overwrite, data_key="prompts",
        eval_key="eval_prompts",
    )  # fmt: skip
    policy, reference = load_policy(cfg, s.tokenizer)
    critic, head = load_value_model(cfg, policy, s.tokenizer)
    ptx = None
    if cfg.ptx_data and cfg.ptx_coef > 0:
        from rlhfkit.data.load import load_records
        from rlhfkit.data.prepare import tokenize_sft

        records = load_records(cfg.ptx_data, "sft", skip_invalid=cfg.skip_invalid).records
        ptx, stats = tokenize_sft(records, s.tokenizer, s.template, cfg.max_length)  # type: ignore[arg-type]
        stats.report("ptx", cfg.max_length)
    run = PPORun(cfg, s, policy, reference, critic, head, ptx)
    return run.fit(resume=resume)
