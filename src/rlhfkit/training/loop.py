"""The one training loop every stage uses, on ``accelerate``.

A stage hands it an :class:`Objective` (how a batch becomes a loss), the
model, and its examples. The loop owns everything else: devices and
processes, precision, the optimizer and LR schedule, gradient accumulation and
clipping, seeds, periodic evaluation, progress, ``metrics.jsonl``, atomic
checkpoints and exact resume, and the final ``from_pretrained`` folder.

Loss normalisation: an objective returns the *sum* of its per-item losses and
says how many items a batch holds (tokens for SFT, pairs for DPO). The loop
counts the items of the whole optimizer step (all micro-batches on all
processes) first and divides by that, so gradient accumulation and data
parallelism give the same gradient as one big batch.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhfkit.config import TrainConfig
from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import save_pretrained_atomic
from rlhfkit.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlhfkit.training.tracking import MetricsWriter, Progress

log = logging.getLogger("rlhfkit")


Metric = torch.Tensor | float | tuple[torch.Tensor | float, torch.Tensor | float]


@dataclass
class LossOutput:
    """``loss``: the sum of per-item losses in the batch (a scalar tensor with grad).

    ``metrics``: sums to report as means. A plain value is averaged over the
    same items as the loss; a ``(sum, count)`` tuple over its own count (for
    example pair accuracy when the items are prompts).
    """

    loss: torch.Tensor
    metrics: dict[str, Metric] = field(default_factory=dict)


class MetricSums:
    """Sums and counts of metrics over micro-batches, reduced over processes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}  # absent: counted in items

    def add(self, metrics: dict[str, Metric]) -> None:
        for k, v in metrics.items():
            if isinstance(v, tuple):
                self.counts[k] = self.counts.get(k, 0.0) + float(v[1])
                v = v[0]
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def means(self, reduce, n_items: float) -> dict[str, float]:
        out = {}
        for k in sorted(self.sums):
            n = reduce(self.counts[k]) if k in self.counts else n_items
            out[k] = reduce(self.sums[k]) / max(n, 1.0)
        return out


