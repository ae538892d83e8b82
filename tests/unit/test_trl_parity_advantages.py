"""GRPO and RLOO advantage parity with TRL: the same rewards of the same groups give
the same advantages in rlhfkit and TRL, to 1e-5, for ``scale_rewards`` group, batch and
none, and for RLOO's leave-one-out baseline.

TRL computes its advantages inside ``_generate_and_score_completions``, between
generation and the loss, so TRL's side here is that method itself, on a real
``GRPOTrainer`` / ``RLOOTrainer`` (TRL 1.16, run by the python of TRL's venv, which
``make bench-setup`` builds) over the tiny test model: it generates a few tokens, then
its reward function returns the rewards the test chose, and everything from the rewards
to the advantages is TRL's code. rlhfkit's side is
:func:`rlhfkit.algorithms.grpo.group_advantages` / ``rloo_advantages``, what
``run_grpo`` calls. Without TRL's venv the tests are skipped, saying so.
"""

from __future__ import annotations

import pytest
import torch

from rlhfkit.algorithms.grpo import group_advantages, rloo_advantages

TOL = 1e-5
P, G = 3, 4  # prompts, samples per prompt

# Run by TRL's python: one GRPOTrainer and one RLOOTrainer over the tiny model, and for
# each case the advantages ``_generate_and_score_completions`` returns for the case's
# rewards (handed out by the reward function in the order the cases run).
TRL_SIDE = r"""
import sys
import torch, trl
from datasets import Dataset
from transformers import AutoTokenizer

data_path, out_path, model, work = sys.argv[1:5]
data = torch.load(data_path)
p, g = data["P"], data["G"]
queue = []

def chosen_rewards(completions, **kw):
    rewards = queue.pop(0)
    assert len(rewards) == len(completions), (len(rewards), len(completions))
    return rewards.tolist()

prompts = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(p)]
rows = [{"prompt": q} for q in prompts for _ in range(g)]  # each prompt G times, as TRL samples
common = dict(
    output_dir=work, per_device_train_batch_size=p * g, num_generations=g,
    max_completion_length=3, beta=0.0, bf16=False, fp16=False, gradient_checkpointing=False,
    use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0,
)
tok = AutoTokenizer.from_pretrained(model)
trainers = {
    "grpo": trl.GRPOTrainer(model=model, reward_funcs=chosen_rewards, args=trl.GRPOConfig(**common),
                            train_dataset=Dataset.from_list(rows), processing_class=tok),
    "rloo": trl.RLOOTrainer(model=model, reward_funcs=chosen_rewards,
                            args=trl.RLOOConfig(**common, normalize_advantages=False),
                            train_dataset=Dataset.from_list(rows), processing_class=tok),
}
out = {}
for name, case in data["cases"].items():
    trainer = trainers[case["trainer"]]
    if case["trainer"] == "grpo":
        trainer.scale_rewards = case["scale"]
    queue.append(case["rewards"])
    out[name] = trainer._generate_and_score_completions([dict(r) for r in rows])["advantages"]
    assert not queue
torch.save(out, out_path)
"""


def _cases() -> dict[str, dict]:
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(P * G, generator=gen)
    binary = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1])  # the last group all equal
    flat = torch.cat([torch.full((G,), 0.3), torch.randn(G * (P - 1), generator=gen)])
    return {
        "group": {"trainer": "grpo", "scale": "group", "rewards": spread},
        "batch": {"trainer": "grpo", "scale": "batch", "rewards": spread},
        "none": {"trainer": "grpo", "scale": "none", "rewards": spread},
        "group-binary": {"trainer": "grpo", "scale": "group", "rewards": binary},
        "batch-binary": {"trainer": "grpo", "scale": "batch", "rewards": binary},
        "group-flat-fraction": {"trainer": "grpo", "scale": "group", "rewards": flat},
        "rloo": {"trainer": "rloo", "rewards": spread},
        "rloo-binary": {"trainer": "rloo", "rewards": binary},
    }


CASES = _cases()


@pytest.fixture(scope="module")
def trl_advantages(trl_side, tiny_llama, tmp_path_factory) -> dict[str, torch.Tensor]:
    work = tmp_path_factory.mktemp("trl-advantage-parity")
    data = {"P": P, "G": G, "cases": CASES}
    return trl_side(TRL_SIDE, data, work, str(tiny_llama), str(work / "trl"))


def rlhfkit_advantages(case: dict) -> torch.Tensor:
    if case["trainer"] == "rloo":
        return rloo_advantages(case["rewards"], G)[0]
    return group_advantages(case["rewards"], G, case["scale"])[0]


@pytest.mark.parametrize("name", list(CASES))
def test_advantages_match_trl(trl_advantages, name):
    ours = rlhfkit_advantages(CASES[name])
    theirs = trl_advantages[name].float()
    assert theirs.shape == ours.shape
    torch.testing.assert_close(ours, theirs, atol=TOL, rtol=0)


def test_cases_exercise_each_scaling(trl_advantages):
    """The cases tell the scalings apart (a broken ``scale`` would fail one of them)
    and include groups whose rewards are all equal (advantages exactly 0 in TRL too,
    so rlhfkit zeroing such groups is no difference)."""
    group, batch, none = (trl_advantages[k] for k in ("group", "batch", "none"))
    assert (group - batch).abs().max() > 0.05 and (group - none).abs().max() > 0.05
    assert (batch - none).abs().max() > 0.05
    assert torch.equal(trl_advantages["group-binary"][-G:], torch.zeros(G))
    assert torch.equal(trl_advantages["group-flat-fraction"][:G], torch.zeros(G))
    assert (trl_advantages["rloo"] - none).abs().max() > 0.05  # leave-one-out, not the mean
