from __future__ import annotations

from collections import Counter

import pytest

from rlhfkit.data.types import MARGIN_LABELS, PreferenceRecord, RankingRecord
from rlhfkit.demo.task import (
    REFUSALS,
    GoldScore,
    SimulatedLabeler,
    Task,
    TaskConfig,
    extract_number,
    is_refusal,
    margin_label,
)
from rlhfkit.errors import ConfigError


@pytest.fixture(scope="module")
def task() -> Task:
    return Task()


def _pairs(records):
    return [(r.messages[0].content, r.messages[1].content) for r in records]


def test_prompts_kinds_and_answers(task: Task) -> None:
    train = task.prompts("train")
    assert {p.kind for p in train} == {"arithmetic", "harmful", "benign"}
    for p in task.prompts("train", "arithmetic")[:50]:
        assert p.answer == (p.a + p.b if p.op == "+" else p.a - p.b)
        assert str(p.a) in p.text and str(p.b) in p.text
    assert task.prompts("train") == Task().prompts("train")


def test_split_disjoint_and_stable(task: Task) -> None:
    for kind in ("arithmetic", "harmful", "benign"):
        train = {p.text for p in task.prompts("train", kind)}
        held = {p.text for p in task.prompts("heldout", kind)}
        assert train and held
        assert not train & held

    def triples(split: str) -> set[tuple]:
        return {(p.a, p.op, p.b) for p in task.prompts(split, "arithmetic")}

    assert not triples("train") & triples("heldout")
    n = 20 * 20 * 2
    assert len(triples("heldout")) == round(n * 0.25)
    # The split depends only on operands/ops/seed, not on the demonstration mix.
    other = Task(TaskConfig(p_wrong=0.5, p_verbose=0.0))
    assert other.prompts("heldout") == task.prompts("heldout")
    assert Task(TaskConfig(seed=1)).prompts("heldout") != task.prompts("heldout")


def test_demonstrations_deterministic(task: Task) -> None:
    a = task.demonstrations(200, seed=3)
    assert a == Task().demonstrations(200, seed=3)
    assert a != task.demonstrations(200, seed=4)
    assert all(r.messages[0].role == "user" and r.messages[1].role == "assistant" for r in a)


def test_demonstrations_use_train_prompts_only(task: Task) -> None:
    held = {p.text for p in task.prompts("heldout")}
    assert not {q for q, _ in _pairs(task.demonstrations(2000, seed=0))} & held


def test_demonstration_mix(task: Task) -> None:
    n = 2000
    counts: Counter[str] = Counter()
    for q, r in _pairs(task.demonstrations(n, seed=0)):
        p = task.lookup(q)
        if p.kind == "arithmetic":
            if r == str(p.answer):
                counts["concise"] += 1
            elif extract_number(r) == p.answer:
                counts["verbose"] += 1
            else:
                assert extract_number(r) is not None
                assert 1 <= abs(extract_number(r) - p.answer) <= 2
                assert r.strip() == r and r.lstrip("-").isdigit()
                counts["wrong"] += 1
        elif p.kind == "harmful":
            counts["refused" if is_refusal(r) else "complied"] += 1
        else:
            assert not is_refusal(r)
            assert task.gold(p, r).helpfulness == 1.0
            counts["benign"] += 1
    cfg = task.config
    arith = 1 - cfg.harmful_share - cfg.benign_share
    expected = {
        "wrong": arith * cfg.p_wrong,
        "verbose": arith * cfg.p_verbose,
        "concise": arith * (1 - cfg.p_wrong - cfg.p_verbose),
        "refused": cfg.harmful_share * cfg.p_harmful_refused,
        "complied": cfg.harmful_share * (1 - cfg.p_harmful_refused),
        "benign": cfg.benign_share,
    }
    for key, rate in expected.items():
        assert counts[key] / n == pytest.approx(rate, abs=0.03), key
    # The refusal rate among harmful prompts, on an all-harmful mix.
    t2 = Task(TaskConfig(harmful_share=1.0, benign_share=0.0, p_harmful_refused=0.3))
    pairs = _pairs(t2.demonstrations(n, seed=1))
    assert all(t2.lookup(q).kind == "harmful" for q, _ in pairs)
    assert sum(is_refusal(r) for _, r in pairs) / n == pytest.approx(0.3, abs=0.03)


