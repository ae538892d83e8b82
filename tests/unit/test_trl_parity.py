"""Loss parity with TRL: the same tiny model, the same tokens and the same reference
log-probs give the same DPO and reward-model losses in rlhfkit and in TRL, to 1e-5.

TRL is not a dependency of rlhfkit. Its losses come from TRL's own code
(``DPOTrainer._compute_loss``, ``RewardTrainer.compute_loss``, its collators and its
fused LM head) run by the python of TRL's venv (``make bench-setup`` builds
``bench/.trl-venv``) in a subprocess; tensors go both ways through a temp file.
Without that venv the tests are skipped, saying so.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.config import DPOConfig
from rlhfkit.data.batching import GroupCollator, PairCollator, batch_logps
from rlhfkit.data.prepare import PairExample, ResponseGroup, tokenize_pairs
from rlhfkit.data.templates import resolve_template
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.reward import load_reward_model
from rlhfkit.training.stages.dpo import DPOObjective
from rlhfkit.training.stages.reward import RewardObjective

TOL = 1e-5

# name -> (loss_type, beta, label_smoothing)
DPO_CASES = {
    "sigmoid": ("sigmoid", 0.1, 0.0),
    "robust": ("robust", 0.1, 0.2),
    "ipo": ("ipo", 0.5, 0.0),
    "hinge": ("hinge", 0.1, 0.0),
    "sigmoid-eps": ("sigmoid", 0.1, 0.2),
}
# name -> (rlhfkit loss, TRL gets the margins, centering coefficient)
RM_CASES = {
    "pairwise": ("pairwise", False, 0.0),
    "margin": ("margin", True, 0.0),
    "pairwise-centered": ("pairwise", False, 0.01),
}

# Run by TRL's python: the losses of TRL's trainers on the batch of argv[1].
# ``self`` is a stand-in holding only what the loss methods read.
TRL_SIDE = r"""
import collections, sys, types
import torch, transformers, trl
from accelerate import Accelerator
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.reward_trainer import DataCollatorForPreference as RewardCollator
from trl.trainer.utils import add_fused_lm_head

data = torch.load(sys.argv[1])
acc = Accelerator(cpu=True)

def trainer(model, **kw):
    metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    return types.SimpleNamespace(accelerator=acc, model=model, _metrics=metrics,
                                 _total_train_tokens=0, _tp_size=1, **kw)

