"""Usage records and the per-dialect usage mappings, checked on recorded provider answers."""

from __future__ import annotations

import json
import logging
import time

import orjson
import pytest

from gwcore.testing import recorded_fixture
from gwcore.testing.mock_upstream import chat_stream_events
from gwcore.usage import (
    FIELDS,
    FanoutSink,
    LogSink,
    MemorySink,
    PricedFanout,
    Pricer,
    SinkBase,
    UsageRecord,
    UsageSink,
    new_record,
    usage_from_anthropic,
    usage_from_gemini,
    usage_from_openai,
    usage_from_responses,
)


def fixture(*parts: str):
    path = recorded_fixture(__file__, *parts)
    if path is None:
        pytest.skip("recorded fixtures are not in this checkout")
    return path


def sse_data(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out


def tokens(prompt, completion, total, cached, reasoning) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
    }


def test_openai_chat_usage_with_details():
    body = json.loads(fixture("openai", "chat_completion_reasoning.json").read_text())
    assert usage_from_openai(body["usage"]) == tokens(13, 85, 98, 0, 64)
    body = json.loads(fixture("groq", "chat_completion.json").read_text())
    assert usage_from_openai(body["usage"]) == tokens(38, 4, 42, None, None)
    body = json.loads(fixture("gemini", "chat_completion.json").read_text())  # OpenAI-compatible
    assert usage_from_openai(body["usage"]) == tokens(4, 2, 6, None, None)


def test_openai_stream_usage_chunk():
    chunks = sse_data(fixture("groq", "chat_completion_stream.txt").read_text())
    last = [c for c in chunks if c.get("usage")][-1]
    assert usage_from_openai(last["usage"]) == tokens(38, 4, 42, None, None)
    # the mock's include_usage stream: only the usage-only chunk carries numbers
    events = chat_stream_events("m", 6, True, 11)
    parsed = [orjson.loads(e[6:]) for e in events[:-1]]
    assert [p["usage"] for p in parsed[:-1]] == [None] * (len(parsed) - 1)
    assert parsed[-1]["choices"] == []
    assert usage_from_openai(parsed[-1]["usage"]) == tokens(11, 3, 14, 0, 0)


def test_missing_or_odd_usage_is_none_not_zero():
    assert usage_from_openai(None) == tokens(None, None, None, None, None)
    assert usage_from_openai({"prompt_tokens": 3, "completion_tokens": 2}) == tokens(
        3, 2, 5, None, None
    )
    odd = {"prompt_tokens": True, "completion_tokens": "7", "total_tokens": 9.0}
    assert usage_from_openai(odd) == tokens(None, None, 9, None, None)


def test_a_count_no_store_could_hold_is_no_count():
    """A token count is a whole number from 0 to 18 digits: a negative one, a larger one (a
    broken upstream's 25 digits, which a 64-bit ledger column refuses), a fraction or a bool is
    no count, on every provider's path; the largest 18-digit count and whole floats still are."""
    big = 10**18
    assert usage_from_openai({"prompt_tokens": big, "completion_tokens": 2}) == tokens(
        None, 2, None, None, None
    )
    assert usage_from_openai(
        {"prompt_tokens": big - 1, "completion_tokens": -1, "total_tokens": 10**25}
    ) == tokens(big - 1, None, None, None, None)
    assert usage_from_openai({"prompt_tokens": 3.0, "completion_tokens": 1e18}) == tokens(
        3, None, None, None, None
    )
    assert (
        usage_from_anthropic({"input_tokens": 10**30, "output_tokens": 5})["prompt_tokens"] is None
    )
    gemini = usage_from_gemini({"promptTokenCount": -4, "candidatesTokenCount": 7})
    assert gemini["prompt_tokens"] is None and gemini["completion_tokens"] == 7


def test_anthropic_stream_usage_is_cumulative_never_summed():
    events = sse_data(fixture("anthropic", "messages_stream.txt").read_text())
    start = next(e for e in events if e["type"] == "message_start")
    delta = [e for e in events if e["type"] == "message_delta"][-1]
    # message_start says output 3, message_delta says 5 (cumulative): 5, not 8
    assert usage_from_anthropic(start, delta) == tokens(10, 5, 15, 0, None)
    assert usage_from_anthropic(start["message"]["usage"], delta["usage"]) == tokens(
        10, 5, 15, 0, None
    )
    message = json.loads(fixture("anthropic", "messages.json").read_text())
    assert usage_from_anthropic(message) == tokens(14, 5, 19, None, None)
    thinking = json.loads(fixture("anthropic", "messages_extended_thinking.json").read_text())
    assert usage_from_anthropic(thinking["usage"]) == tokens(53, 211, 264, 0, None)


