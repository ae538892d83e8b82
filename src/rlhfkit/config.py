"""Stage configs: dataclasses loaded from YAML, CLI options and ``--set key=value``.

Precedence, lowest first: the dataclass defaults, the YAML file, the CLI's
named options, then ``--set`` overrides. Unknown keys and bad values raise a
:class:`ConfigError` naming the key. Keys are flat (``learning_rate``, not
``train.learning_rate``), as in TRL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import difflib
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rlhfkit.errors import ConfigError, InputNotFoundError

T = TypeVar("T")

SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass
class TrainConfig:
    """Keys every training stage shares; they drive :mod:`rlhfkit.training.loop`."""

    out: str = ""
    learning_rate: float = 2e-5
    batch_size: int = 8  # per device, per micro-batch
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # > 0 overrides warmup_ratio
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    precision: str = "fp32"
    seed: int = 42
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    eval_on_start: bool = False  # also evaluate the initial model (logged at step 0)
    best_metric: str = ""  # e.g. eval_accuracy: final/ keeps the best evaluated model
    best_mode: str = "max"  # max | min
    save_every: int = 0  # 0: no intermediate checkpoints
    keep_checkpoints: int = 2
    tensorboard: bool = False
    cpu: bool = False  # force the CPU even when a GPU is present
    tune_malloc: bool = True  # glibc keeps freed activations' pages (training/allocator.py)

    def validate(self) -> None:
        positive = ("batch_size", "grad_accum", "log_every", "keep_checkpoints")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(
                    f"key '{key}': expected an integer >= 1, got {getattr(self, key)}"
                )
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(
                f"key 'learning_rate': expected a number > 0, got {self.learning_rate}"
            )
        if self.max_steps <= 0 and not 0 < self.epochs < math.inf:
            raise ConfigError("key 'epochs': expected a number > 0 (or set 'max_steps' > 0)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"key 'warmup_ratio': expected 0 <= x < 1, got {self.warmup_ratio}")
        _choice(self, "scheduler", SCHEDULERS)
        _choice(self, "precision", PRECISIONS)
        _choice(self, "best_mode", ("max", "min"))
        if not self.out:
            raise ConfigError("key 'out': expected the run folder (--out DIR), got nothing")


def _choice(cfg: Any, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, key)
    if value not in choices:
        raise ConfigError(f"key '{key}': expected one of {', '.join(choices)}, got {value!r}")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-3", "packing=true"]`` -> ``{"lr": 0.001, "packing": True}`` (YAML scalars)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            if raw.lstrip().startswith("["):
                raise ConfigError(f"--set {pair!r}: value is not valid YAML ({e})") from e
            out[key.strip()] = raw  # not YAML (a Jinja template, say): the text itself
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {path}: expected a mapping of key: value, got {type(data).__name__}"
        )
    return data


def build_config(
    cls: type[T],
    yaml_path: str | Path | None = None,
    cli: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> T:
    """Merge defaults < YAML < CLI options (None = not given) < ``--set``, check, validate."""
    values: dict[str, Any] = {}
    if yaml_path:
        values.update(read_yaml(yaml_path))
    values.update({k: v for k, v in (cli or {}).items() if v is not None})
    values.update(parse_overrides(overrides))
    cfg = from_dict(cls, values)
    validate = getattr(cfg, "validate", None)
    if validate:
        validate()
    return cfg


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown key '{key}' for {cls.__name__}{hint}")
        kwargs[key] = coerce(key, value, hints[key])
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's type, converting the safe cases (int -> float,
    "1e-3" -> 0.001, a comma-separated string -> list)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is dict:
        _, item = typing.get_args(hint) or (str, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"key '{key}': expected a mapping, got {value!r}")
        return {str(k): coerce(f"{key}.{k}", v, item) for k, v in value.items()}
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"key '{key}': expected a list, got {value!r}")
        return [coerce(key, v, item) for v in value]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"key '{key}': expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"key '{key}': expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None or math.isnan(number):
            raise ConfigError(f"key '{key}': expected a number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, datetime.date):  # YAML reads 2024-01-01 as a date
            return value.isoformat()
        raise ConfigError(f"key '{key}': expected a string, got {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)  # type: ignore[arg-type]
    return value


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


@dataclasses.dataclass
class ModelKeys:
    """Keys of stages that load a causal LM and tokenize conversations."""

    model: str = ""
    dtype: str = "float32"
    trust_remote_code: bool = False
    template: str = "auto"  # auto | default | plain | a Jinja string | a file
    max_length: int = 1024
    lora_r: int = 0  # > 0: train LoRA adapters (peft) instead of all weights
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = dataclasses.field(default_factory=lambda: ["all-linear"])

    def validate_model(self) -> None:
        if not self.model:
            raise ConfigError(
                "key 'model': expected a model folder or hub name (--model), got nothing"
            )
        if self.max_length < 2:
            raise ConfigError(f"key 'max_length': expected an integer >= 2, got {self.max_length}")
        if self.lora_r < 0:
            raise ConfigError(f"key 'lora_r': expected an integer >= 0, got {self.lora_r}")


@dataclasses.dataclass
class DataKeys:
    """Keys of stages that train on a data file with a held-out split."""

    data: str = ""
    eval_data: str | None = None
    eval_fraction: float = 0.05  # held out from ``data`` when ``eval_data`` is not given
    split: str = "train"  # split of a Hugging Face dataset
    skip_invalid: bool = False

    def validate_data(self) -> None:
        if not self.data:
            raise ConfigError("key 'data': expected a data file or dataset (--data), got nothing")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError(f"key 'eval_fraction': expected 0 <= x < 1, got {self.eval_fraction}")


@dataclasses.dataclass
class SFTConfig(DataKeys, ModelKeys, TrainConfig):
    """``rlhfkit sft``: supervised fine-tuning on demonstrations, loss on completions only."""

    packing: bool = False

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_data()


LLAMA2_MARGINS = {
    "significantly_better": 1.0,
    "better": 2 / 3,
    "slightly_better": 1 / 3,
    "negligibly_better": 0.0,
}
RM_LOSSES = ("pairwise", "margin", "hinge")


@dataclasses.dataclass
class RMConfig(DataKeys, ModelKeys, TrainConfig):
    """``rlhfkit rm``: a scalar reward model on preference or ranking records."""

    learning_rate: float = 1e-5
    eval_fraction: float = 0.1
    loss: str = "pairwise"  # pairwise | margin | hinge
    margin_table: dict[str, float] = dataclasses.field(default_factory=lambda: dict(LLAMA2_MARGINS))
    hinge_margin: float = 1.0
    center_coef: float = 0.0  # c * mean((r_c + r_r)^2); 0 disables it
    dimension: str | None = None  # train only on records tagged with this dimension
    best_metric: str = "eval_accuracy"

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_data()
        _choice(self, "loss", RM_LOSSES)
        from rlhfkit.data.types import DIMENSIONS, MARGIN_LABELS

        missing = [lab for lab in MARGIN_LABELS if lab not in self.margin_table]
        if missing:
            raise ConfigError(
                f"key 'margin_table': expected a margin for every label, missing {', '.join(missing)}"
            )
        if self.dimension is not None:
            _choice(self, "dimension", DIMENSIONS)
        if self.center_coef < 0:
            raise ConfigError(f"key 'center_coef': expected a number >= 0, got {self.center_coef}")


DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "cpl")


@dataclasses.dataclass
class DPOConfig(DataKeys, ModelKeys, TrainConfig):
    """``rlhfkit dpo``: preference optimisation without a reward model (DPO family, CPL)."""

    learning_rate: float = 1e-6
    loss: str = "sigmoid"  # sigmoid | robust | ipo | hinge | cpl
    beta: float = 0.1  # DPO's KL strength; CPL's temperature alpha
    label_smoothing: float = 0.0  # eps of conservative (sigmoid) and robust DPO
    ref_model: str | None = None  # default: the starting model (frozen)
    precompute_ref: bool = False  # reference log-probs in one pass, then no reference in memory
    sft_weight: float = 0.0  # adds sft_weight * NLL per chosen token
    cpl_lambda: float = 0.5  # CPL's conservative weight on the rejected term (1 = plain CPL)
    cpl_bc_weight: float = 0.0  # CPL-BC: behaviour cloning on the chosen responses

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_data()
        _choice(self, "loss", DPO_LOSS_TYPES)
        if not 0 < self.beta < math.inf:
            raise ConfigError(f"key 'beta': expected a number > 0, got {self.beta}")
        limit = 0.5 if self.loss == "robust" else 1.0
        if not 0 <= self.label_smoothing < limit:
            raise ConfigError(
                f"key 'label_smoothing': expected 0 <= eps < {limit}, got {self.label_smoothing}"
            )
        for key in ("sft_weight", "cpl_bc_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"key '{key}': expected a number >= 0, got {getattr(self, key)}")
        if not 0 < self.cpl_lambda <= 1:
            raise ConfigError(f"key 'cpl_lambda': expected 0 < x <= 1, got {self.cpl_lambda}")


REWARD_COMBINE = ("sum", "llama2")
VALUE_MODELS = ("auto", "reward", "policy", "shared")


@dataclasses.dataclass
class RewardKeys:
    """The reward every stage that scores samples reads (online and self-training stages,
    best-of-n): reward models, reward functions and how they combine. Built by
    :func:`rlhfkit.rollout.rewards.reward_from_config`."""

    reward_model: list[str] = dataclasses.field(default_factory=list)  # one or more RM folders
    reward_fn: list[str] = dataclasses.field(
        default_factory=list
    )  # module:function or file.py:function
    reward_combine: str = "sum"  # sum (normalised, weighted) | llama2 (helpfulness, safety RMs)
    reward_weights: list[float] | None = None
    safety_threshold: float = 0.15  # llama2: sigmoid(safety) below this uses the safety score
    unsafe_field: str = "unsafe"  # llama2: prompt record field that flags a prompt unsafe
    # several sources: standardise each on the first batch before the weighted sum
    reward_normalize: bool = True

    def validate_reward(self, required: bool = True) -> None:
        if required and not self.reward_model and not self.reward_fn:
            raise ConfigError(
                "key 'reward_model': expected a reward model (--reward-model) or a reward "
                "function (--reward-fn)"
            )
        _choice(self, "reward_combine", REWARD_COMBINE)
        if self.reward_combine == "llama2" and len(self.reward_model) != 2:
            raise ConfigError(
                "key 'reward_combine': llama2 needs exactly two reward models "
                "(helpfulness first, safety second)"
            )
        n_sources = len(self.reward_model) + len(self.reward_fn)
        if self.reward_combine == "llama2":  # the gated pair counts as one source
            n_sources -= 1
        if self.reward_weights is not None and len(self.reward_weights) != n_sources:
            raise ConfigError(
                f"key 'reward_weights': {len(self.reward_weights)} weights for {n_sources} reward sources"
            )
        if not 0 < self.safety_threshold < 1:
            raise ConfigError(
                f"key 'safety_threshold': expected 0 < x < 1, got {self.safety_threshold}"
            )


@dataclasses.dataclass
class PromptSamplingKeys(RewardKeys):
    """Prompts, how responses are sampled for them, and the reward: what online stages
    (:class:`OnlineKeys`) and sampling stages (:class:`SamplingKeys`) share."""

    prompts: str = ""  # prompt records (JSONL / JSON / Parquet / dataset)
    split: str = "train"
    skip_invalid: bool = False
    max_prompt_length: int = 256
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    missing_eos_penalty: float = 0.0  # subtracted from the score of responses without EOS


@dataclasses.dataclass
class OnlineKeys(PromptSamplingKeys):
    """Prompts, sampling and rewards: what every online stage (PPO, GRPO, ...) shares.
    Defaults and their sources: docs/ppo.md."""

    eval_prompts: str | None = None  # evaluated every eval_every steps (greedy)
    ref_model: str | None = None  # default: the starting model (frozen)
    rollout_batch_size: int = 64  # prompts sampled per step (per process)
    generation_batch_size: int = 0  # prompts per generate call; 0: rollout_batch_size
    generation_backend: str = "fast"  # fast (rlhfkit's loop, generate's tokens) | hf (generate)
    GENERATION_BACKENDS: typing.ClassVar[tuple[str, ...]] = ("fast", "hf")
    kl_coef: float = 0.05
    kl_estimator: str = "k1"  # k1 | k2 | k3
    reward_norm: bool = False  # scores normalised by running mean / std
    reward_clip: float = 0.0  # > 0: scores clipped to [-x, x] (after normalisation)
    ppo_epochs: int = 1  # passes over each rollout batch
    target_approx_kl: float = 0.0  # > 0: stop a step's epochs once approx KL exceeds it
    sample_every: int = 10  # write samples.jsonl rows every N steps
    n_samples_logged: int = 8
    kl_warn: float = 10.0  # warn when mean sequence KL to the reference passes this (nats)
    eval_batch_size: int = 64

    def validate_online(self) -> None:
        _check_prompts_and_sampling(
            self,
            positive=("rollout_batch_size", "max_prompt_length", "max_new_tokens", "ppo_epochs",
                      "sample_every", "eval_batch_size"),
            non_negative=("kl_coef", "missing_eos_penalty", "reward_clip", "target_approx_kl",
                          "top_k", "generation_batch_size"),
        )  # fmt: skip
        _choice(self, "kl_estimator", ("k1", "k2", "k3"))
        _choice(self, "generation_backend", self.GENERATION_BACKENDS)


def _check_prompts_and_sampling(
    cfg: Any, positive: Sequence[str], non_negative: Sequence[str], reward_required: bool = True
) -> None:
    """What every stage that samples from prompts and scores the samples checks: the
    prompts and reward are given, ``positive`` keys are integers >= 1, ``non_negative``
    keys are >= 0, the temperature and top-p are in range."""
    if not cfg.prompts:
        raise ConfigError("key 'prompts': expected a prompt file or dataset (--prompts)")
    cfg.validate_reward(reward_required)
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"key '{key}': expected an integer >= 1, got {getattr(cfg, key)}")
    for key in non_negative:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"key '{key}': expected a number >= 0, got {getattr(cfg, key)}")
    if not cfg.temperature > 0:
        raise ConfigError(f"key 'temperature': expected a number > 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"key 'top_p': expected 0 < x <= 1, got {cfg.top_p}")


def _check_clip(cfg: Any, low_key: str, high_key: str) -> None:
    low, high = getattr(cfg, low_key), getattr(cfg, high_key)
    if not 0 < low < 1:
        raise ConfigError(f"key '{low_key}': expected 0 < x < 1, got {low}")
    if high is not None and not high > 0:
        raise ConfigError(f"key '{high_key}': expected x > 0, got {high}")


@dataclasses.dataclass
class PPOConfig(OnlineKeys, ModelKeys, TrainConfig):
    """``rlhfkit ppo``: the SFT policy optimised against a reward with a KL penalty
    (InstructGPT). ``max_steps`` counts PPO steps (rollout + update)."""

    learning_rate: float = 1e-6
    scheduler: str = "linear"
    log_every: int = 1
    ppo_epochs: int = 4
    cliprange: float = 0.2
    cliprange_high: float | None = None  # asymmetric upper clip (DAPO); default = cliprange
    value_model: str = "auto"  # auto (the RM, else policy) | reward | policy | shared | a folder
    value_learning_rate: float | None = None  # default: learning_rate
    cliprange_value: float | None = 0.2  # None: unclipped value loss
    vf_coef: float = 0.1
    entropy_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    ptx_data: str | None = None  # SFT records for PPO-ptx
    ptx_coef: float = 0.0  # weight of the pretraining (SFT) NLL in the PPO loss

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_online()
        _check_clip(self, "cliprange", "cliprange_high")
        if self.value_model in ("reward",) and not self.reward_model:
            raise ConfigError("key 'value_model': 'reward' needs --reward-model")
        for key in ("gamma", "lam"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"key '{key}': expected 0 <= x <= 1, got {getattr(self, key)}")
        for key in ("vf_coef", "entropy_coef", "ptx_coef"):
            if getattr(self, key) < 0:
                raise ConfigError(f"key '{key}': expected a number >= 0, got {getattr(self, key)}")
        if self.ptx_coef > 0 and not self.ptx_data:
            raise ConfigError("key 'ptx_data': ptx_coef > 0 needs SFT records for the ptx loss")
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon < 1):
            raise ConfigError("keys 'kl_target' / 'kl_horizon': expected > 0 with adaptive_kl")
        if self.value_learning_rate is not None and self.value_learning_rate <= 0:
            raise ConfigError(
                f"key 'value_learning_rate': expected a number > 0, got {self.value_learning_rate}"
            )


GRPO_SCALE_REWARDS = ("group", "batch", "none")
GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
GRPO_ADVANTAGES = ("grpo", "rloo")


@dataclasses.dataclass
class GRPOConfig(OnlineKeys, ModelKeys, TrainConfig):
    """``rlhfkit grpo`` / ``rlhfkit rloo``: ``num_generations`` samples per prompt, their
    advantages relative to the group, no value model (Shao et al. 2024). ``max_steps``
    counts steps (rollout + update); ``rollout_batch_size`` counts prompts."""

    learning_rate: float = 1e-6
    scheduler: str = "linear"
    log_every: int = 1
    rollout_batch_size: int = 16  # prompts per step; x num_generations responses
    num_generations: int = 8  # G
    advantage_estimator: str = "grpo"  # grpo (group-normalised) | rloo (leave-one-out)
    scale_rewards: str = "group"  # group | batch | none (Dr. GRPO)
    loss_type: str = "grpo"  # grpo | dapo | dr_grpo
    beta: float = 0.04  # k3 KL to the reference in the loss; 0: no reference is loaded
    epsilon_low: float = 0.2
    epsilon_high: float | None = None  # DAPO's clip-higher (0.28); default = epsilon_low
    reward_normalize: bool = False  # several reward sources: weighted sum of raw values

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_online()
        _check_clip(self, "epsilon_low", "epsilon_high")
        _choice(self, "advantage_estimator", GRPO_ADVANTAGES)
        _choice(self, "scale_rewards", GRPO_SCALE_REWARDS)
        _choice(self, "loss_type", GRPO_LOSS_TYPES)
        if self.num_generations < 2:
            raise ConfigError(
                f"key 'num_generations': expected an integer >= 2 (a group needs several "
                f"samples to compare), got {self.num_generations}"
            )
        if self.beta < 0:
            raise ConfigError(f"key 'beta': expected a number >= 0, got {self.beta}")


SELECTION_RULES = ("best", "top_fraction", "all")


@dataclasses.dataclass
class SamplingKeys(PromptSamplingKeys):
    """Prompts, K samples per prompt and the reward that ranks them: what rejection
    sampling, best-of-n, ReST and HIR share. Key names and defaults as in
    :class:`OnlineKeys`; docs/selftrain.md."""

    samples_per_prompt: int = 8  # K
    generation_batch_size: int = 64  # sequences per generate call
    score_batch_size: int = 64  # samples per reward call

    def validate_sampling(self, reward_required: bool = True) -> None:
        _check_prompts_and_sampling(
            self,
            positive=("samples_per_prompt", "max_prompt_length", "max_new_tokens",
                      "generation_batch_size", "score_batch_size"),
            non_negative=("top_k", "missing_eos_penalty"),
            reward_required=reward_required,
        )  # fmt: skip


@dataclasses.dataclass
class SelfTrainKeys(SamplingKeys, ModelKeys, TrainConfig):
    """A self-training stage: rounds of sampling from the policy, then SFT on what is
    kept. The TrainConfig keys (learning_rate, batch_size, epochs, ...) drive each
    round's fine-tuning, run by the SFT stage."""

    rounds: int = 1
    packing: bool = False  # the fine-tuning rounds' SFT packing

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_sampling()
        if self.rounds < 1:
            raise ConfigError(f"key 'rounds': expected an integer >= 1, got {self.rounds}")


