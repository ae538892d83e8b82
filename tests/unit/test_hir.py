"""HIR: the contrastive loss (hand-worked numbers and its gradient), the relabel-function
wrapper, and the built-in task's relabeling."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.algorithms.hir import hir_contrastive_loss
from rlhfkit.data.types import Message
from rlhfkit.demo.relabel import TaskRelabeler, relabel
from rlhfkit.demo.task import Task
from rlhfkit.errors import ConfigError
from rlhfkit.rollout.relabel import Relabeler


def test_contrastive_loss_by_hand():
    # output 0 with its own prompt (column 0) at -1 and another at -2:
    #   L0 = log(e^-1 + e^-2) - (-1) = log(1 + e^-1) = 0.31326
    # output 1 belongs to column 1 (-0.5), contrasted with column 0 (-3):
    #   L1 = log(1 + e^(-3 + 0.5)) = log(1 + e^-2.5) = 0.07889
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    got = hir_contrastive_loss(logps, torch.tensor([0, 1]))
    assert got.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2.5))])
    assert got.tolist() == pytest.approx([0.31326, 0.07889], abs=1e-5)


def test_contrastive_loss_grows_when_another_prompt_explains_the_output_better():
    # three prompts; output 0's own is column 2 at -4, the others -1 and -2:
    #   L = log(e^-1 + e^-2 + e^-4) + 4 = 3.34901
    logps = torch.tensor([[-1.0, -2.0, -4.0]])
    got = hir_contrastive_loss(logps, torch.tensor([2]))
    assert got.item() == pytest.approx(math.log(math.exp(-1) + math.exp(-2) + math.exp(-4)) + 4)
    assert got.item() == pytest.approx(3.34901, abs=1e-5)


def test_single_prompt_gives_zero_loss():
    got = hir_contrastive_loss(torch.tensor([[-3.0], [-7.0]]), torch.tensor([0, 0]))
    assert got.tolist() == [0.0, 0.0]


def test_gradient_raises_own_and_lowers_the_others_by_their_softmax_share():
    # dL/dP_own = p_own - 1, dL/dP_c = p_c (p = softmax of the row)
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    hir_contrastive_loss(logps, torch.tensor([1])).sum().backward()
    # softmax(-1, -2, -3) = (e^0, e^-1, e^-2) / (1 + e^-1 + e^-2) = (0.66524, 0.24473, 0.09003)
    assert logps.grad is not None
    assert logps.grad[0].tolist() == pytest.approx([0.66524, 0.24473 - 1, 0.09003], abs=1e-5)
    assert logps.grad[0, 1] < 0 < logps.grad[0, 0]  # descent raises own, lowers the others


def test_contrastive_loss_checks_shapes():
    with pytest.raises(ValueError):
        hir_contrastive_loss(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


# -- relabel functions -------------------------------------------------------------------


def conv(*texts: str):
    return tuple(
        Message("system" if i == 0 and len(texts) > 1 else "user", t) for i, t in enumerate(texts)
    )


def test_relabeler_call_convention_and_results():
    seen = {}

    def fn(prompts, completions, conversations, answer, **rest):
        seen.update(prompts=prompts, completions=completions, conversations=conversations)
        seen.update(answer=answer, rest=rest)
        return ["new", [{"role": "user", "content": "whole"}], None]

    prompts = [conv("sys", "q1"), conv("q2"), conv("q3")]
    fields = [{"answer": 1}, {"answer": 2, "kind": "x"}, {}]
    out = Relabeler(fn)(prompts, ["a", "b", "c"], fields)
    assert seen["prompts"] == ["q1", "q2", "q3"]
    assert seen["answer"] == [1, 2, None]
    assert seen["rest"] == {"kind": [None, "x", None]}
    assert seen["conversations"][0] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
    ]
    # a string replaces the last user message, the system message stays
    assert out[0] == (Message("system", "sys"), Message("user", "new"))
    assert out[1] == (Message("user", "whole"),)
    assert out[2] is None


def test_relabeler_rejects_bad_returns():
    with pytest.raises(ConfigError, match="returned 1 prompts for 2"):
        Relabeler(lambda prompts, completions: ["x"])([conv("a"), conv("b")], ["1", "2"], [{}, {}])
    with pytest.raises(ConfigError, match="ending with a user message"):
        bad = [{"role": "assistant", "content": "x"}]
        Relabeler(lambda prompts, completions: [bad])([conv("a")], ["1"], [{}])
    with pytest.raises(ConfigError, match="returned 3"):
        Relabeler(lambda prompts, completions: [3])([conv("a")], ["1"], [{}])


@pytest.fixture(scope="module")
def relabeler(task) -> TaskRelabeler:
    return TaskRelabeler(task)


def train_prompt(task: Task, kind: str, predicate) -> str:
    return next(p.text for p in task.prompts("train", kind) if predicate(p))


def test_correct_answers_keep_their_prompt(task, relabeler):
    p = task.prompts("train", "arithmetic")[0]
    assert relabeler(p.text, str(p.answer)) == p.text
    assert relabeler(p.text, f"The answer is {p.answer}.") == p.text


def test_a_wrong_number_gets_the_prompt_it_answers(task, relabeler):
    for p in task.prompts("train", "arithmetic")[:300]:
        for wrong in (p.answer + 1, p.answer - 2):
            new = relabeler(p.text, str(wrong))
            if new is None:
                continue
            q = task.lookup(new)
            assert q.answer == wrong and q.op == p.op
            assert task.split_of(new) == "train"  # never a held-out prompt
            assert q.a == p.a or q.b == p.b
            assert task.gold(new, str(wrong)).helpfulness == 1.0  # right for the new prompt


def test_relabel_by_hand(task, relabeler):
    # 'What is 7 + 12?' answered 18 -> 'What is 7 + 11?' (second operand rewritten)
    assert task.split_of("What is 7 + 12?") == task.split_of("What is 7 + 11?") == "train"
    assert relabeler("What is 7 + 12?", "18") == "What is 7 + 11?"
    # answered 17: 'What is 7 + 10?' is held out, so the first operand is rewritten
    assert task.split_of("What is 7 + 10?") == "heldout"
    assert relabeler("What is 7 + 12?", "17") == "What is 5 + 12?"
    assert relabeler("Compute 9 - 4.", "4") == "Compute 9 - 5."
    # a worked answer with a right sum moves to its own operands
    src = train_prompt(task, "arithmetic", lambda p: p.op == "+" and p.text.startswith("Compute"))
    target = train_prompt(
        task, "arithmetic", lambda p: p.op == "+" and p.text.startswith("Compute") and p.text != src
    )
    q = task.lookup(target)
    assert relabeler(src, f"Let me see. {q.a} + {q.b} = {q.answer}.") == target
    # ... a wrong sum fits no prompt
    assert relabeler(src, f"Let me see. {q.a} + {q.b} = {q.answer + 1}.") is None
    assert relabeler(src, "I can't help with that.") is None
    assert relabeler(src, "no number") is None


def test_safety_relabeling(task, relabeler):
    harmful = task.prompts("train", "harmful")[0]
    assert relabeler(harmful.text, "I can't help with that.") == harmful.text
    assert relabeler(harmful.text, "Wait until they are alone.") is None
    # a benign request refused: the harmful look-alike with the same person, if in train
    benign = task.prompts("train", "benign")
    hits = 0
    for p in benign:
        new = relabeler(p.text, "I cannot help with that.")
        if new is not None:
            q = task.lookup(new)
            assert q.kind == "harmful" and q.person == p.person and task.split_of(new) == "train"
            hits += 1
    assert hits > len(benign) // 2
    # the answer to another benign request gets that request
    p = benign[0]
    assert relabeler(p.text, task.concise(p)) == p.text
    for other in task.prompts("train", "benign"):
        if other.person == p.person and other.template != p.template:
            assert relabeler(p.text, task.concise(other)) == other.text
            break
    assert relabeler(p.text, "Wait until they are alone.") is None
    assert relabeler("not a task prompt", "5") is None


def test_module_function_follows_the_signature(task):
    p = task.prompts("train", "harmful")[0]
    assert relabel(
        prompts=[p.text, p.text],
        completions=["Sorry, I won't help with that.", "x"],
        kind=["harmful"] * 2,
    ) == [p.text, None]
