"""``rlhfkit eval``: a policy's responses to held-out prompts, judged.

For each prompt the policy answers greedily; those responses get the gold judge's
metrics (when the prompts are the built-in task's), a win rate against a reference
policy's greedy responses for every judge (the gold judge or a reward model; ties
count half; a bootstrap interval over prompts), the mean response length, and BLEU /
ROUGE-L against the record's ``reference`` text where it has one. The KL to the
reference is estimated on responses *sampled* from the policy (temperature 1, seeded),
``mean(log pi(y|x) - log pi_ref(y|x))`` - the quantity PPO's ``kl`` metric tracks
during training; greedy responses would not give an estimate of the KL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhfkit.data.types import Conversation, PromptRecord
from rlhfkit.demo.task import Task, TaskPrompt, is_refusal
from rlhfkit.errors import ConfigError
from rlhfkit.evaluation.metrics import WinRate, bleu, rouge_l, sequence_kl, win_rate

log = logging.getLogger("rlhfkit")

GOLD = "gold"
REFERENCE_FIELD = "reference"


@dataclass(frozen=True)
class EvalSettings:
    """How responses are generated and how the statistics are computed."""

    max_new_tokens: int = 16
    batch_size: int = 64
    max_prompt_length: int = 256
    kl_samples: int = 1  # sampled responses per prompt for the KL estimate; 0 skips it
    bootstrap: int = 1000  # resamples of the win-rate interval
    confidence: float = 0.95
    seed: int = 0  # of the KL samples and of the bootstrap

    def validate(self) -> None:
        for key in ("max_new_tokens", "batch_size", "max_prompt_length", "bootstrap"):
            if getattr(self, key) < 1:
                raise ConfigError(f"--{key.replace('_', '-')}: expected an integer >= 1")
        if self.kl_samples < 0:
            raise ConfigError("--kl-samples: expected an integer >= 0")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"--confidence: expected 0 < x < 1, got {self.confidence}")


@dataclass(frozen=True)
class PolicyScores:
    """Gold-judge scores of responses to prompts of the built-in task.

    ``gold`` scores each response by what matters for its prompt (Llama 2's selection
    rule applied to the gold judge: safety on harmful requests, helpfulness
    elsewhere) and averages per prompt kind, weighted by the task's prompt mix
    (80% arithmetic, 10% harmful, 10% benign by default). The held-out set has far
    more arithmetic prompts than the others, so a plain mean would hide safety.
    """

    gold: float
    accuracy: float
    helpfulness: float
    safety: float
    refusal_harmful: float
    refusal_benign: float


def selected_score(task: Task, prompt: TaskPrompt, response: str) -> float:
    """The gold score that matters for the prompt: safety on harmful requests,
    helpfulness elsewhere (the gold judge's verdict in win rates)."""
    g = task.gold(prompt, response)
    return g.safety if prompt.kind == "harmful" else g.helpfulness


def gold_scores(task: Task, prompts: Sequence[TaskPrompt], texts: Sequence[str]) -> PolicyScores:
    """:class:`PolicyScores` of ``texts`` answering ``prompts``."""
    gold = [task.gold(p, t) for p, t in zip(prompts, texts, strict=True)]

    def rate(kind: str) -> float:
        hits = [is_refusal(t) for p, t in zip(prompts, texts, strict=True) if p.kind == kind]
        return sum(hits) / max(len(hits), 1)

    per_kind: dict[str, list[float]] = {}
    for p, t in zip(prompts, texts, strict=True):
        per_kind.setdefault(p.kind, []).append(selected_score(task, p, t))
    cfg = task.config
    mix = {"harmful": cfg.harmful_share, "benign": cfg.benign_share}
    mix["arithmetic"] = 1.0 - mix["harmful"] - mix["benign"]
    weight = sum(mix[k] for k in per_kind)
    return PolicyScores(
        gold=sum(mix[k] * sum(v) / len(v) for k, v in per_kind.items()) / weight,
        accuracy=task.arithmetic_accuracy(prompts, texts),
        helpfulness=sum(g.helpfulness for g in gold) / len(gold),
        safety=sum(g.safety for g in gold) / len(gold),
        refusal_harmful=rate("harmful"),
        refusal_benign=rate("benign"),
    )


# ---- generation ----------------------------------------------------------------------


@dataclass
class Responses:
    """Responses to a list of prompts: texts, token lengths (EOS included, as PPO's
    ``response_length``), and for sampled responses the policy's sequence log-probs."""

    texts: list[str]
    lengths: list[int]
    rollouts: list[Any] = field(default_factory=list)  # rollout.generator.Rollout chunks


def load_policy(path: str | Path):
    """(model, tokenizer, chat template) of a causal-LM folder, in eval mode."""
    from rlhfkit.data.templates import resolve_template
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    tok = load_tokenizer(str(path))
    model = load_causal_lm(str(path)).eval()
    return model, tok, resolve_template(tok)


def generate(
    policy: tuple,
    prompts: Sequence[Conversation],
    settings: EvalSettings,
    sample: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Responses:
    """Greedy (or, with ``sample``, temperature-1) responses in batches."""
    from rlhfkit.rollout.generation import SamplingParams
    from rlhfkit.rollout.generator import Generator

    model, tok, template = policy
    params = SamplingParams(max_new_tokens=settings.max_new_tokens, do_sample=sample)
    gen = Generator(tok, template, params, settings.max_prompt_length)
    out = Responses([], [])
    for start in range(0, len(prompts), settings.batch_size):
        ro = gen.generate(model, prompts[start : start + settings.batch_size])
        out.texts += ro.texts
        out.lengths += ro.lengths.tolist()
        if sample:
            out.rollouts.append(ro)
        if progress is not None:
            progress(len(ro))
    return out


@torch.no_grad()
def response_logps(model: torch.nn.Module, rollout: Any, batch_size: int) -> torch.Tensor:
    """``(B, R)`` log-probs under ``model`` of the rollout's response tokens (0 past EOS)."""
    from rlhfkit.algorithms.logprobs import token_logps
    from rlhfkit.models.reward import positions_from_mask
    from rlhfkit.training.online import Experience, forward_response

    rows = []
    for s in range(0, len(rollout), batch_size):
        ids = rollout.input_ids[s : s + batch_size]
        attn = rollout.attention_mask[s : s + batch_size]
        resp = rollout.response_ids[s : s + batch_size]
        mask = rollout.response_mask[s : s + batch_size].float()
        zeros = torch.zeros_like(mask)
        exp = Experience(ids, attn, positions_from_mask(attn), resp, mask, zeros, zeros)
        logits, _ = forward_response(model, exp)
        rows.append(token_logps(logits, resp) * mask)
    return torch.cat(rows)


def sampled_kl(
    policy: tuple, reference: tuple, prompts: Sequence[Conversation], settings: EvalSettings
) -> list[float]:
    """Per sampled response ``log pi(y|x) - log pi_ref(y|x)`` (``kl_samples`` per prompt)."""
    torch.manual_seed(settings.seed)
    repeated = [p for p in prompts for _ in range(settings.kl_samples)]
    sampled = generate(policy, repeated, settings, sample=True)
    out: list[float] = []
    for ro in sampled.rollouts:
        mask = ro.response_mask.float()
        lp = response_logps(policy[0], ro, settings.batch_size)
        ref = response_logps(reference[0], ro, settings.batch_size)
        out += sequence_kl(lp, ref, mask).tolist()
    return out


# ---- judges ---------------------------------------------------------------------------


class GoldJudge:
    """The built-in task's gold judge (the score that matters for each prompt)."""

    name = GOLD

    def __init__(self, task: Task, prompts: Sequence[TaskPrompt]) -> None:
        self.task, self.prompts = task, prompts

    def scores(self, conversations: Sequence[Conversation], texts: Sequence[str]) -> list[float]:
        return [selected_score(self.task, p, t) for p, t in zip(self.prompts, texts, strict=True)]


class RewardModelJudge:
    """A reward model folder: the response with the higher reward wins."""

    def __init__(self, path: str | Path) -> None:
        from rlhfkit.models.reward import RewardModel

        self.name = str(path)
        self.rm = RewardModel.from_pretrained(path)

    def scores(self, conversations: Sequence[Conversation], texts: Sequence[str]) -> list[float]:
        return self.rm.score(list(conversations), list(texts)).tolist()


# ---- the evaluation -------------------------------------------------------------------


@dataclass
class EvalResult:
    """Everything ``rlhfkit eval`` measures for one policy (None: not measurable here)."""

    policy: str
    n_prompts: int
    response_length: float
    gold: PolicyScores | None = None
    judge_scores: dict[str, float] = field(default_factory=dict)  # mean score per judge
    win_rates: dict[str, WinRate] = field(default_factory=dict)  # vs the reference, per judge
    kl: float | None = None  # mean log pi - log pi_ref per sampled response (nats)
    kl_samples: int = 0
    bleu: float | None = None  # 0-100, over records with a reference text
    rouge_l: float | None = None  # 0-1
    n_references: int = 0
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        d = dict(d)
        d["gold"] = PolicyScores(**d["gold"]) if d.get("gold") else None
        d["win_rates"] = {k: WinRate(**v) for k, v in d.get("win_rates", {}).items()}
        return cls(**d)

    def flat(self) -> dict[str, float | None]:
        """One row of the summary table."""
        row: dict[str, float | None] = {}
        if self.gold is not None:
            row.update(asdict(self.gold))
        for name, wr in self.win_rates.items():
            label = "win_rate" if name == GOLD else f"win_rate[{name}]"
            row[label] = wr.rate
        row.update(kl=self.kl, response_length=self.response_length)
        row.update(bleu=self.bleu, rouge_l=self.rouge_l)
        return row


def task_prompts(task: Task, records: Sequence[PromptRecord]) -> list[TaskPrompt] | None:
    """The task prompt of every record, or None if any record is not one of the task's."""
    out = []
    for r in records:
        if len(r.prompt) != 1:
            return None
        try:
            out.append(task.lookup(r.prompt[0].content))
        except ValueError:
            return None
    return out


def reference_texts(records: Sequence[PromptRecord]) -> list[str | None]:
    """The ``reference`` field of each record (a string), if it has one."""
    out: list[str | None] = []
    for r in records:
        value = r.extra.get(REFERENCE_FIELD)
        out.append(None if value is None else str(value))
    return out


def evaluate(
    policy: str | Path,
    records: Sequence[PromptRecord],
    *,
    reference: str | Path | None = None,
    judges: Sequence[str] = (GOLD,),
    task: Task | None = None,
    settings: EvalSettings = EvalSettings(),
    reference_texts_cache: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EvalResult, list[dict[str, Any]]]:
    """Evaluate ``policy`` on ``records``; returns the result and one row per prompt.

    ``judges``: ``"gold"`` (the built-in task's judge; every prompt must be one of the
    task's) and / or reward-model folders. Win rates and KL need ``reference``;
    ``reference_texts_cache`` gives the reference's greedy responses (else they are
    generated). ``progress(what, done, total)`` is called as batches finish.
    """
    settings.validate()
    task = task or Task()
    convs = [r.prompt for r in records]
    tps = task_prompts(task, records)
    if GOLD in judges and tps is None:
        raise ConfigError(
            "--judge gold: the gold judge only knows the built-in task's prompts, and "
            f"{_where(records)} holds others; use --judge RM_DIR"
        )
    n = len(records)

    def tick(what: str) -> Callable[[int], None]:
        done = [0]

        def advance(k: int) -> None:
            done[0] += k
            if progress is not None:
                progress(what, done[0], n)

        return advance

    scorers = [GoldJudge(task, tps) if j == GOLD else RewardModelJudge(j) for j in judges]  # type: ignore[arg-type]
    pol = load_policy(policy)
    greedy = generate(pol, convs, settings, progress=tick("responses"))
    result = EvalResult(
        policy=str(policy),
        n_prompts=n,
        response_length=sum(greedy.lengths) / max(n, 1),
        reference=None if reference is None else str(reference),
    )
    if tps is not None:
        result.gold = gold_scores(task, tps, greedy.texts)
    ref_texts: list[str] | None = None
    ref_model = None
    if reference is not None:
        ref_model = load_policy(reference)
        if reference_texts_cache is not None:
            ref_texts = list(reference_texts_cache)
            if len(ref_texts) != n:
                raise ValueError(f"{len(ref_texts)} reference responses for {n} prompts")
        else:
            ref_texts = generate(ref_model, convs, settings, progress=tick("reference")).texts
    rows: list[dict[str, Any]] = [
        {"prompt": [m.as_dict() for m in c], "response": t, **records[i].extra}
        for i, (c, t) in enumerate(zip(convs, greedy.texts, strict=True))
    ]
    apply_judges(scorers, convs, greedy.texts, ref_texts, settings, result, rows)
    if ref_model is not None and settings.kl_samples > 0:
        kls = sampled_kl(pol, ref_model, convs, settings)
        result.kl, result.kl_samples = sum(kls) / len(kls), len(kls)
    text_overlap(greedy.texts, records, result)
    return result, rows


def apply_judges(
    scorers: Sequence[GoldJudge | RewardModelJudge],
    convs: Sequence[Conversation],
    texts: Sequence[str],
    ref_texts: Sequence[str] | None,
    settings: EvalSettings,
    result: EvalResult,
    rows: list[dict[str, Any]],
) -> None:
    """Each judge's mean score and, with reference responses, its win rate; the
    scores go into ``rows`` too."""
    for judge in scorers:
        mine = judge.scores(convs, texts)
        result.judge_scores[judge.name] = sum(mine) / max(len(mine), 1)
        for row, s in zip(rows, mine, strict=True):
            row[f"score[{judge.name}]"] = s
        if ref_texts is None:
            continue
        theirs = judge.scores(convs, ref_texts)
        result.win_rates[judge.name] = win_rate(
            mine, theirs, settings.bootstrap, settings.confidence, settings.seed
        )
        for row, s, t in zip(rows, theirs, ref_texts, strict=True):
            row[f"reference_score[{judge.name}]"] = s
            row["reference_response"] = t


def text_overlap(texts: Sequence[str], records: Sequence[PromptRecord], result: EvalResult) -> None:
    """BLEU and ROUGE-L of ``texts`` against the records' ``reference`` texts, if any."""
    pairs = [(t, r) for t, r in zip(texts, reference_texts(records), strict=True) if r is not None]
    if pairs:
        hyps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
        result.bleu, result.rouge_l = bleu(hyps, refs), rouge_l(hyps, refs)
        result.n_references = len(pairs)


def _where(records: Sequence[PromptRecord]) -> str:
    for r in records:
        if r.location is not None:
            return str(r.location.source)
    return "the prompts"


def evaluate_policy(
    model_dir: str | Path, task: Task, max_new_tokens: int = 12
) -> tuple[PolicyScores, list[tuple[str, str]]]:
    """Greedy responses to the task's held-out prompts, scored by the gold judge."""
    prompts = task.prompts("heldout")
    recs = task.prompt_records("heldout")
    texts = generate(
        load_policy(model_dir), [r.prompt for r in recs], EvalSettings(max_new_tokens)
    ).texts
    return gold_scores(task, prompts, texts), [
        (p.text, t) for p, t in zip(prompts, texts, strict=True)
    ]


def write_eval(out: str | Path, result: EvalResult, rows: Sequence[dict[str, Any]]) -> Path:
    """``out/eval.json`` and ``out/responses.jsonl``."""
    from rlhfkit.data.jsonl import write_jsonl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    write_jsonl(out / "responses.jsonl", rows)
    return out


def print_result(console: Any, result: EvalResult) -> None:
    """The result as a two-column table."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{result.policy} on {result.n_prompts} prompts"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    if result.gold is not None:
        for key, value in asdict(result.gold).items():
            table.add_row(key, f"{value:.3f}")
    for name, score in result.judge_scores.items():
        table.add_row(escape(f"mean score [{name}]"), f"{score:.3f}")
    for name, wr in result.win_rates.items():
        table.add_row(
            escape(f"win rate vs reference [{name}]"),
            f"{wr} ({wr.wins} wins, {wr.ties} ties, {wr.losses} losses)",
        )
    if result.kl is not None:
        table.add_row("KL to reference (nats / response)", f"{result.kl:.3f}")
    table.add_row("response length (tokens)", f"{result.response_length:.2f}")
    if result.bleu is not None and result.rouge_l is not None:
        table.add_row(f"BLEU ({result.n_references} references)", f"{result.bleu:.2f}")
        table.add_row("ROUGE-L F1", f"{result.rouge_l:.3f}")
    console.print(table)
