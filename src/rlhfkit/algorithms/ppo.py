"""PPO for language models (Ziegler et al. 2019; InstructGPT, Ouyang et al. 2022) as pure
tensor functions: KL estimators, reward shaping, GAE, whitening, the clipped policy and
value losses, and the KL coefficient controllers.

Shapes: per-token tensors are ``(B, T)`` over the *response* tokens of a rollout batch,
with ``mask`` 1 on real response tokens (EOS included) and 0 on padding. Token ``t``'s
log-prob is ``log pi(a_t | s_t)``; ``values[:, t]`` is ``V(s_t)``, the value of the
state before token ``t`` is chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (0 when there are none)."""
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over the masked positions; padding stays 0.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as
    reward whitening does when the sign of the reward should survive."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from a sample of ``pi`` (Schulman 2020,
    "Approximating KL divergence"), with ``log r = log pi_ref(a) - log pi(a)``:

    * ``k1 = -log r`` - unbiased, high variance, can be negative;
    * ``k2 = (log r)^2 / 2`` - biased, low variance, >= 0;
    * ``k3 = (r - 1) - log r`` - unbiased, low variance, >= 0.
    """
    log_ratio = ref_logps - logps
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")


def shaped_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards ``r_t = -beta * kl_t``, plus the sequence score on the last
    response token (Ziegler et al. 2019, eq. 2; InstructGPT)."""
    rewards = -kl_coef * kl * mask
    last = last_index(mask)
    return rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of ``mask`` (0 for an all-zero row)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(dim=1)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over masked token rows.

    ``delta_t = r_t + gamma * V(s_next) - V(s_t)``, ``A_t = delta_t + gamma * lam * A_next``,
    where "next" is the next *unmasked* token of the row (masked positions are skipped,
    so holes in the mask - tool output, say - are stepped over) and the state after the
    last real token is terminal (value 0). Returns ``(advantages, returns)`` with
    ``returns = advantages + values``; both are 0 on masked positions.
    """
    mask = mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = adv_t * m
        next_adv = torch.where(m > 0, adv_t, next_adv)
        next_value = torch.where(m > 0, values[:, t], next_value)
    returns = (advantages + values) * mask
    return advantages, returns


def clipped_surrogate(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO / GRPO clipped objective, negated for minimisation:
    ``l_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)`` with
    ``rho_t = exp(log pi - log pi_old)``. ``eps_high`` defaults to ``eps_low``; a larger
    one is DAPO's "clip-higher". ``advantages`` broadcast against ``logps`` (``(B, 1)``
    for sequence advantages). Returns the per-token loss and a float mask of the tokens
    whose clipped term was the active one."""
    high = eps_low if eps_high is None else eps_high
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - eps_low, 1.0 + high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


@dataclass(frozen=True)
class PolicyLoss:
    loss: torch.Tensor  # masked token mean, differentiable
    clip_fraction: torch.Tensor  # share of tokens whose ratio was clipped (in the max)
    approx_kl: torch.Tensor  # k3 estimate of KL(pi_old || pi) from the old samples, detached


def clipped_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation:

    ``L = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - eps_low, 1 + eps_high))`` with
    ``rho_t = exp(log pi - log pi_old)``; ``eps_high`` defaults to ``eps_low`` (DAPO's
    asymmetric "clip-higher" when set). The mean is over all masked tokens of the batch.
    """
    per_token, was_clipped = clipped_surrogate(logps, old_logps, advantages, clip, clip_high)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        clip_fraction = masked_mean(was_clipped, mask)
        approx_kl = masked_mean(approx_kl_old_new(logps, old_logps), mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


def approx_kl_old_new(logps: torch.Tensor, old_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of ``KL(pi_old || pi)`` from samples of ``pi_old``:
    ``(rho - 1) - log rho`` with ``rho = pi / pi_old`` (detached use: diagnostics and
    the early stop on ``target_approx_kl``)."""
    log_ratio = logps - old_logps
    return torch.expm1(log_ratio) - log_ratio


@dataclass(frozen=True)
class ValueLoss:
    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None = 0.2,
) -> ValueLoss:
    """``0.5 * mean_t max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``
    (the clipped value loss of the PPO baselines, used by InstructGPT-style RLHF);
    ``clip=None`` gives the plain squared error ``0.5 * mean_t (V - R)^2``."""
    err = (values - returns) ** 2
    if clip is None:
        return ValueLoss(0.5 * masked_mean(err, mask), values.new_zeros(()))
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((err_clipped > err).float(), mask)
    return ValueLoss(loss, frac)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over masked tokens (1 is perfect, <= 0 is useless)."""
    var_r = float(masked_var(returns, mask))
    if var_r < 1e-12:
        return float("nan")
    return 1.0 - float(masked_var(returns - values, mask)) / var_r


class FixedKLController:
    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, sec. 2.2: ``e = clip(KL / target - 1, -0.2, 0.2)``,
    ``beta <- beta * (1 + e * n / horizon)`` after each batch of ``n`` samples, where
    ``KL`` is the batch's mean sequence KL to the reference."""

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


class RunningMoments:
    """Running mean / std of all values seen (Chan et al.'s parallel update), for
    normalising reward-model scores across PPO steps."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        n = float(x.numel())
        if n == 0:
            return
        b_mean = float(x.mean())
        b_var = float(x.var(unbiased=False)) if n > 1 else 0.0
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.var > 1e-12 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