def test_anthropic_cache_tokens_count_as_prompt():
    start = {
        "input_tokens": 5,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 1,
    }
    assert usage_from_anthropic(start, {"output_tokens": 50}) == tokens(125, 50, 175, 100, None)
    assert usage_from_anthropic(None, None) == tokens(None, None, None, None, None)


def test_responses_usage():
    body = json.loads(fixture("openai", "responses.json").read_text())
    assert usage_from_responses(body["usage"]) == tokens(17, 5, 22, 0, 0)
    text = fixture("openai", "responses_stream.txt").read_text()
    done = next(e for e in sse_data(text) if e.get("type") == "response.completed")
    assert usage_from_responses(done["response"]["usage"]) == tokens(17, 5, 22, 0, 0)


def test_gemini_usage_metadata():
    meta = {
        "promptTokenCount": 40,
        "candidatesTokenCount": 10,
        "thoughtsTokenCount": 25,
        "cachedContentTokenCount": 32,
        "totalTokenCount": 75,
    }
    assert usage_from_gemini(meta) == tokens(40, 35, 75, 32, 25)
    assert usage_from_gemini({"promptTokenCount": 4, "candidatesTokenCount": 2}) == tokens(
        4, 2, 6, None, None
    )
    assert usage_from_gemini({"promptTokenCount": 4}) == tokens(4, None, None, None, None)


def test_usage_record_and_sinks(caplog):
    rec = UsageRecord("req-1", "openai", "openai/gpt-4o", "gpt-4o", "relay", True, status=200)
    assert not hasattr(rec, "__dict__")  # slots
    assert rec.prompt_tokens is None and rec.created_at > 0 and rec.aborted is False
    rec.set_tokens(usage_from_openai({"prompt_tokens": 3, "completion_tokens": 4}))
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (3, 4, 7)

    memory = MemorySink(maxlen=2)
    assert isinstance(memory, UsageSink)
    for i in range(3):
        memory.record(UsageRecord(f"r{i}", "p", "m", "m", "demo", False))
    assert [r.request_id for r in memory.records] == ["r1", "r2"]

    class Broken:
        def record(self, rec: UsageRecord) -> None:
            raise RuntimeError("disk full")

    logged = MemorySink()
    fanout = FanoutSink([Broken(), logged, LogSink()])
    with caplog.at_level(logging.INFO, logger="gwcore.usage"):
        fanout.record(rec)
    assert logged.records == [rec]
    lines = [r for r in caplog.records if r.name == "gwcore.usage" and r.levelno == logging.INFO]
    assert len(lines) == 1
    assert json.loads(lines[0].getMessage()) == rec.to_dict()
    assert any("disk full" in (r.exc_text or "") for r in caplog.records if r.levelno >= 40)


def test_usage_record_init_matches_its_fields():
    """__init__ takes FIELDS in order, by position or by name; the defaults are the documented
    ones; ``new_record`` makes the same record as the keyword call it stands for."""
    values = [f"v{i}" for i in range(len(FIELDS))]
    by_position = UsageRecord(*values)
    by_name = UsageRecord(**dict(zip(FIELDS, values, strict=True)))
    for name, value in zip(FIELDS, values, strict=True):
        assert getattr(by_position, name) == value, name
        assert getattr(by_name, name) == value, name
    assert by_position == by_name
    assert by_position.to_dict() == dict(zip(FIELDS, values, strict=True))
    assert repr(by_position).startswith("UsageRecord(request_id='v0', provider='v1'")
    before = time.time()
    rec = UsageRecord("r", "p", "m", "u", "relay", True)
    assert before <= rec.created_at <= time.time()
    defaults = {"status": 0, "aborted": False}
    for name in FIELDS[6:]:
        if name != "created_at":
            assert getattr(rec, name) == defaults.get(name), name
    assert UsageRecord("r", "p", "m", "u", "relay", True, created_at=5.0).created_at == 5.0
    made = new_record("r", "p", "m", "u", "relay", True, "key-1")
    assert before <= made.created_at <= time.time()
    made.created_at = 5.0
    assert made == UsageRecord("r", "p", "m", "u", "relay", True, created_at=5.0, key_id="key-1")
    assert made != UsageRecord("r", "p", "m", "u", "relay", True, created_at=5.0, key_id="other")


