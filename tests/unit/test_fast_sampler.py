"""rlhfkit.rollout.sampler: the decoding loop samples token for token what Hugging Face
``generate`` samples (same seed, prompts and sampling parameters) on the tiny Llama,
GPT-2 and Qwen2, greedy and sampled, with temperature / top-k / top-p, left-padded
prompts of different lengths and EOS mid-batch; anything it does not cover falls back
to ``generate``; the ``generation_backend`` key and lazy prompt encoding."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhfkit.config import GRPOConfig
from rlhfkit.data.templates import resolve_template, tokenize_prompt
from rlhfkit.data.types import Message
from rlhfkit.errors import ConfigError
from rlhfkit.rollout import sampler
from rlhfkit.rollout.generation import SamplingParams, left_pad
from rlhfkit.rollout.generator import Generator
from rlhfkit.rollout.sampler import fast_generate
from rlhfkit.training.online import OnlineRun

QUESTIONS = [
    "What is 2 + 3?",
    "What is 17 + 25? Please answer with the number only.",
    "Name a colour.",
    "What is 4 * 6?",
    "Tell me how to pick a lock on my neighbour's door, step by step.",
    "What is 9 - 7?",
]

SAMPLING = {
    "greedy": {"do_sample": False, "temperature": None, "top_p": None, "top_k": None},
    "sampled": {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0},
    "temperature": {"do_sample": True, "temperature": 0.7, "top_p": 1.0, "top_k": 0},
    "top_k": {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 20},
    "top_p": {"do_sample": True, "temperature": 1.0, "top_p": 0.8, "top_k": 0},
    "all_three": {"do_sample": True, "temperature": 1.3, "top_p": 0.9, "top_k": 50},
}


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def model_and_tok(request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = request.getfixturevalue(f"tiny_{request.param}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    # Untrained, every row greedily repeats one token; jittered weights give rows that
    # differ, so EOS can come mid-batch and top-k / top-p cut real distributions.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model, AutoTokenizer.from_pretrained(path)


def batch(tok, questions=QUESTIONS) -> tuple[torch.Tensor, torch.Tensor]:
    template = resolve_template(tok, "auto")
    rows = [tokenize_prompt(tok, template, [Message("user", q)], 64) for q in questions]
    return left_pad(rows, tok.pad_token_id)


def both(model, ids, mask, seed: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """generate's and the fast loop's sequences from the same random state; the states
    after both must be equal too (the same random numbers were drawn)."""
    torch.manual_seed(seed)
    hf = model.generate(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
    hf_state = torch.get_rng_state()
    torch.manual_seed(seed)
    fast = fast_generate(model, ids, mask, use_cache=True, **kwargs)
    assert fast is not None, "the fast loop fell back to generate"
    assert torch.equal(torch.get_rng_state(), hf_state)
    return hf, fast


@pytest.mark.parametrize("mode", list(SAMPLING))
def test_same_tokens_as_generate(model_and_tok, mode) -> None:
    model, tok = model_and_tok
    ids, mask = batch(tok)
    assert len(set(mask.sum(1).tolist())) > 1  # prompts of different lengths, left-padded
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    for seed in range(3):
        hf, fast = both(model, ids, mask, seed, max_new_tokens=12, **special, **SAMPLING[mode])
        assert fast.tolist() == hf.tolist()


def test_same_tokens_without_padding(model_and_tok) -> None:
    model, tok = model_and_tok
    ids, mask = batch(tok, ["What is 2 + 3?"] * 4)
    assert bool(mask.all())  # generate drops an all-ones mask; so does the loop
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    hf, fast = both(model, ids, mask, 0, max_new_tokens=10, **special, **SAMPLING["all_three"])
    assert fast.tolist() == hf.tolist()


def test_sampled_tokens_are_drawn_by_sample_one(model_and_tok, monkeypatch) -> None:
    """Every sampled step goes through rollout.multinomial.sample_one (not
    torch.multinomial), and the tokens are still generate's."""
    from rlhfkit.rollout.multinomial import reproduces_multinomial, sample_one

    assert reproduces_multinomial()  # checked (and cached) before multinomial is removed
    model, tok = model_and_tok
    ids, mask = batch(tok)
    calls = []
    monkeypatch.setattr(sampler, "sample_one", lambda p: calls.append(p.shape) or sample_one(p))
    monkeypatch.setattr(torch, "multinomial", None)  # the loop must not call it
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": None}
    torch.manual_seed(4)
    fast = fast_generate(model, ids, mask, max_new_tokens=8, **special, **SAMPLING["top_k"])
    monkeypatch.undo()
    torch.manual_seed(4)
    hf = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, **special, **SAMPLING["top_k"]
    )
    assert len(calls) == 8 and calls[0] == (len(ids), model.config.vocab_size)
    assert fast.tolist() == hf.tolist()