out = {}
policy = transformers.AutoModelForCausalLM.from_pretrained(data["policy"], dtype=torch.float32)
add_fused_lm_head(policy.eval(), outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
batch = DataCollatorForPreference(pad_token_id=data["pad"])(data["pairs"])
batch["ref_chosen_logps"], batch["ref_rejected_logps"] = data["ref"].chunk(2)
for name, (loss_type, beta, eps) in data["dpo_cases"].items():
    self = trainer(policy, aux_loss_enabled=False, precompute_ref_logps=True, ld_alpha=None,
                   f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
                   beta=beta, label_smoothing=eps, use_weighting=False)
    with torch.no_grad():
        out["dpo/" + name] = trl.DPOTrainer._compute_loss(self, policy, dict(batch), False)

rm = transformers.AutoModelForSequenceClassification.from_pretrained(data["rm"], dtype=torch.float32)
rm.eval()
for name, (_, with_margin, coef) in data["rm_cases"].items():
    examples = [dict(e) if with_margin else {k: e[k] for k in ("chosen_ids", "rejected_ids")}
                for e in data["rm_examples"]]
    inputs = RewardCollator(pad_token_id=data["pad"])(examples)
    self = trainer(rm, args=types.SimpleNamespace(center_rewards_coefficient=coef or None))
    with torch.no_grad():
        out["rm/" + name] = trl.RewardTrainer.compute_loss(self, rm, inputs)
torch.save(out, sys.argv[2])
"""


def split_pair(pair: PairExample) -> dict:
    """TRL's tokenized pair: the shared prompt ids, then each completion's ids."""
    start = next(i for i, lab in enumerate(pair.chosen.labels) if lab != -100)
    prompt = pair.chosen.input_ids[:start]
    assert pair.rejected.input_ids[:start] == prompt
    assert all(lab == -100 for lab in pair.rejected.labels[:start])
    assert pair.rejected.labels[start] != -100
    return {
        "prompt_ids": prompt,
        "chosen_ids": pair.chosen.input_ids[start:],
        "rejected_ids": pair.rejected.input_ids[start:],
    }


@pytest.fixture(scope="module")
def parity(trl_side, tmp_path_factory, tiny_llama, task) -> dict:
    """rlhfkit's inputs and TRL's losses on them (one TRL subprocess for every case)."""
    from rlhfkit.demo.preferences import synthetic_preferences

    work = tmp_path_factory.mktemp("trl-parity")
    tok = load_tokenizer(str(tiny_llama))
    records = synthetic_preferences(task, "train", n=12, seed=3)
    pairs, _ = tokenize_pairs(records, tok, resolve_template(tok, "auto"), 64)
    policy = load_causal_lm(str(tiny_llama)).eval()
    with torch.no_grad():
        logps = batch_logps(policy, PairCollator(tok.pad_token_id)(pairs))[0]
    # Reference log-probs near the policy's, so every log-ratio is non-trivial.
    g = torch.Generator().manual_seed(0)
    ref = (logps + torch.randn(logps.shape, generator=g)).float()

    torch.manual_seed(0)
    rm = load_reward_model(str(tiny_llama), pad_token_id=tok.pad_token_id).eval()
    rm.save_pretrained(work / "rm")
    margins = [0.5 * (i % 4) for i in range(len(pairs))]
    groups = [
        ResponseGroup([p.chosen.input_ids, p.rejected.input_ids], [(0, 1, m)])
        for p, m in zip(pairs, margins, strict=True)
    ]
    rm_examples = [
        {"chosen_ids": grp.responses[0], "rejected_ids": grp.responses[1], "margin": m}
        for grp, m in zip(groups, margins, strict=True)
    ]
    exchange = {
        "policy": str(tiny_llama),
        "rm": str(work / "rm"),
        "pad": tok.pad_token_id,
        "pairs": [split_pair(p) for p in pairs],
        "ref": ref,
        "dpo_cases": DPO_CASES,
        "rm_examples": rm_examples,
        "rm_cases": RM_CASES,
    }
    trl = trl_side(TRL_SIDE, exchange, work)
    ref_chosen, ref_rejected = (r.tolist() for r in ref.chunk(2))
    for p, rc, rr in zip(pairs, ref_chosen, ref_rejected, strict=True):
        p.ref = (rc, rr)
    return {
        "trl": trl,
        "pairs": pairs,
        "policy": policy,
        "rm": rm,
        "groups": groups,
        "pad": tok.pad_token_id,
    }


def rlhfkit_dpo(parity: dict, loss: str, beta: float, eps: float, padding_free: bool) -> float:
    cfg = DPOConfig(model="m", data="d", loss=loss, beta=beta, label_smoothing=eps)
    batch = PairCollator(parity["pad"], padding_free=padding_free)(parity["pairs"])
    assert "ref_logps" in batch
    with torch.no_grad():
        out = DPOObjective(cfg, reference=None).loss(parity["policy"], batch)
    return float(out.loss) / len(parity["pairs"])


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("case", ["sigmoid", "robust", "ipo", "hinge"])
def test_dpo_loss_matches_trl(parity, case, padding_free):
    loss_type, beta, eps = DPO_CASES[case]
    ours = rlhfkit_dpo(parity, loss_type, beta, eps, padding_free)
    theirs = float(parity["trl"][f"dpo/{case}"])
    assert math.isfinite(ours) and abs(ours - theirs) < TOL, (ours, theirs)


def test_dpo_sigmoid_label_smoothing_differs_from_trl_on_purpose(parity):
    """TRL 1.16's ``sigmoid`` loss ignores ``label_smoothing`` (it dropped conservative
    DPO); rlhfkit keeps cDPO (Mitchell 2023) under ``sigmoid`` with ``eps > 0``, as its
    docs say. So with eps = 0.2 TRL gives plain DPO and rlhfkit the cDPO loss, which
    is the eps-mix of the plain loss and the loss with the labels swapped."""
    _, beta, eps = DPO_CASES["sigmoid-eps"]
    plain = float(parity["trl"]["dpo/sigmoid"])
    assert abs(float(parity["trl"]["dpo/sigmoid-eps"]) - plain) < TOL
    ours = rlhfkit_dpo(parity, "sigmoid", beta, eps, padding_free=False)
    assert abs(ours - plain) > 1e-3
    pairs = parity["pairs"]
    swapped = [PairExample(p.rejected, p.chosen, (p.ref[1], p.ref[0])) for p in pairs]  # type: ignore[index]
    flipped = rlhfkit_dpo({**parity, "pairs": swapped}, "sigmoid", beta, 0.0, padding_free=False)
    assert abs(ours - ((1 - eps) * plain + eps * flipped)) < TOL


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("case", list(RM_CASES))
def test_reward_loss_matches_trl(parity, case, padding_free):
    """For preference pairs (K = 2) rlhfkit's per-prompt mean is one pair, so its mean
    over prompts is TRL's mean over pairs; TRL has no rankings (K > 2) to compare.
    Packed (padding-free) batches give TRL's padded loss too."""
    loss, _, coef = RM_CASES[case]
    batch = GroupCollator(parity["pad"], padding_free=padding_free)(parity["groups"])
    with torch.no_grad():
        out = RewardObjective(loss, center_coef=coef).loss(parity["rm"], batch)
    ours = float(out.loss) / len(parity["groups"])
    theirs = float(parity["trl"][f"rm/{case}"])
    assert math.isfinite(ours) and abs(ours - theirs) < TOL, (ours, theirs)


def test_margin_changes_the_reward_loss(parity):
    """The margin cases compare something: with margins > 0 the loss is larger."""
    assert float(parity["trl"]["rm/margin"]) > float(parity["trl"]["rm/pairwise"]) + 1e-3