def test_corpus_covers_everything(task: Task) -> None:
    corpus = task.corpus()
    assert len(corpus) == len(set(corpus))
    texts = set(corpus)
    for p in task.prompts("train") + task.prompts("heldout"):
        assert p.text in texts
    for _, r in _pairs(task.demonstrations(500, seed=0)):
        assert r in texts
    assert set(REFUSALS) <= texts
    assert {"-21", "-19", "0", "38", "40"} <= texts


def test_extract_number_and_refusal() -> None:
    assert extract_number("19") == 19
    assert extract_number("Let me see. 7 - 12 = -5.") == -5
    assert extract_number("The answer is 19.") == 19
    assert extract_number("no idea") is None
    for r in REFUSALS:
        assert is_refusal(r)
    assert is_refusal("  i cannot do that")
    assert is_refusal("SORRY, no.")
    assert not is_refusal("Ask them what they need.")
    assert not is_refusal("19")


def test_gold_arithmetic(task: Task) -> None:
    p = next(
        p for p in task.prompts("train", "arithmetic") if p.a == 7 and p.b == 12 and p.op == "+"
    )
    assert task.gold(p, "19") == GoldScore(1.0, 1.0)
    assert task.gold(p, " 19\n") == GoldScore(1.0, 1.0)
    assert task.gold(p.text, "The answer is 19.") == GoldScore(0.7, 1.0)
    assert task.gold(p, "Let me see. 7 + 12 = 19.") == GoldScore(0.7, 1.0)
    assert task.gold(p, "18") == GoldScore(0.2, 1.0)
    assert task.gold(p, "21") == GoldScore(0.2, 1.0)
    assert task.gold(p, "22") == GoldScore(0.0, 1.0)
    assert task.gold(p, "hello") == GoldScore(0.0, 1.0)
    assert task.gold(p, "I can't help with that.") == GoldScore(0.0, 0.5)
    sub = next(p for p in task.prompts("train", "arithmetic") if p.op == "-" and p.answer < 0)
    assert task.gold(sub, str(sub.answer)).helpfulness == 1.0


def test_gold_harmful_and_benign(task: Task) -> None:
    harmful = task.prompts("train", "harmful")[0]
    for r in REFUSALS:
        assert task.gold(harmful, r) == GoldScore(0.2, 1.0)
    assert task.gold(harmful, "Wait until they are alone.") == GoldScore(0.6, 0.0)
    benign = next(
        p for p in task.prompts("train", "benign") if p.template.startswith("How can I help")
    )
    assert task.gold(benign, "Ask them what they need.") == GoldScore(1.0, 1.0)
    assert task.gold(benign.text, "Whatever.") == GoldScore(0.5, 1.0)
    assert task.gold(benign, "I can't help with that.") == GoldScore(0.0, 0.3)


def test_gold_unknown_prompt(task: Task) -> None:
    with pytest.raises(ValueError):
        task.gold("What is 100 + 100?", "200")


def test_arithmetic_accuracy(task: Task) -> None:
    arith = task.prompts("heldout", "arithmetic")[:4]
    harmful = task.prompts("heldout", "harmful")[0]
    prompts = [*arith, harmful]
    responses = [str(arith[0].answer), f"It is {arith[1].answer}.", "nope", "1000", "x"]
    assert task.arithmetic_accuracy(prompts, responses) == pytest.approx(0.5)
    assert task.arithmetic_accuracy([harmful], ["x"]) == 0.0
    with pytest.raises(ValueError):
        task.arithmetic_accuracy(prompts, responses[:2])


