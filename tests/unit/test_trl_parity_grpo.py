"""GRPO loss parity with TRL: the same per-token log-probs, old and reference log-probs,
advantages and mask give the same GRPO loss in rlhfkit and TRL, to 1e-5, for the
``grpo``, ``dapo`` and ``dr_grpo`` aggregations, with and without the k3 KL term, on
and off policy.

TRL's side is ``GRPOTrainer._compute_loss`` itself (TRL 1.16), run by the python of
TRL's venv (``make bench-setup`` builds ``bench/.trl-venv``) on a stand-in ``self``
whose ``_get_per_token_logps_and_entropies`` returns the precomputed log-probs, so
everything after the model forward (ratio, clipping, k3, aggregation) is TRL's code.
rlhfkit's side is ``GRPORun.loss`` itself, on a stand-in model whose logits give those
log-probs, divided by :func:`rlhfkit.algorithms.grpo.loss_denominator` as
``OnlineRun.update`` does. Without TRL's venv the tests are skipped, saying so.

PPO: TRL 1.16 has no PPO trainer (neither ``trl`` nor ``trl.experimental``), so there
is no TRL PPO loss to compare with. RLOO: TRL's ``RLOOTrainer`` loss differs from
rlhfkit's on purpose (see :func:`test_rloo_differs_from_trl_on_purpose`).
"""

from __future__ import annotations

import math
import types

import pytest
import torch

from rlhfkit.algorithms.grpo import group_advantages, loss_denominator, rloo_advantages
from rlhfkit.algorithms.logprobs import token_logps
from rlhfkit.config import GRPOConfig
from rlhfkit.training.online import Experience
from rlhfkit.training.stages.grpo import GRPORun

TOL = 1e-5
B, T, V, G = 8, 7, 11, 4  # rows, response width (= max_new_tokens), vocab, group size

# name -> (loss_type, beta, epsilon_low, epsilon_high, on_policy)
CASES = {
    "grpo": ("grpo", 0.0, 0.2, 0.2, False),
    "grpo-kl": ("grpo", 0.04, 0.2, 0.2, False),
    "grpo-kl-on-policy": ("grpo", 0.04, 0.2, 0.2, True),
    "dapo": ("dapo", 0.0, 0.2, 0.28, False),
    "dapo-kl": ("dapo", 0.1, 0.2, 0.28, False),
    "dr_grpo": ("dr_grpo", 0.0, 0.2, 0.2, False),
    "dr_grpo-kl": ("dr_grpo", 0.04, 0.1, 0.3, False),
}

# Run by TRL's python: GRPOTrainer._compute_loss for every case, and RLOOTrainer's loss
# and its gradient with respect to the per-token log-probs.
TRL_SIDE = r"""
import collections, sys, types
import torch, trl
from accelerate import Accelerator

data = torch.load(sys.argv[1])
acc = Accelerator(cpu=True)
lp, mask = data["logps"], data["mask"]
b, t = lp.shape
base = {"prompt_ids": torch.ones(b, 1, dtype=torch.long), "prompt_mask": torch.ones(b, 1, dtype=torch.long),
        "completion_ids": data["response_ids"], "completion_mask": mask.long()}

def stand_in(logps, **kw):
    metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    return types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        accelerator=acc, model=types.SimpleNamespace(training=True), _metrics=metrics,
        aux_loss_enabled=False, current_gradient_accumulation_steps=1, **kw)

out = {}
for name, (loss_type, beta, eps_low, eps_high, on_policy) in data["cases"].items():
    self = stand_in(
        lp, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        vllm_importance_sampling_correction=False, max_completion_length=t,
        _entropy_bonus_enabled=False,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))
    inputs = dict(base, advantages=data["advantages"], num_items_in_batch=mask.sum())
    if beta:
        inputs["ref_per_token_logps"] = data["ref_logps"]
    if not on_policy:
        inputs["old_per_token_logps"] = data["old_logps"]
    with torch.no_grad():
        out["grpo/" + name] = trl.GRPOTrainer._compute_loss(self, None, inputs)

leaf = lp.clone().requires_grad_(True)
self = stand_in(leaf, epsilon_low=0.2, epsilon_high=0.2)
inputs = dict(base, advantages=data["rloo_advantages"], old_logps=(lp * mask).sum(1))
loss = trl.RLOOTrainer._compute_loss(self, None, inputs)
loss.backward()
out["rloo/loss"], out["rloo/grad"] = loss.detach(), leaf.grad
torch.save(out, sys.argv[2])
"""