class Objective(Protocol):
    def count(self, batch: dict[str, Any]) -> int:
        """The number of items ``loss`` sums over in ``batch``."""
        ...

    def loss(self, model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput: ...

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        """Metrics computed from the logged means (for example perplexity from loss),
        for training windows and evaluation alike."""
        ...


class EpochSampler(torch.utils.data.Sampler[int]):
    """A seeded permutation per epoch: the data order depends on (seed, epoch) only,
    so a resumed run sees exactly the batches the uninterrupted one would."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator

    mp = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    if cfg.precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
        raise ConfigError("key 'precision': fp16 needs a GPU; use bf16 or fp32 on the CPU")
    _reset_if_single_process()
    if cfg.tune_malloc:
        from rlhfkit.training.allocator import tune_malloc

        tune_malloc()
    return Accelerator(mixed_precision=mp, cpu=cfg.cpu)


def _reset_if_single_process() -> None:
    """Let one process run several stages with different settings (the demo pipeline).

    accelerate keeps its state in a per-process singleton that refuses a second
    ``mixed_precision``. Outside a launched multi-process job nothing else shares
    that state, so it is reset between stages; under ``accelerate launch`` each
    job runs one stage and the state is left alone.
    """
    from accelerate.state import AcceleratorState, PartialState

    if not AcceleratorState._shared_state:
        return
    if PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)


def build_optimizer(
    model: torch.nn.Module,
    cfg: TrainConfig,
    lr_groups: Sequence[tuple[Sequence[torch.nn.Parameter], float]] | None = None,
) -> torch.optim.Optimizer:
    """AdamW (torch's fused implementation where the parameters' device and dtype allow,
    as transformers' ``adamw_torch_fused`` default); no weight decay on biases and norm
    weights (1-D parameters).

    ``lr_groups``: ``(parameters, learning rate)`` pairs when parts of the model learn
    at different rates (PPO's policy and value model); default: all at ``learning_rate``."""
    parts = lr_groups or [(list(model.parameters()), cfg.learning_rate)]
    groups = []
    for params, lr in parts:
        params = [p for p in params if p.requires_grad]
        groups += [
            {
                "params": [p for p in params if p.ndim >= 2],
                "weight_decay": cfg.weight_decay,
                "lr": lr,
            },
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
        ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    kwargs = {
        "lr": cfg.learning_rate,
        "betas": (cfg.adam_beta1, cfg.adam_beta2),
        "eps": cfg.adam_eps,
    }
    try:  # one fused kernel per step instead of a loop over parameters (CPU too: 4x faster)
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not take
        return torch.optim.AdamW(groups, **kwargs)


def build_scheduler(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total_steps)
    name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    eval: dict[str, float]
    final_dir: Path
    seconds: float
    best: dict[str, float] | None = None  # eval metrics (and step) of the model in final/


class TrainingRun(abc.ABC):
    """The loop shared by every stage: steps, periodic evaluation, logging windows,
    ``metrics.jsonl``, progress, atomic checkpoints, exact resume and ``final/``.

    A subclass says what one optimizer step is (:meth:`train_step`), where the data
    stands at a given step (:meth:`begin`), how to evaluate, and what else its
    checkpoints must hold (:meth:`extra_state`); the offline :class:`Trainer` and the
    online PPO / GRPO runs differ only there.
    """

    cfg: TrainConfig
    accelerator: Any
    name: str
    out: Path
    total_steps: int
    steps_per_epoch: int = 1
    model: torch.nn.Module
    tokenizer: Any
    scheduler: Any
    best: dict[str, float] | None = None

    # -- what a subclass provides ---------------------------------------------
    def begin(self, step: int) -> None:  # noqa: B027 - an optional hook
        """Position the data source so the next :meth:`train_step` is step ``step + 1``."""

    @abc.abstractmethod
    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns its metrics."""

    def evaluate(self) -> dict[str, float]:
        return {}

    def has_eval(self) -> bool:
        return False

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state beyond what accelerate saves (controllers, running stats)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - an optional hook
        """Undo :meth:`extra_state` on resume."""

    def after_step(self, step: int, stats: dict[str, float]) -> None:  # noqa: B027 - an optional hook
        """Called on every process after each step (samples, warnings)."""

    # -- helpers ----------------------------------------------------------------
    def global_sum(self, value: float) -> float:
        """``value`` summed over processes (one process: itself, no collective)."""
        if self.accelerator.num_processes == 1:
            return float(value)
        t = torch.tensor(float(value), device=self.accelerator.device, dtype=torch.float64)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def save_final(self) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_pretrained_atomic(acc.unwrap_model(self.model), self.tokenizer, self.out / "final")
        acc.wait_for_everyone()

    # -- the loop -----------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, acc = self.cfg, self.accelerator
        ckpt_root = self.out / "checkpoints"
        step = 0
        writer = None
        if acc.is_main_process:
            tb = self.out / "tensorboard" if cfg.tensorboard else None
            writer = MetricsWriter(self.out / "metrics.jsonl", tb)
        if resume:
            path = latest_checkpoint(ckpt_root)
            if path is not None:
                state = load_checkpoint(acc, path)
                step = int(state["step"])
                self.best = state.get("best")
                self.restore(state)
                log.info("resumed from %s (step %d)", path, step)
                if writer:
                    writer.truncate_after(step)
        elif writer and writer.path.exists():
            writer.path.unlink()

        t0 = time.perf_counter()
        window: dict[str, float] = {}
        window_steps = 0
        window_t = time.perf_counter()
        last_eval: dict[str, float] = {}
        train_loss = float("nan")
        if cfg.eval_on_start and step == 0 and self.has_eval():
            last_eval = self.evaluate()
            if writer:
                writer.write({"step": 0, **last_eval})
        self.begin(step)
        progress = Progress(self.total_steps, self.name, acc.is_main_process, start=step)
        try:
            while step < self.total_steps:
                stats = self.train_step()
                step += 1
                self.after_step(step, stats)
                train_loss = stats.get("loss", float("nan"))
                for k, v in stats.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                do_eval = cfg.eval_every > 0 and step % cfg.eval_every == 0
                last = step == self.total_steps
                if do_eval or (last and self.has_eval()):
                    last_eval = self.evaluate()
                    self._keep_if_best(step, last_eval)
                if step % cfg.log_every == 0 or do_eval or last:
                    elapsed = time.perf_counter() - window_t
                    record = self._window_record(window, window_steps, elapsed)
                    record = {"step": step, "epoch": step / self.steps_per_epoch, **record}
                    record["lr"] = self.scheduler.get_last_lr()[0]
                    if do_eval or last:
                        record.update(last_eval)
                    if writer:
                        writer.write(record)
                    window, window_steps, window_t = {}, 0, time.perf_counter()
                progress.update(step, {"loss": train_loss, **_short(last_eval)})
                if cfg.save_every > 0 and step % cfg.save_every == 0 and not last:
                    state = {"step": step, "best": self.best, **self.extra_state()}
                    save_checkpoint(acc, ckpt_root, step, state, cfg.keep_checkpoints)
        finally:
            progress.close()
            if writer:
                writer.close()
        if self.best is None:
            self.save_final()
        return TrainResult(
            step, train_loss, last_eval, self.out / "final", time.perf_counter() - t0, self.best
        )

    def _keep_if_best(self, step: int, metrics: dict[str, float]) -> None:
        """With ``best_metric`` set, final/ always holds the best evaluated model."""
        key = self.cfg.best_metric
        if not key or key not in metrics:
            return
        value = metrics[key]
        if self.best is not None:
            old = self.best[key]
            if not (value > old if self.cfg.best_mode == "max" else value < old):
                return
        self.best = {"step": step, **metrics}
        self.save_final()

    def _window_record(self, window: dict[str, float], n: int, seconds: float) -> dict[str, float]:
        tokens = window.pop("tokens", None)
        window.pop("items", None)
        rec = {k: v / max(n, 1) for k, v in window.items()}
        rec.update(self.derived(rec))
        if tokens is not None:
            rec["tokens_per_s"] = tokens / seconds if seconds > 0 else 0.0
        return rec


class Trainer(TrainingRun):
    """Offline stages (SFT, RM, DPO, ...): an :class:`Objective` over a fixed dataset,
    seeded per-epoch shuffles, gradient accumulation."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        objective: Objective,
        train_data: Sequence[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        eval_data: Sequence[Any] | None = None,
        name: str = "train",
        accelerator: Any = None,
    ) -> None:
        self.cfg = cfg
        self.objective = objective
        self.tokenizer = tokenizer
        self.collate = collate
        self.eval_data = eval_data or []
        self.name = name
        self.out = Path(cfg.out)
        self.accelerator = accelerator or make_accelerator(cfg)
        from accelerate.utils import set_seed

        set_seed(cfg.seed)
        acc = self.accelerator
        self.sampler = EpochSampler(len(train_data), cfg.seed)
        loader = torch.utils.data.DataLoader(
            train_data,  # type: ignore[arg-type]
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=collate,
        )
        optimizer = build_optimizer(model, cfg)
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        micro_per_epoch = len(self.loader)
        if micro_per_epoch == 0:
            raise ConfigError("no training batches: the training set is empty")
        self.steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        # Not passed to prepare(): accelerate would step it once per process.
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        acc.register_for_checkpointing(self.scheduler)
        self.best = None
        self._micro: Iterator[list[dict[str, Any]]] = iter(())

    def begin(self, step: int) -> None:
        self._micro = self._micro_batches(step)

    def _micro_batches(self, step: int) -> Iterator[list[dict[str, Any]]]:
        """The micro-batch groups of steps ``step + 1, step + 2, ...``: the data order
        depends on (seed, epoch) only, so a resumed run sees the same batches."""
        acc, accum = self.accelerator, self.cfg.grad_accum
        while True:
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            skip = in_epoch * accum
            batches = iter(acc.skip_first_batches(self.loader, skip) if skip else self.loader)
            while micro := list(islice(batches, accum)):
                yield micro
                step += 1

    def has_eval(self) -> bool:
        return bool(self.eval_data)

    def derived(self, means: dict[str, float]) -> dict[str, float]:
        return self.objective.derived(means)

    # -- one optimizer step -------------------------------------------------
    def train_step(self) -> dict[str, float]:
        acc, model = self.accelerator, self.model
        micro = next(self._micro)
        n_global = self.global_sum(sum(self.objective.count(b) for b in micro))
        scale = acc.num_processes / max(n_global, 1.0)
        loss_sum = 0.0
        metrics = MetricSums()
        tokens = 0
        model.train()
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            with nullcontext() if sync else acc.no_sync(model), acc.autocast():
                out = self.objective.loss(model, batch)
                acc.backward(out.loss * scale)
            loss_sum += float(out.loss.detach())
            metrics.add(out.metrics)
            tokens += batch_tokens(batch)
        grad_norm = None
        if self.cfg.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(model.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        stats = {"loss": self.global_sum(loss_sum) / max(n_global, 1.0)}
        stats.update(metrics.means(self.global_sum, n_global))
        stats["tokens"] = self.global_sum(tokens)
        stats["items"] = n_global
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        return stats

    # -- evaluation ---------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss and metric means over the eval set, each process taking every n-th example."""
        if not self.eval_data:
            return {}
        acc = self.accelerator
        model = self.model
        model.eval()
        mine = [
            self.eval_data[i]
            for i in range(acc.process_index, len(self.eval_data), acc.num_processes)
        ]
        loss_sum = 0.0
        metrics = MetricSums()
        n_local = 0.0
        bs = self.cfg.batch_size
        for start in range(0, len(mine), bs):
            batch = self.collate(mine[start : start + bs])
            batch = {k: v.to(acc.device) if hasattr(v, "to") else v for k, v in batch.items()}
            with acc.autocast():
                out = self.objective.loss(model, batch)
            n_local += self.objective.count(batch)
            loss_sum += float(out.loss)
            metrics.add(out.metrics)
        n = self.global_sum(n_local)
        means = {
            "loss": self.global_sum(loss_sum) / max(n, 1.0),
            **metrics.means(self.global_sum, n),
        }
        means.update(self.objective.derived(means))
        return {f"eval_{k}": v for k, v in means.items()}


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real tokens of a batch: the attention mask's ones, a packed batch's segment tokens
    (its pad tail left out), else every position."""
    if "segments" in batch:
        return int((batch["segments"] >= 0).sum())
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def _short(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k == "eval_loss"}