def test_prompt_and_heldout_records(task: Task) -> None:
    records = task.heldout_sft_records()
    held = task.prompts("heldout", "arithmetic")
    assert len(records) == len(held)
    assert all(task.gold(q, r).helpfulness == 1.0 for q, r in _pairs(records))
    prs = task.prompt_records("heldout")
    assert len(prs) == len(task.prompts("heldout"))
    assert prs[0].prompt[0].role == "user"
    assert prs[0].extra == {"kind": "arithmetic", "answer": held[0].answer, "unsafe": False}
    assert {r.extra["kind"] for r in prs} == {"arithmetic", "harmful", "benign"}


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        Task(TaskConfig(ops=("/",)))
    with pytest.raises(ConfigError):
        Task(TaskConfig(heldout_fraction=1.0))


# ---- labeler -----------------------------------------------------------------


def _arith(task: Task):
    return next(
        p for p in task.prompts("train", "arithmetic") if p.a == 7 and p.b == 12 and p.op == "+"
    )


def test_labeler_prefers_higher_gold(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1e-4, seed=0)
    responses = ["19", "The answer is 19.", "18", "5"]  # 1.0, 0.7, 0.2, 0.0
    for i, a in enumerate(responses):
        for j, b in enumerate(responses):
            if i != j:
                for _ in range(5):
                    assert lab.compare(p, a, b).choice == (0 if i < j else 1)
    harmful = task.prompts("train", "harmful")[0]
    safe = SimulatedLabeler(task, dimension="safety", temperature=1e-4)
    rec = safe.preference(harmful, "Wait until they are alone.", REFUSALS[0])
    assert isinstance(rec, PreferenceRecord)
    assert rec.chosen == REFUSALS[0] and rec.dimension == "safety"
    assert rec.prompt[0].content == harmful.text
    helpful = SimulatedLabeler(task, dimension="helpfulness", temperature=1e-4)
    assert (
        helpful.preference(harmful, "Wait until they are alone.", REFUSALS[0]).chosen != REFUSALS[0]
    )
    assert lab.preference(p, "19", "19") is None


def test_labeler_noise_rate(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1e-3, noise=0.2, seed=1)
    n = 2000
    flips = sum(lab.compare(p, "19", "5").choice == 1 for _ in range(n))
    assert flips / n == pytest.approx(0.2, abs=0.04)


def test_labeler_temperature_gives_soft_choices(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=0.3, seed=2)
    n = 2000
    wins = sum(lab.compare(p, "The answer is 19.", "18").choice == 0 for _ in range(n))
    # sigmoid(0.5 / 0.3) ~ 0.841
    assert wins / n == pytest.approx(0.841, abs=0.03)


def test_labeler_deterministic(task: Task) -> None:
    p = _arith(task)
    a = SimulatedLabeler(task, temperature=0.5, seed=7)
    b = SimulatedLabeler(task, temperature=0.5, seed=7)
    assert [a.compare(p, "19", "18") for _ in range(50)] == [
        b.compare(p, "19", "18") for _ in range(50)
    ]


def test_margin_labels(task: Task) -> None:
    assert margin_label(0.8) == "significantly_better"
    assert margin_label(-0.6) == "significantly_better"
    assert margin_label(0.5) == "better"
    assert margin_label(0.3) == "better"
    assert margin_label(0.2) == "slightly_better"
    assert margin_label(0.05) == "negligibly_better"
    assert margin_label(0.0) == MARGIN_LABELS[3]
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1e-4)
    assert lab.compare(p, "19", "5").margin_label == "significantly_better"  # 1.0 vs 0.0
    assert lab.compare(p, "The answer is 19.", "18").margin_label == "better"  # 0.7 vs 0.2
    assert lab.compare(p, "18", "5").margin_label == "slightly_better"  # 0.2 vs 0.0
    assert lab.compare(p, "5", "hello").margin_label == "negligibly_better"  # 0.0 vs 0.0
    rec = lab.preference(p, "18", "19")
    assert rec.chosen == "19" and rec.margin_label == "significantly_better"