def _inputs() -> dict:
    """Per-token inputs with varied response lengths, ratios inside and outside the
    clip range, and reference log-probs away from the policy's."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g) * 2
    response_ids = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 7, 6, 2, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    logps = token_logps(logits, response_ids) * mask
    old = (logps + 0.3 * torch.randn(B, T, generator=g)) * mask
    ref = (logps + 0.5 * torch.randn(B, T, generator=g)) * mask
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 2.0, 0.0])
    adv, _ = group_advantages(rewards, G, "group")
    rloo, _ = rloo_advantages(rewards, G)
    return {
        "logits": logits,
        "response_ids": response_ids,
        "mask": mask,
        "logps": logps,
        "old_logps": old,
        "ref_logps": ref,
        "advantages": adv,
        "rloo_advantages": rloo,
    }


@pytest.fixture(scope="module")
def parity(trl_side, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("trl-grpo-parity")
    data = _inputs()
    exchange = {k: v for k, v in data.items() if k != "logits"}
    return {**data, "trl": trl_side(TRL_SIDE, {**exchange, "cases": CASES}, work)}


def rlhfkit_loss(data: dict, loss_type: str, beta: float, lo: float, hi: float, on: bool):
    """``GRPORun.loss`` on a stand-in run and model, over the update's denominator."""
    cfg = GRPOConfig(
        model="m", prompts="p", reward_fn=["f"], loss_type=loss_type, beta=beta,
        epsilon_low=lo, epsilon_high=hi, max_new_tokens=T, num_generations=G,
    )  # fmt: skip
    run = types.SimpleNamespace(cfg=cfg, on_policy=on, use_kl=beta > 0)
    mask = data["mask"]
    mb = Experience(
        input_ids=torch.zeros(B, T + 1, dtype=torch.long),
        attention_mask=torch.ones(B, T + 1, dtype=torch.long),
        position_ids=torch.zeros(B, T + 1, dtype=torch.long),
        response_ids=data["response_ids"],
        mask=mask,
        old_logps=data["old_logps"],
        advantages=data["advantages"][:, None] * mask,
        ref_logps=data["ref_logps"],
    )
    logits = data["logits"].clone().requires_grad_(True)
    out = GRPORun.loss(run, lambda exp, temperature: (logits, None), mb)  # type: ignore[arg-type]
    return out.loss / loss_denominator(mask, loss_type, T), out


@pytest.mark.parametrize("case", list(CASES))
def test_grpo_loss_matches_trl(parity, case):
    ours, _ = rlhfkit_loss(parity, *CASES[case])
    theirs = float(parity["trl"][f"grpo/{case}"])
    ours_f = float(ours.detach())
    assert math.isfinite(ours_f) and abs(ours_f - theirs) < TOL, (ours_f, theirs)


def test_cases_exercise_clipping_and_kl(parity):
    """The inputs are not degenerate: some ratios are clipped, and the KL term and the
    aggregation both change the loss."""
    _, out = rlhfkit_loss(parity, *CASES["grpo"])
    assert 0 < float(out.metrics["clip_fraction"]) < float(parity["mask"].sum())
    trl = {k: float(v) for k, v in parity["trl"].items() if k.startswith("grpo/")}
    assert abs(trl["grpo/grpo-kl"] - trl["grpo/grpo"]) > 1e-3
    assert len({round(trl[f"grpo/{k}"], 4) for k in ("grpo", "dapo", "dr_grpo")}) == 3


def test_rloo_differs_from_trl_on_purpose(parity):
    """TRL 1.16's RLOOTrainer clips the ratio of *sequence* probabilities and takes the
    mean over sequences (its KL goes into the reward, not the loss); rlhfkit's RLOO is
    GRPO's per-token clipped loss with the leave-one-out advantages, so that clipping
    acts per token and ``loss_type`` sets the length weighting, as for GRPO. On policy
    (ratio 1, nothing clipped) the two gradients are proportional with ``dr_grpo``:
    TRL's is ``-(1/B) sum_i A_i sum_t grad log p_it``, rlhfkit's the same divided by
    ``max_new_tokens``; the losses themselves differ."""
    mask, adv = parity["mask"], parity["rloo_advantages"]
    lp = parity["logps"].clone().requires_grad_(True)
    from rlhfkit.algorithms.grpo import aggregate_loss
    from rlhfkit.algorithms.ppo import clipped_surrogate

    per_token, _ = clipped_surrogate(lp, lp.detach(), (adv[:, None] * mask), 0.2, 0.2)
    ours = aggregate_loss(per_token, mask, "dr_grpo", T)
    ours.backward()
    theirs_grad = parity["trl"]["rloo/grad"] * mask
    assert torch.allclose(lp.grad * T, theirs_grad, atol=1e-6)
    # TRL's on-policy loss is -mean(A) (0 for leave-one-out advantages summed over a
    # group); rlhfkit's weighs each sequence by its length.
    assert abs(float(parity["trl"]["rloo/loss"]) + float(adv.mean())) < TOL
    assert abs(float(ours.detach()) - float(parity["trl"]["rloo/loss"])) > 1e-3