@dataclasses.dataclass
class RejectionSamplingConfig(SelfTrainKeys):
    """``rlhfkit rejection-sampling``: K samples per prompt, the best by reward kept, SFT
    on them, over ``rounds`` (Llama 2's RLHF-V1 ... V4), optionally refreshing the
    reward model between rounds and finishing with PPO (RLHF-V5)."""

    keep: str = "best"  # best | top_fraction | all
    keep_fraction: float = 0.25  # top_fraction: the best ceil(x * K) of each prompt
    min_reward: float | None = None  # also drop kept samples scoring below this
    accumulate: bool = False  # each round also trains on the samples kept in earlier rounds
    rm_refresh: str = ""  # module:function run between rounds; returns the new reward model(s)
    rm_refresh_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    ppo: dict[str, Any] | None = None  # PPO keys: finish with PPO from the last policy

    def validate(self) -> None:
        SelfTrainKeys.validate(self)
        _choice(self, "keep", SELECTION_RULES)
        if not 0 < self.keep_fraction <= 1:
            raise ConfigError(f"key 'keep_fraction': expected 0 < x <= 1, got {self.keep_fraction}")
        if self.ppo is not None:
            try:
                from_dict(PPOConfig, self.ppo)
            except ConfigError as e:
                raise ConfigError(f"key 'ppo': {e}") from e