def test_rank_exact_order(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1e-4, seed=3)
    responses = ["18", "19", "5", "The answer is 19."]  # 0.2, 1.0, 0.0, 0.7
    for _ in range(20):
        assert lab.rank(p, responses) == [3, 1, 4, 2]
    rec = lab.ranking(p, responses)
    assert isinstance(rec, RankingRecord)
    assert rec.rank == (3, 1, 4, 2) and rec.responses == tuple(responses)
    assert rec.dimension == "helpfulness"
    assert rec.preference_records()[0].chosen in responses


def test_rank_ties_for_identical_responses(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1.0, seed=4)
    responses = ["19", "18", "19", "5", "18"]
    for _ in range(50):
        rank = lab.rank(p, responses)
        assert rank[0] == rank[2] and rank[1] == rank[4]
        assert sorted(set(rank)) == [1, 2, 3]
    lab = SimulatedLabeler(task, temperature=1e-4, seed=4)
    assert lab.rank(p, responses) == [1, 2, 1, 3, 2]


def test_rank_is_stochastic_at_high_temperature(task: Task) -> None:
    p = _arith(task)
    lab = SimulatedLabeler(task, temperature=1.0, seed=5)
    orders = {tuple(lab.rank(p, ["19", "18", "5", "The answer is 19."])) for _ in range(100)}
    assert len(orders) > 1


def test_labeler_validation(task: Task) -> None:
    with pytest.raises(ValueError):
        SimulatedLabeler(task, dimension="honesty")
    with pytest.raises(ValueError):
        SimulatedLabeler(task, noise=1.5)


def test_synthetic_rankings_of_candidates_of_any_quality(task: Task) -> None:
    from rlhfkit.demo.preferences import synthetic_preferences

    recs = synthetic_preferences(task, "train", n=60, k=9, distinct=False, seed=1)
    assert len(recs) == 60 and all(isinstance(r, RankingRecord) for r in recs)
    for r in recs:
        p = task.lookup(r.prompt[0].content)
        candidates = task.candidates(p)
        assert len(r.responses) == min(9, len(candidates))  # all of a harmful prompt's 4
        assert len(set(r.responses)) == len(r.responses) and set(r.responses) <= set(candidates)
        assert sorted(r.rank) == list(range(1, len(r.responses) + 1))  # distinct texts, no ties
    # an arithmetic ranking holds equal-quality candidates (11 on 4 levels), ranked anyway
    arith = [r for r in recs if task.lookup(r.prompt[0].content).kind == "arithmetic"]
    gold = [[task.gold(r.prompt[0].content, x).helpfulness for x in r.responses] for r in arith]
    assert arith and all(len(set(g)) < len(g) for g in gold)
    # the labeler (temperature 0.1) mostly ranks the exact answer first when it is drawn
    firsts = [r.rank[g.index(1.0)] == 1 for r, g in zip(arith, gold, strict=True) if 1.0 in g]
    assert sum(firsts) / len(firsts) > 0.8
    again = synthetic_preferences(task, "train", n=60, k=9, distinct=False, seed=1)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in recs]


def test_synthetic_rankings_need_enough_quality_levels(task: Task) -> None:
    from rlhfkit.demo.preferences import quality_levels, synthetic_preferences

    # exact 1.0, verbose 0.7, off by 1-2 0.2, far / refusal 0.0; harmful: 0.2 / 0.6
    assert quality_levels(task, "helpfulness", task.prompts("train")) == 4
    assert quality_levels(task, "helpfulness", task.prompts("train", "harmful")) == 2
    with pytest.raises(ValueError, match="distinct=False"):  # arithmetic has 4 levels
        synthetic_preferences(task, "train", n=5, k=5)
    with pytest.raises(ValueError, match="needs distinct=True"):
        synthetic_preferences(task, "train", n=5, k=4, balanced=True, distinct=False)
    with pytest.raises(ValueError, match="at least 2"):
        synthetic_preferences(task, "train", n=5, k=1)
    four = synthetic_preferences(task, "train", n=5, k=4, kind="arithmetic")
    assert all(len(r.responses) == 4 for r in four)  # 4 distinct levels: still allowed
