"""Reward-model plumbing: last-token indexing, response groups, the collator, one forward."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.batching import GroupCollator, keeps_packed_apart
from rlhfkit.data.prepare import ResponseGroup, tokenize_groups
from rlhfkit.data.templates import TokenizedExample, resolve_template
from rlhfkit.data.types import Message, PreferenceRecord, RankingRecord
from rlhfkit.models.reward import (
    batch_rewards,
    last_token_index,
    load_reward_model,
    segment_last_index,
    sequence_rewards,
)
from rlhfkit.models.tiny import TinySpec, build_tiny
from rlhfkit.rollout.generation import left_pad
from rlhfkit.training.stages.reward import RewardObjective

CORPUS = ["What is 2 + 3?", "5", "6", "I can't help with that.", "The answer is 5."] * 3


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def rm_and_tok(request, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_tiny(
        tmp_path_factory.mktemp(request.param),
        TinySpec(arch=request.param, vocab_size=300, hidden=32, layers=1),
        CORPUS,
    )
    tok = AutoTokenizer.from_pretrained(path)
    model = load_reward_model(str(path), pad_token_id=tok.pad_token_id).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    # Saved and reloaded as a sequence classifier with one label.
    out = tmp_path_factory.mktemp("rm") / "rm"
    model.save_pretrained(out)
    again = AutoModelForSequenceClassification.from_pretrained(out)
    assert again.config.num_labels == 1 and again.config.pad_token_id == tok.pad_token_id
    return model, tok


def test_reward_independent_of_padding_side(rm_and_tok):
    model, tok = rm_and_tok
    rows = [tok("What is 2 + 3? 5")["input_ids"], tok("6")["input_ids"]]
    alone = torch.stack(
        [
            sequence_rewards(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0]
            for r in rows
        ]
    )
    ids, mask = left_pad(rows, tok.pad_token_id)
    lefty = sequence_rewards(model, ids, mask)
    width = max(map(len, rows))
    rids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    rmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    righty = sequence_rewards(model, rids, rmask)
    assert torch.allclose(alone, lefty, atol=1e-5) and torch.allclose(alone, righty, atol=1e-5)
    # The same as transformers' own pooling (pad token distinct from eos here).
    with torch.no_grad():
        hf = model(input_ids=rids, attention_mask=rmask).logits.squeeze(-1)
    assert torch.allclose(hf, righty, atol=1e-5)


def test_ranking_is_one_group_with_all_pairs(rm_and_tok):
    _, tok = rm_and_tok
    p = (Message("user", "What is 2 + 3?"),)
    ranking = RankingRecord(
        p, ("5", "6", "The answer is 5.", "I can't help with that."), (1, 3, 2, 4)
    )
    pref = PreferenceRecord(p, "5", "6", margin_label="better")
    groups, _ = tokenize_groups([ranking, pref], tok, resolve_template(tok), 64, lambda r: 0.5)
    assert [len(g.responses) for g in groups] == [4, 2]
    assert len(groups[0].pairs) == 6 and groups[1].pairs == [(0, 1, 0.5)]
    batch = GroupCollator(tok.pad_token_id)(groups)
    assert batch["input_ids"].shape[0] == 6 and batch["n_groups"] == 2
    assert batch["group"].tolist() == [0] * 6 + [1]
    # Pair (better, worse) row indices: ranking pairs in rows 0..3, the preference in rows 4, 5.
    assert (batch["better"][-1].item(), batch["worse"][-1].item()) == (4, 5)
    assert sorted(
        zip(batch["better"][:6].tolist(), batch["worse"][:6].tolist(), strict=True)
    ) == sorted([(0, 1), (0, 2), (0, 3), (2, 1), (1, 3), (2, 3)])


def test_objective_averages_pairs_per_group(rm_and_tok):
    model, tok = rm_and_tok
    p = (Message("user", "What is 2 + 3?"),)
    ranking = RankingRecord(
        p, ("5", "6", "The answer is 5.", "I can't help with that."), (1, 3, 2, 4)
    )
    pref = PreferenceRecord(p, "5", "6")
    groups, _ = tokenize_groups([ranking, pref], tok, resolve_template(tok), 64, lambda r: 0.0)
    batch = GroupCollator(tok.pad_token_id)(groups)
    obj = RewardObjective("pairwise")
    assert obj.count(batch) == 2
    with torch.no_grad():
        out = obj.loss(model, batch)
        r = sequence_rewards(model, batch["input_ids"], batch["attention_mask"])
    pair_losses = -torch.nn.functional.logsigmoid(r[batch["better"]] - r[batch["worse"]])
    expected = pair_losses[:6].mean() + pair_losses[6]  # sum over groups of the per-group mean
    assert float(out.loss) == pytest.approx(float(expected), rel=1e-5)
    correct, n = out.metrics["accuracy"]
    assert n == 7 and float(correct) == float((r[batch["better"]] > r[batch["worse"]]).sum())


def test_padding_free_batch_gives_the_padded_rewards_and_loss(rm_and_tok):
    """Packed responses (position ids restarting per response, no mask) are scored at
    the last token of each segment: the same rewards, loss and metrics as padded."""
    model, tok = rm_and_tok
    texts = ["5", "6", "The answer is 5.", "What is 2 + 3? I can't help with that.", "5 6"]
    ids = [tok(t)["input_ids"] for t in texts]
    groups = [
        ResponseGroup([ids[3], ids[0], ids[1]], [(0, 1, 0.0), (0, 2, 0.0), (1, 2, 0.0)]),
        ResponseGroup([ids[2], ids[4]], [(1, 0, 0.0)]),
    ]
    padded = GroupCollator(tok.pad_token_id)(groups)
    packed = GroupCollator(tok.pad_token_id, padding_free=True)(groups)
    assert "attention_mask" not in packed and packed["n_segments"] == 5
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    obj = RewardObjective("pairwise")
    with torch.no_grad():
        want = obj.loss(model, padded)
        got = obj.loss(model, packed)
        r_pad = batch_rewards(model, padded)
        r_packed = batch_rewards(model, packed)
    assert torch.allclose(r_pad, r_packed, atol=1e-5)
    assert float(got.loss) == pytest.approx(float(want.loss), rel=1e-5, abs=1e-6)
    for k in want.metrics:
        assert float(got.metrics[k][0]) == pytest.approx(float(want.metrics[k][0]), abs=1e-5)
    rows = [TokenizedExample(i, [-100] * len(i)) for i in ids]
    assert keeps_packed_apart(model, rows, tok.pad_token_id, score=batch_rewards)


def test_segment_last_index():
    segments = torch.tensor([[0, 0, 0, 2, 2], [1, 1, 3, -1, -1]])
    assert segment_last_index(segments, 4).tolist() == [2, 6, 4, 7]
