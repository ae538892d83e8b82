"""GRPO (Shao et al. 2024) and RLOO (Ahmadian et al. 2024) on :class:`OnlineRun`.

Each step samples ``num_generations`` responses for each of ``rollout_batch_size``
prompts, scores them with the reward source(s), and gives every response the same
advantage on all its tokens: its reward relative to the other responses to the same
prompt (:mod:`rlhfkit.algorithms.grpo`). No value model. The loss is the clipped ratio
objective per token, plus ``beta`` x the k3 KL to the reference, aggregated by
``loss_type``. Defaults and where they come from: docs/grpo.md.
"""

from __future__ import annotations

import torch

from rlhfkit.algorithms.grpo import (
    group_advantages,
    loss_denominator,
    rloo_advantages,
    sequence_loss_sum,
)
from rlhfkit.algorithms.logprobs import token_logps_and_entropy
from rlhfkit.algorithms.ppo import (
    approx_kl_old_new,
    clipped_surrogate,
    kl_estimate,
)
from rlhfkit.config import GRPOConfig
from rlhfkit.rollout.generator import Rollout
from rlhfkit.rollout.rewards import reward_from_config
from rlhfkit.training.loop import LossOutput, TrainResult
from rlhfkit.training.online import (
    ActorCritic,
    Experience,
    OnlineRun,
    load_policy,
    reference_logps,
    sequence_kl,
)
from rlhfkit.training.run import StageInputs, prepare_stage


class GRPORun(OnlineRun):
    def __init__(
        self,
        cfg: GRPOConfig,
        s: StageInputs,
        policy: torch.nn.Module,
        reference: torch.nn.Module | None,
    ) -> None:
        acc = s.accelerator
        reward = reward_from_config(cfg, acc.device)
        name = "rloo" if cfg.advantage_estimator == "rloo" else "grpo"
        self.setup_online(cfg, acc, s.tokenizer, s.template, s.train, s.eval, reward, name)
        self.cfg: GRPOConfig = cfg
        self.prepare_model(ActorCritic(policy), reference)
        self.use_kl = cfg.beta > 0
        # One optimizer step per rollout: the sampling policy is the policy being updated,
        # so the old log-probs are the current ones, detached (no extra forward).
        self.on_policy = cfg.ppo_epochs == 1 and cfg.batch_size * cfg.grad_accum >= (
            self.rollout_rows()
        )

    def rollout_rows(self) -> int:
        return self.cfg.rollout_batch_size * self.cfg.num_generations

    def step_indices(self) -> list[int]:
        g = self.cfg.num_generations
        return [i for i in super().step_indices() for _ in range(g)]

    # -- experience -----------------------------------------------------------------
    def advantages(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence advantages of this process's rows, and each of its groups' zero-spread
        flag. Statistics over the whole batch (``scale_rewards=batch``) use every
        process's scores; groups never straddle processes."""
        cfg = self.cfg
        all_scores = self.gather(scores.float())
        if cfg.advantage_estimator == "rloo":
            adv, zero = rloo_advantages(all_scores, cfg.num_generations)
        else:
            adv, zero = group_advantages(all_scores, cfg.num_generations, cfg.scale_rewards)
        n, rank = scores.numel(), self.accelerator.process_index
        g = cfg.num_generations
        return adv[rank * n : (rank + 1) * n], zero[rank * n // g : (rank + 1) * n // g]

    def make_experience(
        self, rollout: Rollout, scores: torch.Tensor
    ) -> tuple[Experience, dict[str, float]]:
        cfg = self.cfg
        exp = self.experience_base(rollout)
        mask = exp.mask
        model = self.accelerator.unwrap_model(self.model)
        stats: dict[str, float] = {}
        if not self.on_policy:
            exp.old_logps = self.token_logps(model, exp)[0]
        if self.use_kl:
            exp.ref_logps = reference_logps(self.reference, model, exp, self)
            if not self.on_policy:  # on policy: from the update's own forward (update())
                kl = kl_estimate(exp.old_logps, exp.ref_logps, "k3") * mask
                stats["kl"] = float(self.gather(sequence_kl(kl, mask).cpu()).mean())
        adv, zero = self.advantages(scores)
        exp.advantages = adv.to(mask.device, mask.dtype)[:, None] * mask
        groups = self.gather(scores.float()).view(-1, cfg.num_generations)
        stats.update(
            zero_std_groups=float(self.gather(zero.float()).mean()),
            reward_group_std=float(groups.std(dim=1).mean()),
            advantage_abs_mean=float(self.gather(adv.abs()).mean()),
        )
        return exp, stats

    def update(self, exp: Experience) -> dict[str, float]:
        """On policy, the sampling policy's KL to the reference (``kl``, per sequence)
        comes from the update's forward (the same weights, before the optimizer step)
        instead of a separate no-grad forward over the whole batch: one forward less
        per step."""
        stats = super().update(exp)
        if self.use_kl and self.on_policy:
            rows = self.global_sum(float(exp.mask.shape[0]))
            stats["kl"] = stats["kl_token"] * stats["update_tokens"] / max(rows, 1.0)
        return stats

    # -- loss -----------------------------------------------------------------------
    def loss_denominator(self, exp: Experience, idx: torch.Tensor) -> float:
        return self.global_sum(
            loss_denominator(exp.mask[idx], self.cfg.loss_type, self.cfg.max_new_tokens)
        )

    def loss(self, model: torch.nn.Module, mb: Experience) -> LossOutput:
        cfg = self.cfg
        logits, _ = model(mb, cfg.temperature)
        logps, entropy = token_logps_and_entropy(logits, mb.response_ids)
        old = logps.detach() if self.on_policy else mb.old_logps
        per_token, clipped = clipped_surrogate(
            logps, old, mb.advantages, cfg.epsilon_low, cfg.epsilon_high
        )
        mask = mb.mask
        metrics: dict[str, torch.Tensor] = {"policy_loss": (per_token.detach() * mask).sum()}
        if self.use_kl:
            assert mb.ref_logps is not None
            kl = kl_estimate(logps, mb.ref_logps, "k3")
            per_token = per_token + cfg.beta * kl
            metrics["kl_token"] = (kl.detach() * mask).sum()
        with torch.no_grad():
            metrics["clip_fraction"] = (clipped * mask).sum()
            metrics["approx_kl"] = (approx_kl_old_new(logps, old) * mask).sum()
            metrics["entropy"] = (entropy * mask).sum()
        return LossOutput(sequence_loss_sum(per_token, mask, cfg.loss_type), metrics)


def run_grpo(cfg: GRPOConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Optimise ``cfg.model`` on ``cfg.prompts`` with group-relative advantages."""
    cfg.validate()
    s = prepare_stage(
        cfg, "prompt", resume=resume, overwrite=overwrite, data_key="prompts",
        eval_key="eval_prompts",
    )  # fmt: skip
    policy, reference = load_policy(cfg, s.tokenizer, need_reference=cfg.beta > 0)
    return GRPORun(cfg, s, policy, reference).fit(resume=resume)


def run_rloo(cfg: GRPOConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """GRPO's machinery with the leave-one-out baseline (``advantage_estimator=rloo``)."""
    cfg.advantage_estimator = "rloo"
    return run_grpo(cfg, resume=resume, overwrite=overwrite)
