"""Pieces of the training loop: sampler, optimizer, schedules, metrics, checkpoints, saves."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.config import TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import replace_dir, save_pretrained_atomic
from rlhfkit.training.checkpoint import (
    STATE_FILE,
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from rlhfkit.training.loop import EpochSampler, build_optimizer, build_scheduler
from rlhfkit.training.tracking import MetricsWriter, read_metrics


def cfg(**kw) -> TrainConfig:
    return TrainConfig(out="unused", **kw)


# ---------------------------------------------------------------- EpochSampler


def test_sampler_is_a_permutation() -> None:
    s = EpochSampler(50, seed=3)
    order = list(s)
    assert sorted(order) == list(range(50))
    assert len(s) == 50


def test_sampler_depends_only_on_seed_and_epoch() -> None:
    a = EpochSampler(40, seed=7)
    b = EpochSampler(40, seed=7)
    a.set_epoch(2)
    b.set_epoch(0)
    list(b)  # iterating, or having been at other epochs, changes nothing
    b.set_epoch(5)
    list(b)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # re-iterating the same epoch repeats it
    # the global RNG plays no part
    torch.manual_seed(0)
    first = list(a)
    torch.manual_seed(1)
    assert list(a) == first


def test_sampler_differs_between_epochs_and_seeds() -> None:
    s = EpochSampler(40, seed=7)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(list(s))
    assert orders[0] != orders[1] != orders[2] != orders[0]
    other = EpochSampler(40, seed=8)
    assert list(other) != orders[0]


def test_sampler_without_shuffle_is_in_order() -> None:
    s = EpochSampler(5, seed=7, shuffle=False)
    s.set_epoch(3)
    assert list(s) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- build_optimizer


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.lin = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_optimizer_no_decay_for_1d_params() -> None:
    net = Net()
    opt = build_optimizer(net, cfg(weight_decay=0.1, learning_rate=1e-3, adam_beta2=0.95))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1
    assert no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([net.emb.weight, net.lin.weight])
    assert ids(no_decay["params"]) == ids([net.lin.bias, net.norm.weight, net.norm.bias])
    for group in opt.param_groups:
        assert group["lr"] == 1e-3
        assert group["betas"] == (0.9, 0.95)
        assert group["eps"] == 1e-8
    # frozen parameters are left out
    assert ids(net.frozen.parameters()).isdisjoint(ids(decay["params"]) | ids(no_decay["params"]))


def test_optimizer_skips_empty_groups() -> None:
    opt = build_optimizer(torch.nn.LayerNorm(4), cfg(weight_decay=0.1))
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["weight_decay"] == 0.0


def test_optimizer_needs_trainable_params() -> None:
    net = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(net, cfg())


def test_weight_decay_not_applied_to_biases() -> None:
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.fill_(1.0)
        lin.bias.fill_(1.0)
    opt = build_optimizer(lin, cfg(weight_decay=0.5, learning_rate=0.1))
    for p in lin.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(lin.bias, torch.ones(2))  # zero grad, no decay: unchanged
    assert torch.allclose(lin.weight, torch.full((2, 2), 1.0 - 0.1 * 0.5))


# ---------------------------------------------------------------- build_scheduler


def lr_curve(total: int, **kw) -> list[float]:
    """The learning rate used by each optimizer step 0..total (base lr 1.0)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, cfg(learning_rate=1.0, **kw), total)
    out = []
    for _ in range(total + 1):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup() -> None:
    lrs = lr_curve(10, scheduler="cosine", warmup_steps=2)
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0])
    # half way through the decay: 0.5; the end: 0
    assert lrs[6] == pytest.approx(0.5)
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(lrs[2:]))


def test_cosine_without_warmup_starts_at_peak() -> None:
    lrs = lr_curve(10, scheduler="cosine")
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)


def test_linear_with_warmup() -> None:
    lrs = lr_curve(10, scheduler="linear", warmup_steps=2)
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])


def test_linear_without_warmup() -> None:
    assert lr_curve(4, scheduler="linear") == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_constant_with_warmup() -> None:
    lrs = lr_curve(6, scheduler="constant", warmup_steps=2)
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert lr_curve(3, scheduler="constant") == pytest.approx([1.0] * 4)


def test_warmup_ratio_rounds_up_and_steps_override_it() -> None:
    # 0.25 * 10 = 2.5 -> 3 warmup steps
    lrs = lr_curve(10, scheduler="constant", warmup_ratio=0.25)
    assert lrs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    lrs = lr_curve(10, scheduler="constant", warmup_ratio=0.25, warmup_steps=1)
    assert lrs[:2] == pytest.approx([0.0, 1.0])


def test_scheduler_scales_the_base_lr() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=3e-4)
    sched = build_scheduler(opt, cfg(learning_rate=3e-4, scheduler="linear"), 4)
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(3e-4 * 0.75)
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-4 * 0.75)


# ---------------------------------------------------------------- MetricsWriter


def test_metrics_writer_writes_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"  # the folder is created
    w = MetricsWriter(path)
    w.write({"step": 1, "loss": torch.tensor(2.5), "lr": 1e-3})
    w.write({"step": 2, "loss": float("nan"), "ppl": float("inf")})
    w.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": 2.5, "lr": 1e-3},
        {"step": 2, "loss": "nan", "ppl": "inf"},
    ]
    assert read_metrics(path) == [json.loads(line) for line in lines]