@dataclasses.dataclass
class ReSTConfig(SelfTrainKeys):
    """``rlhfkit rest``: ReST (Gulcehre et al. 2023): each of ``rounds`` Grow steps samples
    a dataset from the policy; then one Improve step per threshold keeps the samples
    whose reward is at least that threshold and fine-tunes on them."""

    thresholds: list[float] = dataclasses.field(default_factory=lambda: [0.5, 0.75, 0.9])
    threshold_mode: str = "quantile"  # quantile (of the Grow rewards) | value

    def validate(self) -> None:
        SelfTrainKeys.validate(self)
        _choice(self, "threshold_mode", ("quantile", "value"))
        from rlhfkit.rollout.selection import check_schedule

        try:
            check_schedule(self.thresholds, self.threshold_mode)
        except ValueError as e:
            raise ConfigError(f"key 'thresholds': {e}") from e


@dataclasses.dataclass
class HIRConfig(SelfTrainKeys):
    """``rlhfkit hir``: hindsight instruction relabeling (Zhang et al. 2023): sample,
    rewrite each prompt with ``relabel_fn`` so that the response is right for it,
    fine-tune on the relabeled pairs (plus the contrastive term when its weight > 0).
    A reward is optional (only logged)."""

    samples_per_prompt: int = 4
    relabel_fn: str = ""  # module:function or file.py:function
    contrastive_weight: float = 0.0  # > 0: adds HIR's contrastive term

    def validate(self) -> None:
        TrainConfig.validate(self)
        self.validate_model()
        self.validate_sampling(reward_required=False)
        if self.rounds < 1:
            raise ConfigError(f"key 'rounds': expected an integer >= 1, got {self.rounds}")
        if not self.relabel_fn:
            raise ConfigError(
                "key 'relabel_fn': expected module:function or file.py:function (the built-in "
                "task's is rlhfkit.demo.relabel:relabel)"
            )
        if self.contrastive_weight < 0:
            raise ConfigError(
                f"key 'contrastive_weight': expected a number >= 0, got {self.contrastive_weight}"
            )


@dataclasses.dataclass
class BestOfNConfig(SamplingKeys, ModelKeys):
    """``rlhfkit best-of-n``: inference-time best-of-K: K samples per prompt, the one the
    reward scores highest is the answer. ``out`` is a JSONL file."""

    out: str = ""
    seed: int = 42
    cpu: bool = False

    def validate(self) -> None:
        self.validate_model()
        self.validate_sampling()
        if not self.out:
            raise ConfigError("key 'out': expected the output JSONL file (--out FILE)")
