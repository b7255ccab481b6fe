"""The price table: its lookup rules, its memo, and the cost of a record (bit for bit the one
formula, from a ``UsageRecord`` or any object with its fields, through ``ModelPrice.cost``)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from gwcore.pricing import ModelPrice, PriceTable
from gwcore.usage import UsageRecord

GPT = ModelPrice(2.5, 10.0, 1.25)
MINI = ModelPrice(0.15, 0.6)
FAST = ModelPrice(0.05, 0.08, 0.01, 0.5)
OPENAI_GPT = ModelPrice(2.0, 8.0)


def table() -> PriceTable:
    return PriceTable(
        {
            "gpt-4o": GPT,
            "gpt-4o-mini": MINI,
            "openai/gpt-4o": OPENAI_GPT,
            "groq-fast/llama-3.1-8b-instant": FAST,
            "groq/llama-3.1-8b-instant": MINI,
            "blocked": None,
            "blocked-2024-08-06": GPT,
        }
    )


def formula(price: ModelPrice, prompt, completion, cached, reasoning) -> float | None:
    """ModelPrice.cost's documented arithmetic, written out here (the reference)."""
    if prompt is None and completion is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    cached = min(cached or 0, prompt)
    reasoning = min(reasoning or 0, completion)
    cached_price = price.input if price.cached_input is None else price.cached_input
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    return (
        (prompt - cached) * price.input
        + cached * cached_price
        + (completion - reasoning) * price.output
        + reasoning * reasoning_price
    ) / 1e6


def record(model: str, provider: str = "p", **tokens: int | None) -> UsageRecord:
    return UsageRecord("r", provider, "requested", model, "relay", False, **tokens)


def test_lookup_rules():
    t = table()
    assert t.lookup("p", None, "gpt-4o") is GPT
    assert t.lookup("p", "openai", "gpt-4o") is OPENAI_GPT  # kind/model before model
    assert t.lookup("openai", None, "gpt-4o") is OPENAI_GPT  # provider/model
    assert t.lookup("p", None, "gpt-4o-2024-08-06") is GPT  # version suffix
    assert t.lookup("p", None, "gpt-4o-mini-latest") is MINI
    assert t.lookup("p", None, "openrouter/gpt-4o-mini") is MINI  # vendor prefix
    assert t.lookup("groq-fast", "groq", "llama-3.1-8b-instant") is FAST  # provider first
    assert t.lookup("other", "groq", "llama-3.1-8b-instant") is MINI
    assert t.lookup("other", None, "llama-3.1-8b-instant") is None
    assert t.lookup("p", None, "blocked-2024-08-06") is GPT
    assert t.lookup("p", None, "blocked-20250101") is None  # a null price stops the search
    assert t.lookup("p", None, "unknown") is None


def test_lookup_memo_keeps_provider_kind_and_model_apart():
    """Each (provider, kind, model) is memoized on its own, a memoized None too; the lookups
    answer the same the first time, again, and interleaved."""
    t = table()
    queries = [
        ("p", None, "gpt-4o"),
        ("p", "openai", "gpt-4o"),
        ("openai", None, "gpt-4o"),
        ("openai", "openai", "gpt-4o"),
        ("groq-fast", "groq", "llama-3.1-8b-instant"),
        ("other", "groq", "llama-3.1-8b-instant"),
        ("other", None, "llama-3.1-8b-instant"),
        ("p", None, "gpt-4o-mini"),
        ("p", None, "nope"),
        ("p", None, "blocked"),
    ]
    fresh = [table().lookup(*q) for q in queries]
    assert fresh[:7] == [GPT, OPENAI_GPT, OPENAI_GPT, OPENAI_GPT, FAST, MINI, None]
    for _ in range(3):
        pairs = list(zip(queries, fresh, strict=True))
        for q, want in pairs + pairs[::-1]:
            assert t.lookup(*q) is want, q
            # a model string made anew (as a request's is) finds the same entry
            assert t.lookup(q[0], q[1], "".join(list(q[2]))) is want, q


def test_a_new_table_does_not_answer_from_the_old_memo():
    t = table()
    assert t.lookup("p", None, "gpt-4o") is GPT
    assert t.lookup("p", None, "new-model") is None
    cheaper = ModelPrice(1.0, 1.0)
    t2 = t.with_overrides({"gpt-4o": cheaper, "new-model": MINI})
    assert t2.lookup("p", None, "gpt-4o") is cheaper
    assert t2.lookup("p", None, "new-model") is MINI
    assert t2.cost(record("gpt-4o", prompt_tokens=1_000_000)) == 1.0
    assert t.lookup("p", None, "gpt-4o") is GPT  # the old table is unchanged
    assert t.cost(record("new-model", prompt_tokens=5)) is None


def test_lookups_past_the_memo_bound_are_still_right():
    t = table()
    for i in range(5000):
        assert t.lookup("p", None, f"m{i}") is None
    assert len(t._memo) <= 4096
    assert t.lookup("p", None, "gpt-4o-2024-08-06") is GPT
    assert t.lookup("p", None, "gpt-4o-2024-08-06") is GPT


TOKENS = [None, 0, 1, 7, 999, 123_457, 10**9 + 7, 10**15 + 3]


@pytest.mark.parametrize("price", [GPT, MINI, FAST, OPENAI_GPT, ModelPrice(0.0, 0.0)])
def test_cost_is_the_formula_bit_for_bit(price):
    t = PriceTable({"m": price})
    for prompt, completion, cached, reasoning in itertools.product(TOKENS, repeat=4):
        tokens = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cached_tokens": cached,
            "reasoning_tokens": reasoning,
        }
        want = formula(price, prompt, completion, cached, reasoning)
        got = t.cost(record("m", **tokens))
        also = price.cost(prompt, completion, cached, reasoning)
        if want is None:
            assert got is None and also is None
        else:
            assert got.hex() == want.hex() == also.hex(), tokens


def test_cost_of_any_record_like_object_and_kind():
    t = table()
    rec = record("gpt-4o", provider="p", prompt_tokens=1000, completion_tokens=300)
    like = SimpleNamespace(
        provider="p",
        upstream_model="gpt-4o",
        prompt_tokens=1000,
        completion_tokens=300,
        cached_tokens=None,
        reasoning_tokens=None,
    )
    assert t.cost(rec) == t.cost(like) == formula(GPT, 1000, 300, None, None)
    assert t.cost(rec, "openai") == t.cost(like, "openai") == formula(OPENAI_GPT, 1000, 300, 0, 0)
    assert t.cost(record("gpt-4o")) is None  # no usage: unknown, not 0
    assert t.cost(record("unknown", prompt_tokens=3)) is None

    class Fields(UsageRecord):  # a subclass is read like any object
        pass

    sub = Fields("r", "p", "x", "gpt-4o-mini", "relay", False, prompt_tokens=10, reasoning_tokens=2)
    assert t.cost(sub) == formula(MINI, 10, None, None, 2)


def test_a_price_subclass_keeps_its_own_cost():
    class Flat(ModelPrice):
        def cost(self, prompt, completion, cached=None, reasoning=None):
            return 42.0

    t = PriceTable({"m": Flat(1.0, 1.0), "n": ModelPrice(1.0, 1.0)})
    assert t.cost(record("m", prompt_tokens=1)) == 42.0
    assert t.cost(record("n", prompt_tokens=1)) == 1e-6