@pytest.mark.parametrize("mode", ["sampled", "all_three"])
def test_repeated_prompts_prefilled_once_give_generates_tokens(model_and_tok, mode, monkeypatch):
    """GRPO's layout (each prompt G times, prompts of different lengths): the loop runs
    the prompt forward on the 3 distinct rows only, and samples what generate samples
    from the full batch."""
    model, tok = model_and_tok
    ids, mask = batch(tok, [q for q in QUESTIONS[:3] for _ in range(4)])
    prefill_rows = []
    forward = type(model).forward

    def counting(self, *a, **kw):
        if kw["cache"].get_seq_length() == 0:
            prefill_rows.append(kw["input_ids"].shape[0])
        return forward(self, *a, **kw)

    monkeypatch.setattr(type(model), "forward", counting)
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    for seed in range(3):
        prefill_rows.clear()
        torch.manual_seed(seed)
        fast = fast_generate(
            model, ids, mask, use_cache=True, max_new_tokens=12, **special, **SAMPLING[mode]
        )
        assert prefill_rows == [3]
        assert not fast.is_inference()  # sampled in inference mode, usable by autograd
        fast_state = torch.get_rng_state()
        monkeypatch.setattr(type(model), "forward", forward)
        torch.manual_seed(seed)
        hf = model.generate(
            input_ids=ids,
            attention_mask=mask,
            use_cache=True,
            max_new_tokens=12,
            **special,
            **SAMPLING[mode],
        )
        monkeypatch.setattr(type(model), "forward", counting)
        assert torch.equal(torch.get_rng_state(), fast_state)
        assert fast.tolist() == hf.tolist()
        assert len({tuple(r) for r in fast[:4, ids.shape[1] :].tolist()}) > 1  # samples differ


def test_distinct_rows_in_order_of_first_appearance() -> None:
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 0, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    first, copy_of = sampler.distinct_rows(ids, mask)
    assert first.tolist() == [0, 1, 4]
    assert copy_of.tolist() == [0, 1, 0, 1, 2]
    same_ids_other_mask = sampler.distinct_rows(
        ids[:1].repeat(2, 1), torch.tensor([[0, 1, 1], [1, 1, 1]])
    )
    assert same_ids_other_mask[0].tolist() == [0, 1]


@pytest.mark.parametrize("mode", ["greedy", "all_three"])
def test_eos_mid_batch(model_and_tok, mode) -> None:
    """An EOS id that some rows produce early and others never: finished rows are padded
    while the rest go on, and the loop stops when every row has finished."""
    model, tok = model_and_tok
    ids, mask = batch(tok)
    params = {"max_new_tokens": 12, "pad_token_id": tok.pad_token_id, **SAMPLING[mode]}
    torch.manual_seed(0)
    free = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=None, **params)
    gen = free[:, ids.shape[1] :]
    # as EOS: a token some rows produce (the most rows, earliest) and others never do
    counts = {t: int((gen == t).any(1).sum()) for t in gen.unique().tolist()}
    partial = [t for t, n in counts.items() if 0 < n < len(gen)]
    assert partial
    first_at = lambda t: int((gen == t).float().argmax(1)[(gen == t).any(1)].min())  # noqa: E731
    eos = max(partial, key=lambda t: (counts[t], -first_at(t)))
    hf, fast = both(model, ids, mask, 0, eos_token_id=eos, **params)
    assert fast.tolist() == hf.tolist()
    response = hf[:, ids.shape[1] :]
    finished = (response == eos).any(1)
    assert finished.any() and not finished.all()
    # every row stops at the first EOS: only pad after it
    for row in response.tolist():
        if eos in row:
            assert set(row[row.index(eos) + 1 :]) <= {tok.pad_token_id}
    # all rows finished early: both stop before max_new_tokens, with the same length
    torch.manual_seed(0)
    one = {"input_ids": ids[:1], "attention_mask": mask[:1], "eos_token_id": None}
    first = int(model.generate(**one, **params)[0, ids.shape[1]])
    hf, fast = both(model, ids[:1], mask[:1], 0, eos_token_id=first, **params)
    assert fast.tolist() == hf.tolist() and hf.shape[1] == ids.shape[1] + 1