def test_metrics_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).write({"step": 1})
    MetricsWriter(path).write({"step": 2})
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_truncate_after_drops_later_steps(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    w = MetricsWriter(path)
    for step in (10, 20, 30, 40):
        w.write({"step": step, "loss": 1.0 / step})
    w.truncate_after(20)
    assert [r["step"] for r in read_metrics(path)] == [10, 20]
    w.write({"step": 30, "loss": 0.5})  # a resumed run appends after the kept lines
    assert [r["step"] for r in read_metrics(path)] == [10, 20, 30]
    w.truncate_after(0)
    assert read_metrics(path) == []


def test_truncate_after_without_file_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    MetricsWriter(path).truncate_after(5)
    assert not path.exists()


# ---------------------------------------------------------------- checkpoint_dirs


def make_ckpt(root: Path, name: str, state: bool = True) -> Path:
    d = root / name
    d.mkdir(parents=True)
    if state:
        (d / STATE_FILE).write_text(json.dumps({"step": 0}), encoding="utf-8")
    return d


def test_checkpoint_dirs_complete_only_sorted_numerically(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    s2 = make_ckpt(root, "step-2")
    s10 = make_ckpt(root, "step-10")
    s9 = make_ckpt(root, "step-9")
    make_ckpt(root, "step-12.tmp")  # an interrupted save
    make_ckpt(root, "step-11", state=False)  # no trainer_state.json
    make_ckpt(root, "final")
    make_ckpt(root, "step-x")
    (root / "step-13").write_text("a file, not a folder", encoding="utf-8")
    assert checkpoint_dirs(root) == [(2, s2), (9, s9), (10, s10)]
    assert latest_checkpoint(root) == s10


def test_checkpoint_dirs_missing_root(tmp_path: Path) -> None:
    assert checkpoint_dirs(tmp_path / "nope") == []
    assert latest_checkpoint(tmp_path / "nope") is None
    assert latest_checkpoint(tmp_path) is None


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(reset_partial_state=True)


def test_save_checkpoint_is_atomic_and_prunes(tmp_path: Path, accelerator) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model, opt = accelerator.prepare(model, opt)
    root = tmp_path / "checkpoints"
    make_ckpt(root, "step-3.tmp", state=False)  # left over by a crash: overwritten
    saved = {}
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        saved[step] = model.weight.detach().clone()
        path = save_checkpoint(accelerator, root, step, {"step": step, "epoch": 0}, keep=2)
        assert path == root / f"step-{step}"
    assert sorted(p.name for p in root.iterdir()) == ["step-2", "step-3"]
    assert [s for s, _ in checkpoint_dirs(root)] == [2, 3]
    with torch.no_grad():
        model.weight.zero_()
    state = load_checkpoint(accelerator, root / "step-2")
    assert state == {"step": 2, "epoch": 0}
    assert torch.equal(model.weight.detach(), saved[2])


# ---------------------------------------------------------------- atomic saves


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from rlhfkit.models.tiny import TinySpec, build_tiny

    corpus = ["What is 2 + 3?", "5", "Bake them a cake."]
    spec = TinySpec(vocab_size=280, hidden=32, layers=1, heads=2, max_positions=32)
    return build_tiny(tmp_path_factory.mktemp("tiny"), spec, corpus)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old")))


def test_save_pretrained_atomic_round_trip(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    out = tmp_path / "final"
    assert save_pretrained_atomic(model, tok, out) == out
    assert leftovers(tmp_path) == []

    # a second save replaces the first (a stale .tmp from a crash is discarded)
    (tmp_path / "final.tmp").mkdir()
    (tmp_path / "final.tmp" / "junk").write_text("x", encoding="utf-8")
    with torch.no_grad():
        model.model.norm.weight.fill_(2.0)
    save_pretrained_atomic(model, tok, out)
    assert leftovers(tmp_path) == []
    assert not (out / "junk").exists()

    loaded = AutoModelForCausalLM.from_pretrained(out)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.model.norm.weight, torch.full_like(loaded.model.norm.weight, 2.0))
    again = AutoTokenizer.from_pretrained(out)
    assert again("What is 2 + 3?")["input_ids"] == tok("What is 2 + 3?")["input_ids"]
    assert again.pad_token == tok.pad_token and again.chat_template == tok.chat_template


def test_save_pretrained_atomic_without_tokenizer(tmp_path: Path, tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    out = save_pretrained_atomic(model, None, tmp_path / "m")
    assert (out / "config.json").is_file()
    assert not (out / "tokenizer.json").exists()
    AutoModelForCausalLM.from_pretrained(out)


def test_replace_dir(tmp_path: Path) -> None:
    src, dst = tmp_path / "new", tmp_path / "dst"
    src.mkdir()
    (src / "a").write_text("new", encoding="utf-8")
    replace_dir(src, dst)  # no previous dst
    assert (dst / "a").read_text(encoding="utf-8") == "new"
    assert not src.exists()

    src.mkdir()
    (src / "b").write_text("newer", encoding="utf-8")
    (tmp_path / "dst.old").mkdir()  # stale from an earlier crash
    replace_dir(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]
