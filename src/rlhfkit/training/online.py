"""What every online stage (PPO, GRPO, RLOO, ...) shares, on top of the one training loop:
the prompt schedule, rollouts, scoring, the batched log-prob forwards, the clipped
update over minibatches, samples and run-away warnings.

A step is: sample responses for a batch of prompts -> score them -> compute old and
reference log-probs (and values) in batched forwards -> advantages (the stage's own)
-> ``ppo_epochs`` passes over the batch in minibatches of ``batch_size x grad_accum``.
A stage subclass supplies :meth:`OnlineRun.make_experience` and :meth:`OnlineRun.loss`.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit.algorithms.logprobs import token_logps
from rlhfkit.algorithms.ppo import RunningMoments
from rlhfkit.config import OnlineKeys, TrainConfig
from rlhfkit.data.types import PromptRecord
from rlhfkit.models.loading import is_peft, load_causal_lm, lora_spec, save_pretrained_atomic
from rlhfkit.models.reward import positions_from_mask
from rlhfkit.rollout.generation import SamplingParams
from rlhfkit.rollout.generator import Generator, Rollout
from rlhfkit.rollout.rewards import RewardSource
from rlhfkit.training.loop import (
    LossOutput,
    MetricSums,
    TrainingRun,
    build_optimizer,
    build_scheduler,
)
from rlhfkit.training.tracking import MetricsWriter

log = logging.getLogger("rlhfkit")


class PromptSchedule:
    """Which prompts step ``s`` samples: a seeded permutation per pass over the prompts,
    read ``per_step`` at a time across passes; process ``p`` of ``n`` takes every n-th.
    Depends on (seed, step) only, so a resumed run samples the same prompts."""

    def __init__(self, n_prompts: int, per_step: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.per_step, self.seed = n_prompts, per_step, seed
        self.rank, self.world = rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        """Prompt indices of step ``step`` (0-based) for this process."""
        g = self.per_step * self.world
        out = []
        for pos in range(step * g + self.rank, (step + 1) * g, self.world):
            epoch, i = divmod(pos, self.n)
            out.append(self._perm(epoch)[i])
        return out

    def steps_per_pass(self) -> float:
        return self.n / (self.per_step * self.world)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout from several generate calls: prompts re-left-padded, responses
    re-right-padded to the widest."""
    if len(parts) == 1:
        return parts[0]
    p_w = max(r.prompt_ids.shape[1] for r in parts)
    r_w = max(r.response_ids.shape[1] for r in parts)

    def pad(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
        extra = width - t.shape[1]
        filler = t.new_full((t.shape[0], extra), value)
        return torch.cat([filler, t] if left else [t, filler], dim=1)

    return Rollout(
        torch.cat([pad(r.prompt_ids, p_w, pad_id, True) for r in parts]),
        torch.cat([pad(r.prompt_mask, p_w, 0, True) for r in parts]),
        torch.cat([pad(r.response_ids, r_w, pad_id, False) for r in parts]),
        torch.cat([pad(r.response_mask, r_w, 0, False) for r in parts]),
        torch.cat([r.truncated for r in parts]),
        [t for r in parts for t in r.texts],
    )


@dataclass
class Experience:
    """A scored rollout batch with what the update needs, on the training device.

    Per-token tensors are ``(B, R)`` over response positions; ``input_ids`` /
    ``attention_mask`` / ``position_ids`` are ``(B, P + R)``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor  # float (B, R)
    old_logps: torch.Tensor
    advantages: torch.Tensor
    ref_logps: torch.Tensor | None = None
    values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_ids.shape[1]

    def select(self, idx: torch.Tensor) -> Experience:
        """Rows ``idx``, with response columns past the longest selected response dropped."""
        width = int(self.mask[idx].sum(dim=1).max().clamp(min=1))
        cut = self.response_ids.shape[1] - width
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
                continue
            t = t[idx]
            if cut > 0:
                t = t[:, : t.shape[1] - cut]
            out[f.name] = t
        return replace(self, **out)


# Architectures whose shared-prompt forward is tested against the full forward
# (tests/unit/test_shared_prefix.py).
SHARED_PREFIX_ARCHITECTURES = frozenset({"llama", "gpt2", "qwen2"})


def shared_prompts(exp: Experience) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(first, inverse)`` when the rows' prompts repeat (GRPO's G samples per prompt):
    ``first`` the row index of each distinct prompt, ``inverse`` each row's prompt; None
    when fewer than two rows share a prompt on average (nothing worth sharing)."""
    p = exp.prompt_len
    if p == 0:
        return None
    key = torch.cat([exp.input_ids[:, :p], exp.attention_mask[:, :p].long()], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n_rows, n_prompts = key.shape[0], int(inverse.max()) + 1
    if 2 * n_prompts > n_rows:
        return None
    rows = torch.arange(n_rows, device=inverse.device)
    first = torch.full((n_prompts,), n_rows, dtype=rows.dtype, device=rows.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


def _model_type(model: torch.nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "model_type", None)


def forward_response(
    model: torch.nn.Module, exp: Experience, hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits at the positions that predict each response token ``(B, R, V)`` (only
    those are computed: ``logits_to_keep``), and the last hidden states at the same
    positions when ``hidden``.

    Rows that share a prompt (GRPO's samples of one prompt) run the prompt once: the
    distinct prompts' forward fills a KV cache, each row gets its prompt's keys and
    values (gradients flow back through the selection), and the responses run on it.
    The same attention, positions and masks as one forward over prompt + response, in
    fewer operations (:func:`forward_shared_prompt`)."""
    shared = shared_prompts(exp) if _can_share(model) else None
    if shared is not None:
        out = forward_shared_prompt(model, exp, *shared, hidden=hidden)
        if out is not None:
            return out
    return forward_full(model, exp, hidden)


def _can_share(model: torch.nn.Module) -> bool:
    """A tested architecture, and no activation checkpointing in training (it turns
    the KV cache off)."""
    if _model_type(model) not in SHARED_PREFIX_ARCHITECTURES:
        return False
    return not (
        model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    )


def forward_full(
    model: torch.nn.Module, exp: Experience, hidden: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`forward_response` as one forward over prompt + response per row."""
    r = exp.response_ids.shape[1]
    out = model(
        input_ids=exp.input_ids,
        attention_mask=exp.attention_mask,
        position_ids=exp.position_ids,
        use_cache=False,
        logits_to_keep=r + 1,
        output_hidden_states=hidden,
    )
    logits = out.logits[:, :-1]
    h = out.hidden_states[-1][:, -r - 1 : -1] if hidden else None
    return logits, h


def forward_shared_prompt(
    model: torch.nn.Module,
    exp: Experience,
    first: torch.Tensor,
    inverse: torch.Tensor,
    hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """:func:`forward_response` with each distinct prompt run once (see there); None
    when the model returned no KV cache."""
    p, r = exp.prompt_len, exp.response_ids.shape[1]
    head = model(
        input_ids=exp.input_ids[first, :p],
        attention_mask=exp.attention_mask[first, :p],
        position_ids=exp.position_ids[first, :p],
        use_cache=True,
        logits_to_keep=1,
        output_hidden_states=hidden,
    )
    logits = [head.logits[:, -1:][inverse]]  # the last prompt position predicts token 0
    states = [head.hidden_states[-1][:, -1:][inverse]] if hidden else []
    if r > 1:  # the response's last token predicts nothing: it is not an input
        cache = getattr(head, "cache", None)
        if cache is None or not hasattr(cache, "batch_select_indices"):
            return None
        cache.batch_select_indices(inverse)
        tail = model(
            input_ids=exp.input_ids[:, p : p + r - 1],
            attention_mask=exp.attention_mask[:, : p + r - 1],
            position_ids=exp.position_ids[:, p : p + r - 1],
            cache=cache,
            use_cache=True,
            output_hidden_states=hidden,
        )
        logits.append(tail.logits)
        if hidden:
            states.append(tail.hidden_states[-1])
    return torch.cat(logits, dim=1), (torch.cat(states, dim=1) if hidden else None)


class ActorCritic(torch.nn.Module):
    """The trained modules in one ``nn.Module`` (one DDP wrapper, one optimizer, one
    checkpoint): the policy, and for PPO a value model - a separate sequence-classifier
    (from the RM or the SFT model) or a linear head on the policy's last hidden state."""

    def __init__(
        self,
        policy: torch.nn.Module,
        critic: torch.nn.Module | None = None,
        value_head: torch.nn.Linear | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head = value_head

    @property
    def has_values(self) -> bool:
        return self.critic is not None or self.value_head is not None

    def forward(
        self, exp: Experience, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Temperature-scaled response logits ``(B, R, V)`` and values ``(B, R)`` (or None)."""
        logits, hidden = forward_response(self.policy, exp, hidden=self.value_head is not None)
        if temperature != 1.0:
            logits = logits / temperature
        values = None
        if self.value_head is not None:
            assert hidden is not None
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        elif self.critic is not None:
            from rlhfkit.models.reward import token_scores

            r = exp.response_ids.shape[1]
            values = token_scores(self.critic, exp.input_ids, exp.attention_mask)[:, -r - 1 : -1]
        return logits, values


def split_params(model: ActorCritic) -> tuple[list, list]:
    """Trainable parameters of the policy, and of the value model / head."""
    policy = [p for p in model.policy.parameters() if p.requires_grad]
    value = [p for m in (model.critic, model.value_head) if m is not None for p in m.parameters()]
    return policy, [p for p in value if p.requires_grad]


class OnlineRun(TrainingRun):
    """The shared online step; see the module docstring. Subclasses set ``self.model``
    (a prepared :class:`ActorCritic`), ``self.optimizer``, ``self.scheduler``,
    ``self.reference`` and implement :meth:`make_experience` and :meth:`loss`."""

    cfg: Any  # OnlineKeys + TrainConfig

    def setup_online(
        self,
        cfg: OnlineKeys,
        accelerator: Any,
        tokenizer: Any,
        template: str,
        prompts: list[PromptRecord],
        eval_prompts: list[PromptRecord],
        reward: RewardSource,
        name: str,
    ) -> None:
        assert isinstance(cfg, TrainConfig)
        self.cfg, self.accelerator, self.tokenizer, self.name = cfg, accelerator, tokenizer, name
        self.out = Path(cfg.out)
        self.prompts, self.eval_prompts, self.reward = prompts, eval_prompts, reward
        self.generator = Generator(
            tokenizer,
            template,
            SamplingParams.sampled(cfg),
            cfg.max_prompt_length,
            backend=cfg.generation_backend,
        )
        # Prompts are chat-templated and tokenized when a step first draws them (TRL
        # encodes per batch too), not all up front: set-up does not grow with the file.
        self.prompt_ids: dict[int, list[int]] = {}
        self.schedule = PromptSchedule(
            len(prompts),
            cfg.rollout_batch_size,
            cfg.seed,
            accelerator.process_index,
            accelerator.num_processes,
        )
        self.steps_per_epoch = max(1, round(self.schedule.steps_per_pass()))
        if cfg.max_steps > 0:
            self.total_steps = cfg.max_steps
        else:
            self.total_steps = max(1, round(cfg.epochs * self.schedule.steps_per_pass()))
        self.moments = RunningMoments()
        self.calibrated = not hasattr(reward, "calibrate")
        self.samples: MetricsWriter | None = None
        self.step = 0
        self._warned: set[str] = set()

    def prepare_model(
        self,
        model: ActorCritic,
        reference: torch.nn.Module | None,
        value_learning_rate: float | None = None,
    ) -> None:
        """One optimizer over the policy (and value model, at its own rate), both
        prepared by accelerate; the LR schedule over :meth:`optimizer_steps`; the frozen
        reference (None: the LoRA policy with adapters disabled, or no reference)."""
        cfg, acc = self.cfg, self.accelerator
        policy_params, value_params = split_params(model)
        optimizer = build_optimizer(
            model,
            cfg,
            [(policy_params, cfg.learning_rate),
             (value_params, value_learning_rate or cfg.learning_rate)],
        )  # fmt: skip
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.optimizer_steps())
        acc.register_for_checkpointing(self.scheduler)
        self.reference = (
            reference.to(acc.device).eval().requires_grad_(False) if reference else None
        )

    def save_final(self) -> None:
        """``final/``: the policy (``from_pretrained`` loads it); ``value_model/``: the
        value model, when it is a separate model."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            save_pretrained_atomic(model.policy, self.tokenizer, self.out / "final")
            if model.critic is not None:
                save_pretrained_atomic(model.critic, self.tokenizer, self.out / "value_model")
        acc.wait_for_everyone()

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run (for the LR schedule)."""
        cfg = self.cfg
        per_update = cfg.batch_size * cfg.grad_accum
        minibatches = -(-self.rollout_rows() // per_update)
        return self.total_steps * cfg.ppo_epochs * minibatches

    def rollout_rows(self) -> int:
        """Responses per step per process."""
        return self.cfg.rollout_batch_size

    # -- resume -----------------------------------------------------------------
    def begin(self, step: int) -> None:
        self.step = step
        if self.accelerator.is_main_process:
            self.samples = MetricsWriter(self.out / "samples.jsonl")
            self.samples.truncate_after(step)

    def extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"reward_moments": self.moments.state_dict()}
        if hasattr(self.reward, "state_dict"):
            state["reward_calibration"] = self.reward.state_dict()  # type: ignore[attr-defined]
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state["reward_moments"])
        if "reward_calibration" in state and hasattr(self.reward, "load_state_dict"):
            self.reward.load_state_dict(state["reward_calibration"])  # type: ignore[attr-defined]
            self.calibrated = True

    # -- the step ---------------------------------------------------------------
    def policy_module(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).policy

    def encoded_prompts(self, idx: Sequence[int]) -> list[list[int]]:
        """Token ids of prompts ``idx``, encoded on first use and kept."""
        todo = list(dict.fromkeys(i for i in idx if i not in self.prompt_ids))
        if todo:
            encoded = self.generator.encode([self.prompts[i].prompt for i in todo])
            self.prompt_ids.update(zip(todo, encoded, strict=True))
        return [self.prompt_ids[i] for i in idx]

    def rollout(self, idx: list[int]) -> Rollout:
        rows = self.encoded_prompts(idx)
        size = self.cfg.generation_batch_size or len(rows)
        policy = self.policy_module()
        parts = [
            self.generator.generate_ids(policy, rows[s : s + size])
            for s in range(0, len(rows), size)
        ]
        return concat_rollouts(parts, self.tokenizer.pad_token_id)

    def score(
        self, records: Sequence[PromptRecord], rollout: Rollout
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Raw scores from the reward source, the scores the update uses (missing-EOS
        penalty, optional running normalisation and clipping), and the batch mean of
        each part of a combined reward (``reward_<name>``), for the metrics."""
        cfg = self.cfg
        prompts = [r.prompt for r in records]
        lengths = rollout.lengths.tolist()
        extra = [{**r.extra, "completion_length": n} for r, n in zip(records, lengths, strict=True)]
        if not self.calibrated:  # a combination of sources: scales from the first rollout
            self.reward.calibrate(prompts, rollout.texts, extra)  # type: ignore[attr-defined]
            self.calibrated = True
        part_means: dict[str, float] = {}
        if hasattr(self.reward, "score_with_parts"):
            raw, parts = self.reward.score_with_parts(prompts, rollout.texts, extra)  # type: ignore[attr-defined]
            part_means = {
                f"reward_{k}": float(self.gather(v.float()).mean()) for k, v in parts.items()
            }
        else:
            raw = self.reward.score(prompts, rollout.texts, extra)
        raw = raw.float()
        scores = raw - cfg.missing_eos_penalty * rollout.truncated.float().cpu()
        if cfg.reward_norm:
            self.moments.update(self.gather(scores))
            scores = (scores - self.moments.mean) / self.moments.std
        if cfg.reward_clip > 0:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        return raw, scores, part_means

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` from every process, concatenated (on the CPU)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return t
        return acc.gather(t.to(acc.device)).cpu()

    def token_logps(
        self, model: torch.nn.Module, exp: Experience, frozen: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the sampled tokens (and values) in micro-batches, no grad.

        ``frozen``: ``model`` is never trained (a separate reference model), so its
        forwards run in inference mode (no version counters: ~2% of the reference
        forward here); a trained model stays in ``no_grad``, since a module that caches
        tensors during a forward (rotary tables of remote code) would otherwise keep
        inference tensors that its training forward cannot save for backward. The
        results are put together outside either mode: ordinary tensors, which the
        update's loss may save for its backward."""
        logps, values = [], []
        bs = self.cfg.batch_size
        full = exp.response_ids.shape[1]
        with torch.inference_mode() if frozen else torch.no_grad():
            for s in range(0, exp.input_ids.shape[0], bs):
                part = exp.select(torch.arange(s, min(s + bs, exp.input_ids.shape[0])))
                width = part.response_ids.shape[1]
                with self.accelerator.autocast():
                    if isinstance(model, ActorCritic):
                        logits, v = model(part, self.cfg.temperature)
                    else:
                        logits, v = forward_response(model, part)[0] / self.cfg.temperature, None
                lp = token_logps(logits, part.response_ids)
                logps.append(torch.nn.functional.pad(lp, (0, full - width)))
                if v is not None:
                    values.append(torch.nn.functional.pad(v.float(), (0, full - width)))
        return torch.cat(logps) * exp.mask, (torch.cat(values) * exp.mask if values else None)

    def experience_base(self, rollout: Rollout) -> Experience:
        device = self.accelerator.device
        ids = rollout.input_ids.to(device)
        attn = rollout.attention_mask.to(device)
        mask = rollout.response_mask.to(device).float()
        zeros = torch.zeros_like(mask)
        return Experience(
            ids,
            attn,
            positions_from_mask(attn),
            rollout.response_ids.to(device),
            mask,
            zeros,
            zeros,
        )

    @abc.abstractmethod
    def make_experience(
        self, rollout: Rollout, scores: torch.Tensor
    ) -> tuple[Experience, dict[str, float]]:
        """The scored rollout as an :class:`Experience` (advantages, old / reference
        log-probs, values) and its metrics."""

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, mb: Experience) -> LossOutput:
        """Token-summed loss of a micro-batch and metric sums (over its tokens)."""

    def extra_backward(self, model: torch.nn.Module) -> dict[str, float]:
        """Extra losses per optimizer step, backpropagated before the minibatch (PPO-ptx)."""
        return {}

    def loss_denominator(self, exp: Experience, idx: torch.Tensor) -> float:
        """What a minibatch's summed :meth:`loss` is divided by, over all processes: its
        response tokens (a token mean). GRPO's loss types change it."""
        return self.global_sum(float(exp.mask[idx].sum()))

    def clip_groups(self) -> list[list[torch.nn.Parameter]]:
        policy, value = split_params(self.accelerator.unwrap_model(self.model))
        return [g for g in (policy, value) if g]

    def update(self, exp: Experience) -> dict[str, float]:
        """``ppo_epochs`` passes over the batch in shuffled minibatches, one optimizer step
        each; losses are token sums divided by the minibatch's global token count."""
        cfg, acc, model = self.cfg, self.accelerator, self.model
        n = exp.input_ids.shape[0]
        per_update = cfg.batch_size * cfg.grad_accum
        metrics, extra = MetricSums(), MetricSums()
        tokens_total, updates, stopped = 0.0, 0, 0.0
        model.train()
        for epoch in range(cfg.ppo_epochs):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step * 101 + epoch)
            perm = torch.randperm(n, generator=g)
            for start in range(0, n, per_update):
                idx = perm[start : start + per_update]
                micro = [idx[i : i + cfg.batch_size] for i in range(0, len(idx), cfg.batch_size)]
                n_tokens = self.global_sum(float(exp.mask[idx].sum()))
                scale = acc.num_processes / max(self.loss_denominator(exp, idx), 1e-8)
                extra.add(self.extra_backward(model))
                step_metrics = MetricSums()
                for j, m in enumerate(micro):
                    mb = exp.select(m)
                    sync = j == len(micro) - 1
                    with nullcontext() if sync else acc.no_sync(model), acc.autocast():
                        out = self.loss(model, mb)
                        acc.backward(out.loss * scale)
                    step_metrics.add({"loss": out.loss.detach(), **out.metrics})
                if cfg.max_grad_norm > 0:
                    for params in self.clip_groups():
                        acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
                tokens_total += n_tokens
                for k, v in step_metrics.sums.items():
                    metrics.add({k: v})
                mb_kl = self.global_sum(step_metrics.sums.get("approx_kl", 0.0)) / max(n_tokens, 1)
                if cfg.target_approx_kl > 0 and mb_kl > cfg.target_approx_kl:
                    stopped = 1.0
                    break
            if stopped:
                break
        stats = metrics.means(self.global_sum, tokens_total)
        stats.update({k: v / max(updates, 1) for k, v in extra.means(self.global_sum, 1.0).items()})
        stats["optimizer_steps"] = float(updates)
        stats["early_stopped"] = stopped
        stats["update_tokens"] = tokens_total
        return stats

    def step_indices(self) -> list[int]:
        """Prompt indices of this step's rollout rows (GRPO repeats each one G times)."""
        return self.schedule.indices(self.step)

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        idx = self.step_indices()
        records = [self.prompts[i] for i in idx]
        t0 = time.perf_counter()
        rollout = self.rollout(idx)
        t1 = time.perf_counter()
        raw, scores, part_means = self.score(records, rollout)
        t2 = time.perf_counter()
        exp, stats = self.make_experience(rollout, scores)
        t3 = time.perf_counter()
        stats.update(part_means)
        stats.update(self.update(exp))
        t4 = time.perf_counter()
        lengths = rollout.lengths.float()
        all_raw, all_len = self.gather(raw), self.gather(lengths.cpu())
        gen_tokens = float(all_len.sum())
        stats.update(
            score_mean=float(all_raw.mean()),
            score_std=float(all_raw.std()) if all_raw.numel() > 1 else 0.0,
            response_length=float(all_len.mean()),
            no_eos_share=float(self.gather(rollout.truncated.float().cpu()).mean()),
            time_generate=t1 - t0,
            time_score=t2 - t1,
            time_forward=t3 - t2,
            time_update=t4 - t3,
            rollout_tokens_per_s=gen_tokens / max(t1 - t0, 1e-9),
            update_tokens_per_s=self.global_sum(
                float(exp.attention_mask.sum()) * stats["optimizer_steps"]
                / max(-(-exp.input_ids.shape[0] // (cfg.batch_size * cfg.grad_accum)), 1)
            ) / max(t4 - t3, 1e-9),
        )  # fmt: skip
        stats.pop("update_tokens", None)
        self.write_samples(records, rollout, raw, stats)
        self.step += 1
        return stats

    def write_samples(self, records, rollout: Rollout, raw: torch.Tensor, stats) -> None:
        if self.samples is None or self.step % self.cfg.sample_every:
            return
        for rec, text, r, trunc in list(
            zip(records, rollout.texts, raw.tolist(), rollout.truncated.tolist(), strict=True)
        )[: self.cfg.n_samples_logged]:
            self.samples.write(
                {
                    "step": self.step + 1,
                    "prompt": [m.as_dict() for m in rec.prompt],
                    "response": text,
                    "score": r,
                    "truncated": bool(trunc),
                }
            )

    def after_step(self, step: int, stats: dict[str, float]) -> None:
        """Warn (once each) at the usual signs of reward hacking."""
        if not self.accelerator.is_main_process:
            return
        kl = stats.get("kl", 0.0)
        if kl > self.cfg.kl_warn and "kl" not in self._warned:
            self._warned.add("kl")
            log.warning(
                "step %d: KL to the reference is %.2f nats (> kl_warn=%.2f); the policy is "
                "drifting far from the reference - a sign of reward hacking. Raise kl_coef, "
                "lower the learning rate, or check samples.jsonl",
                step, kl, self.cfg.kl_warn,
            )  # fmt: skip
        if stats.get("no_eos_share", 0.0) > 0.5 and "length" not in self._warned:
            self._warned.add("length")
            log.warning(
                "step %d: %.0f%% of responses hit max_new_tokens=%d without EOS (mean length "
                "%.1f); long responses may be exploiting the reward. Consider "
                "missing_eos_penalty or check samples.jsonl",
                step, 100 * stats["no_eos_share"], self.cfg.max_new_tokens,
                stats.get("response_length", 0.0),
            )  # fmt: skip

    # -- evaluation ---------------------------------------------------------------
    def has_eval(self) -> bool:
        return bool(self.eval_prompts)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the eval prompts, scored by the reward source."""
        if not self.eval_prompts:
            return {}
        acc = self.accelerator
        mine = self.eval_prompts[acc.process_index :: acc.num_processes]
        greedy = Generator(
            self.tokenizer,
            self.generator.template,
            SamplingParams(max_new_tokens=self.cfg.max_new_tokens),
            self.cfg.max_prompt_length,
            backend=self.cfg.generation_backend,
        )
        policy = self.policy_module()
        scores, lengths, trunc = [], [], []
        bs = self.cfg.eval_batch_size
        for s in range(0, len(mine), bs):
            recs = mine[s : s + bs]
            ro = greedy.generate(policy, [r.prompt for r in recs])
            scores.append(
                self.reward.score([r.prompt for r in recs], ro.texts, [r.extra for r in recs])
            )
            lengths.append(ro.lengths.float().cpu())
            trunc.append(ro.truncated.float().cpu())
        n = self.global_sum(len(mine))
        cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0)  # noqa: E731
        return {
            "eval_score": self.global_sum(float(cat(scores).sum())) / max(n, 1),
            "eval_response_length": self.global_sum(float(cat(lengths).sum())) / max(n, 1),
            "eval_no_eos_share": self.global_sum(float(cat(trunc).sum())) / max(n, 1),
        }


def load_policy(
    cfg: Any, tokenizer: Any, need_reference: bool = True
) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The policy to train (with LoRA adapters when ``lora_r > 0``) and its frozen
    reference: ``ref_model`` or the starting weights; None when it is not needed or when
    the LoRA policy with adapters disabled serves as the reference (no second copy)."""
    policy = load_causal_lm(
        cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, lora=lora_spec(cfg)
    )
    if policy.generation_config is not None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    reference = None
    if need_reference and (cfg.ref_model or not is_peft(policy)):
        reference = load_causal_lm(
            cfg.ref_model or cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    return policy, reference


def global_whiten(
    run: TrainingRun, x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """:func:`rlhfkit.algorithms.ppo.masked_whiten` over the rollout batch of *all*
    processes (the statistics are summed across them)."""
    n = run.global_sum(float(mask.sum()))
    mean = run.global_sum(float((x * mask).sum())) / max(n, 1.0)
    var = run.global_sum(float((((x - mean) ** 2) * mask).sum())) / max(n - 1.0, 1.0)
    return (x - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=x.dtype)) * mask


def reference_logps(reference: Any, policy_wrapper: ActorCritic, exp: Experience, run: OnlineRun):
    """Reference log-probs: a frozen model, or the LoRA policy with adapters disabled."""
    if reference is not None:
        return run.token_logps(reference, exp, frozen=True)[0]
    with policy_wrapper.policy.disable_adapter():
        return run.token_logps(policy_wrapper.policy, exp)[0]


def sequence_kl(kl: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL (sum over response tokens)."""
    return (kl * mask).sum(dim=1)