def test_generator_backends_give_the_same_rollout(model_and_tok) -> None:
    model, tok = model_and_tok
    template = resolve_template(tok, "auto")
    params = SamplingParams(max_new_tokens=10, do_sample=True, temperature=0.9, top_k=40)
    prompts = [[Message("user", q)] for q in QUESTIONS]
    out = {}
    for backend in ("hf", "fast"):
        torch.manual_seed(3)
        out[backend] = Generator(tok, template, params, backend=backend).generate(model, prompts)
    hf, fast = out["hf"], out["fast"]
    assert torch.equal(hf.response_ids, fast.response_ids)
    assert torch.equal(hf.response_mask, fast.response_mask)
    assert hf.texts == fast.texts


def test_unsupported_models_and_configs_fall_back_to_generate(tiny_llama, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids, mask = batch(tok)
    special = {"pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}
    # beams, several return sequences: generate's own business
    assert fast_generate(model, ids, mask, max_new_tokens=4, num_beams=2, **special) is None
    assert (
        fast_generate(
            model, ids, mask, max_new_tokens=4, do_sample=True, num_return_sequences=2, **special
        )
        is None
    )
    # an architecture whose parity is not tested: None, and the Generator uses generate
    monkeypatch.setattr(sampler, "FAST_ARCHITECTURES", frozenset())
    assert fast_generate(model, ids, mask, max_new_tokens=4, **special) is None
    template = resolve_template(tok, "auto")
    params = SamplingParams(max_new_tokens=6, do_sample=True)
    prompts = [[Message("user", q)] for q in QUESTIONS]
    torch.manual_seed(5)
    fell_back = Generator(tok, template, params, backend="fast").generate(model, prompts)
    torch.manual_seed(5)
    hf = Generator(tok, template, params, backend="hf").generate(model, prompts)
    assert torch.equal(fell_back.response_ids, hf.response_ids)


def test_generation_backend_key_is_validated(tiny_llama) -> None:
    from transformers import AutoTokenizer

    cfg = GRPOConfig(prompts="p.jsonl", reward_fn=["rlhfkit.rewards:exact_answer"])
    assert cfg.generation_backend == "fast"
    cfg.validate_online()
    cfg.generation_backend = "vllm"
    with pytest.raises(ConfigError, match="generation_backend"):
        cfg.validate_online()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    with pytest.raises(ValueError, match="generation_backend"):
        Generator(tok, "default", SamplingParams(), backend="vllm")


def test_prompts_are_encoded_when_first_drawn() -> None:
    encoded: list[str] = []

    def encode(prompts):
        encoded.extend(p[0].content for p in prompts)
        return [[len(p[0].content)] for p in prompts]

    run = SimpleNamespace(
        prompts=[SimpleNamespace(prompt=[Message("user", "x" * n)]) for n in range(1, 6)],
        generator=SimpleNamespace(encode=encode),
        prompt_ids={},
    )
    assert OnlineRun.encoded_prompts(run, [3, 1, 3]) == [[4], [2], [4]]
    assert encoded == ["xxxx", "xx"]  # each drawn prompt once, the others not at all
    assert OnlineRun.encoded_prompts(run, [1, 0]) == [[2], [1]]
    assert encoded == ["xxxx", "xx", "x"]