def test_fanout_reaches_every_kind_of_sink_in_order_and_isolates_failures(caplog):
    """A fanout calls the package's sinks (``SinkBase``: compiled, a C call) and any other object
    with a ``record``, in order; an override in a Python subclass wins; one failing sink, of
    either kind, is logged and stops nothing."""
    seen: list[tuple[str, str]] = []

    class Plain:  # not a SinkBase
        def __init__(self, name: str) -> None:
            self.name = name

        def record(self, rec: UsageRecord) -> None:
            seen.append((self.name, rec.request_id))

    class Noted(MemorySink):  # a SinkBase whose record a Python subclass overrides
        def record(self, rec: UsageRecord) -> None:
            seen.append(("noted", rec.request_id))
            super().record(rec)

    class Failing(MemorySink):
        def record(self, rec: UsageRecord) -> None:
            raise RuntimeError("sink down")

    class PlainFailing:
        def record(self, rec: UsageRecord) -> None:
            raise RuntimeError("plain down")

    memory, noted = MemorySink(), Noted()
    inner = FanoutSink([Plain("inner")])
    fanout = FanoutSink([Plain("a"), Failing(), memory, PlainFailing(), noted, inner, Plain("z")])
    assert all(isinstance(s, SinkBase) for s in (memory, noted, inner, fanout))
    recs = [UsageRecord(f"r{i}", "p", "m", "m", "relay", False) for i in range(2)]
    with caplog.at_level(logging.ERROR, logger="gwcore.usage"):
        for rec in recs:
            fanout.record(rec)
    assert seen == [(name, rec.request_id) for rec in recs for name in ("a", "noted", "inner", "z")]
    assert memory.records == recs and noted.records == recs
    failures = [r.exc_text or "" for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("sink down" in t for t in failures) == 2
    assert sum("plain down" in t for t in failures) == 2


class _Costs(Pricer):
    """A Pricer (compiled: its cost a C call), overridden in Python."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def cost(self, rec: UsageRecord, kind: str | None = None) -> float | None:
        self.calls.append((rec.request_id, kind))
        if rec.upstream_model == "broken":
            raise ValueError("no price")
        return 0.5 if rec.upstream_model == "priced" else None


@pytest.mark.parametrize("pricer", ["Pricer", "any object"])
def test_priced_fanout_prices_then_fans_out(pricer, caplog):
    costs = _Costs()
    if pricer == "any object":

        class Duck:  # not a Pricer: called as a Python method, the same way
            def cost(self, rec: UsageRecord, kind: str | None = None) -> float | None:
                return _Costs.cost(costs, rec, kind)  # type: ignore[arg-type]

        pricing: object = Duck()
    else:
        pricing = costs
    memory = MemorySink()
    fanout = PricedFanout(pricing, [memory], {"openai": "openai_kind"})
    recs = [
        UsageRecord("a", "openai", "x", "priced", "relay", False),
        UsageRecord("b", "other", "x", "priced", "relay", False),
        UsageRecord("c", "openai", "x", "unpriced", "relay", False),
        UsageRecord("d", "openai", "x", "broken", "relay", False),
        UsageRecord("e", "openai", "x", "priced", "relay", False, cost=0.0),  # has a cost
    ]
    with caplog.at_level(logging.ERROR, logger="gwcore.usage"):
        for rec in recs:
            fanout.record(rec)
    assert memory.records == recs  # every record, in order, the failed price too
    assert [r.cost for r in recs] == [0.5, 0.5, None, None, 0.0]
    assert costs.calls == [("a", "openai_kind"), ("b", None), ("c", "openai_kind"),
                           ("d", "openai_kind")]  # fmt: skip
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "pricing failed for broken"
    ]


def test_priced_fanout_takes_any_object_with_the_record_fields(caplog):
    """Not a UsageRecord (a duck-typed record): priced and fanned out the same way."""

    class Rec:
        def __init__(self, request_id: str, model: str, cost: float | None = None) -> None:
            self.request_id = request_id
            self.provider = "openai"
            self.upstream_model = model
            self.cost = cost

    costs = _Costs()
    got: list[object] = []

    class Plain:
        def record(self, rec: object) -> None:
            got.append(rec)

    memory = MemorySink()
    fanout = PricedFanout(costs, [memory, Plain()], {"openai": "k"})
    recs = [Rec("a", "priced"), Rec("b", "broken"), Rec("c", "priced", 2.0)]
    with caplog.at_level(logging.ERROR, logger="gwcore.usage"):
        for rec in recs:
            fanout.record(rec)  # type: ignore[arg-type]
    assert got == recs and memory.records == recs
    assert [r.cost for r in recs] == [0.5, None, 2.0]
    assert costs.calls == [("a", "k"), ("b", "k")]
    assert any("pricing failed for broken" in r.getMessage() for r in caplog.records)
