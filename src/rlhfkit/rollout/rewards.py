"""Reward sources: one protocol that PPO, GRPO and rejection sampling score through.

A source maps a batch of (prompt conversation, completion, record fields) to one
float per sample. Kinds:

* :class:`ModelReward` - a trained reward model folder;
* :class:`FunctionReward` - a Python function, ``module:function`` or ``path/file.py:function``;
* :class:`WeightedSum` - several sources, each normalised by the mean / std it had on
  a calibration set, then weighted;
* :class:`SafetyGated` - Llama 2's rule for a helpfulness and a safety model.

Reward functions are called as ``fn(prompts=..., completions=..., **fields)``:
``prompts`` is the text of each prompt's last user message, ``conversations`` the
whole prompt as lists of ``{"role", "content"}``, and every other field of the prompt
records arrives as a list under its own name (``answer``, ``kind``, ...). They
return a list of numbers (or a 1-D tensor), one per completion.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from rlhfkit.data.types import Conversation
from rlhfkit.errors import ConfigError


class RewardSource(Protocol):
    name: str

    def score(
        self,
        prompts: Sequence[Conversation],
        completions: Sequence[str],
        fields: Sequence[dict[str, Any]],
    ) -> torch.Tensor:
        """One reward per completion, shape ``(N,)``, float32 on the CPU."""
        ...


def _fields(n: int, fields: Sequence[dict[str, Any]] | None) -> Sequence[dict[str, Any]]:
    return fields if fields is not None else [{}] * n


class ModelReward:
    """A trained reward model (``rlhfkit rm`` output or any 1-label sequence classifier)."""

    def __init__(
        self, model: Any, name: str = "rm", batch_size: int = 64, device: Any = None
    ) -> None:
        from rlhfkit.models.reward import RewardModel

        if isinstance(model, RewardModel):
            self.rm = model
        else:
            self.rm = RewardModel.from_pretrained(str(model), device=device)
        self.name = name
        self.batch_size = batch_size

    def score(self, prompts, completions, fields=None) -> torch.Tensor:
        return self.rm.score(prompts, completions, self.batch_size)


def _split_arguments(spec: str) -> tuple[str, dict[str, Any]]:
    """``"mod:fn(a=1, b='x')"`` -> ``("mod:fn", {"a": 1, "b": "x"})``; literals only."""
    spec = spec.strip()
    if not spec.endswith(")") or "(" not in spec:
        return spec, {}
    head, _, _ = spec.partition("(")
    try:
        call = ast.parse("f" + spec[len(head) :], mode="eval").body
        assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
        assert not call.args
        names = [kw.arg for kw in call.keywords]
        assert None not in names and len(set(names)) == len(names)
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"reward function {spec!r}: arguments must be keyword=literal pairs, "
            "e.g. module:function(max_length=64, pattern='x')"
        ) from e
    return head, kwargs  # type: ignore[return-value]


def load_function(spec: str) -> Callable[..., Any]:
    """``package.module:function`` or ``path/to/file.py:function``, optionally with
    keyword arguments bound: ``module:function(max_length=64)``."""
    spec, bound = _split_arguments(spec)
    fn = _load_function(spec)
    if not bound:
        return fn
    named = {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    }
    unknown = [k for k in bound if k not in named]  # **fields would swallow a typo
    if unknown:
        raise ConfigError(f"reward function {spec!r} has no argument {unknown[0]!r}")
    bound_fn = functools.partial(fn, **bound)
    bound_fn.__name__ = getattr(fn, "__name__", "function")  # type: ignore[attr-defined]
    return bound_fn


def _load_function(spec: str) -> Callable[..., Any]:
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ConfigError(
            f"reward function {spec!r}: expected module:function or path/file.py:function"
        )
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"reward function {spec!r}: no such file {path}")
        mod_spec = importlib.util.spec_from_file_location(f"rlhfkit_reward_{path.stem}", path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise ConfigError(f"reward function {spec!r}: cannot import {target!r} ({e})") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r}: {target!r} has no function {name!r}")
    return fn


class FunctionReward:
    """A plain Python reward function (a length rule, a math checker, a regex, ...)."""

    def __init__(self, fn: Callable[..., Any] | str, name: str | None = None) -> None:
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.name = name or getattr(self.fn, "__name__", "function")
        params = inspect.signature(self.fn).parameters.values()
        self._takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self._accepts = {p.name for p in params}

    def score(self, prompts, completions, fields=None) -> torch.Tensor:
        fields = _fields(len(completions), fields)
        kwargs: dict[str, Any] = {
            "prompts": [_last_user(p) for p in prompts],
            "completions": list(completions),
            "conversations": [[m.as_dict() for m in p] for p in prompts],
        }
        for key in sorted({k for f in fields for k in f}):
            if key not in kwargs:
                kwargs[key] = [f.get(key) for f in fields]
        if not self._takes_any:
            kwargs = {k: v for k, v in kwargs.items() if k in self._accepts}
        for key in getattr(self.fn, "keywords", {}):  # arguments bound in the spec win
            kwargs.pop(key, None)
        values = self.fn(**kwargs)
        out = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
        if out.shape != (len(completions),):
            raise ConfigError(
                f"reward function {self.name!r} returned {tuple(out.shape)} values for {len(completions)} completions"
            )
        return out


def _last_user(prompt: Conversation) -> str:
    for m in reversed(prompt):
        if m.role == "user":
            return m.content
    return prompt[-1].content if prompt else ""


class Normalizer:
    """Mean / std of a source on a calibration set, to put sources on one scale."""

    def __init__(self) -> None:
        self.mean, self.std = 0.0, 1.0
        self.fitted = False

    def fit(self, values: torch.Tensor) -> None:
        self.mean = float(values.mean())
        self.std = float(values.std()) if values.numel() > 1 else 1.0
        self.std = self.std if self.std > 1e-8 else 1.0
        self.fitted = True

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.std, self.fitted = state["mean"], state["std"], state["fitted"]


class WeightedSum:
    """``sum_i w_i * (r_i - mean_i) / std_i`` with each source's mean / std from
    :meth:`calibrate` (identity until calibrated); with ``normalize=False`` the plain
    ``sum_i w_i * r_i`` (GRPO's weighted reward functions, as TRL sums them)."""

    def __init__(
        self,
        sources: Sequence[RewardSource],
        weights: Sequence[float] | None = None,
        name: str = "weighted_sum",
        normalize: bool = True,
    ) -> None:
        if not sources:
            raise ConfigError("a weighted sum needs at least one reward source")
        self.sources = list(sources)
        self.weights = list(weights) if weights is not None else [1.0] * len(sources)
        if len(self.weights) != len(self.sources):
            raise ConfigError(f"{len(self.sources)} reward sources but {len(self.weights)} weights")
        self.norms = [Normalizer() for _ in self.sources]
        self.name = name
        self.normalize = normalize

    def state_dict(self) -> list[dict[str, Any]]:
        return [n.state_dict() for n in self.norms]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for norm, st in zip(self.norms, state, strict=True):
            norm.load_state_dict(st)

    def calibrate(self, prompts, completions, fields=None) -> None:
        if not self.normalize:
            return
        for src, norm in zip(self.sources, self.norms, strict=True):
            norm.fit(src.score(prompts, completions, fields))

    def components(self, prompts, completions, fields=None) -> dict[str, torch.Tensor]:
        """Each source's (normalised) reward, by name."""
        out = {}
        for i, (src, norm) in enumerate(zip(self.sources, self.norms, strict=True)):
            r = src.score(prompts, completions, fields)
            name = src.name if src.name not in out else f"{src.name}_{i}"
            out[name] = norm(r) if self.normalize else r
        return out

    def score_with_parts(
        self, prompts, completions, fields=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The combined reward and each source's part (for logging them separately)."""
        parts = self.components(prompts, completions, fields)
        total = sum(w * v for w, v in zip(self.weights, parts.values(), strict=True))
        return total, parts  # type: ignore[return-value]

    def score(self, prompts, completions, fields=None) -> torch.Tensor:
        return self.score_with_parts(prompts, completions, fields)[0]


class SafetyGated:
    """Llama 2's combination of a helpfulness and a safety reward model (Touvron et al. 2023, sec. 3.2.2):

    ``R_c = R_s if is_safety(prompt) or sigmoid(R_s) < threshold else R_h``, then whitened.

    ``R_h`` and ``R_s`` are the models' raw (logit) outputs; the paper thresholds the
    sigmoid of the safety score at 0.15 and whitens ``logit(sigmoid(R_c)) = R_c``.
    A prompt is flagged unsafe by its record field ``unsafe_field`` (true / false).
    Whitening uses the mean / std from :meth:`calibrate`, else those of the batch.
    """

    def __init__(
        self,
        helpfulness: RewardSource,
        safety: RewardSource,
        threshold: float = 0.15,
        unsafe_field: str = "unsafe",
        whiten: bool = True,
        name: str = "llama2",
    ) -> None:
        if not 0 < threshold < 1:
            raise ConfigError(f"key 'safety_threshold': expected 0 < x < 1, got {threshold}")
        self.helpfulness, self.safety = helpfulness, safety
        self.logit_threshold = math.log(threshold / (1 - threshold))
        self.unsafe_field = unsafe_field
        self.whiten = whiten
        self.norm = Normalizer()
        self.name = name

    def combined(self, prompts, completions, fields=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated reward before whitening, and which samples used the safety score."""
        r, parts = self._gated(prompts, completions, fields)
        return r, parts["safety_gate"].bool()

    def _gated(self, prompts, completions, fields=None) -> tuple[torch.Tensor, dict]:
        fields = _fields(len(completions), fields)
        h = self.helpfulness.score(prompts, completions, fields)
        s = self.safety.score(prompts, completions, fields)
        flagged = torch.tensor([bool(f.get(self.unsafe_field, False)) for f in fields])
        use_safety = flagged | (s < self.logit_threshold)
        parts = {"helpfulness": h, "safety": s, "safety_gate": use_safety.float()}
        return torch.where(use_safety, s, h), parts

    def calibrate(self, prompts, completions, fields=None) -> None:
        self.norm.fit(self.combined(prompts, completions, fields)[0])

    def state_dict(self) -> list[dict[str, Any]]:
        return [self.norm.state_dict()]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        self.norm.load_state_dict(state[0])

    def score_with_parts(
        self, prompts, completions, fields=None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The combined reward, and the raw helpfulness / safety scores and the share of
        samples judged on safety (for logging them separately)."""
        r, parts = self._gated(prompts, completions, fields)
        if not self.whiten:
            return r, parts
        if self.norm.fitted:
            return self.norm(r), parts
        if r.numel() > 1 and float(r.std()) > 1e-8:
            return (r - r.mean()) / r.std(), parts
        return r, parts

    def score(self, prompts, completions, fields=None) -> torch.Tensor:
        return self.score_with_parts(prompts, completions, fields)[0]


def build_reward_source(
    reward_models: Sequence[str] = (),
    reward_fns: Sequence[str] = (),
    combine: str = "sum",
    weights: Sequence[float] | None = None,
    safety_threshold: float = 0.15,
    unsafe_field: str = "unsafe",
    device: Any = None,
    normalize: bool = True,
) -> RewardSource:
    """The reward of an online stage from its config keys: one source as it is; several
    as a calibrated weighted sum (``combine="sum"``) or Llama 2's helpfulness / safety
    rule (``combine="llama2"``, two reward models: helpfulness first; reward functions
    are then added to the gated score, weighted). ``normalize=False``
    sums the sources' raw values (weighted) instead of calibrating each."""
    sources: list[RewardSource] = [
        ModelReward(path, name=f"rm{i}" if len(reward_models) > 1 else "rm", device=device)
        for i, path in enumerate(reward_models)
    ]
    sources += [FunctionReward(spec) for spec in reward_fns]
    if not sources:
        raise ConfigError("key 'reward_model': no reward model or reward function given")
    if combine == "llama2":
        if len(reward_models) != 2:
            raise ConfigError("key 'reward_combine': llama2 needs two reward models")
        gated = SafetyGated(sources[0], sources[1], safety_threshold, unsafe_field)
        if not reward_fns:
            return gated
        # reward functions (a checker the RMs lack, a length rule) add to the gated score
        return WeightedSum([gated, *sources[2:]], weights, normalize=normalize)
    if len(sources) == 1 and (weights is None or list(weights) == [1.0]):
        return sources[0]
    return WeightedSum(sources, weights, normalize=normalize)


def reward_from_config(
    cfg: Any, device: Any = None, reward_models: Sequence[str] | None = None
) -> RewardSource:
    """:func:`build_reward_source` from a config's reward keys
    (:class:`rlhfkit.config.RewardKeys`); ``reward_models`` replaces
    ``cfg.reward_model`` (a refreshed reward model)."""
    models = cfg.reward_model if reward_models is None else reward_models
    return build_reward_source(
        models, cfg.reward_fn, cfg.reward_combine, cfg.reward_weights, cfg.safety_threshold,
        cfg.unsafe_field, device=device, normalize=cfg.reward_normalize,
    )  # fmt: skip
