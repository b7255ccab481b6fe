"""The relay fast path end to end: real sockets, the mock upstream, gwcore in between."""

from __future__ import annotations

import asyncio
import gc
import json
import socket

import orjson
import pytest
from conftest import use_http
from gateway_harness import (
    CHUNK_END,
    chat_body,
    disconnect_after,
    front_buffers,
    gateway_with_mock,
    no_awaited_path,
    raw_post,
    read_stream_to_end,
    warm_pool,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gwcore.relay
from gwcore._twins import implementation
from gwcore.testing import Scenario, recorded_fixture, run

OPENAI_STREAM = recorded_fixture(__file__, "openai", "chat_completion_stream.txt")
GROQ_STREAM = recorded_fixture(__file__, "groq", "chat_completion_stream.txt")
needs_recorded = pytest.mark.skipif(
    OPENAI_STREAM is None or GROQ_STREAM is None,
    reason="shared/fixtures/recorded is not beside this checkout",
)


@pytest.fixture(autouse=True)
def http(sse, monkeypatch):
    """Every relay test runs over the compiled scanner and over its pure-Python twin. The front
    door is the relay's own build: the compiled relay cimports the compiled front door's channel
    type (the two are built and used together), so the twin front door runs with the twin relay,
    in the suite's run on the twins (``test_twins.py``)."""
    monkeypatch.setattr("gwcore.relay.StreamObserver", sse.StreamObserver)
    monkeypatch.setattr("gwcore.relay.SSEError", sse.SSEError)
    monkeypatch.setattr("gwcore.relay.RelayPump", sse.RelayPump)
    monkeypatch.setattr("gwcore.relay.usage_counts", sse.usage_counts)
    return use_http(implementation(gwcore.relay), monkeypatch)


def _events(payload: bytes) -> list[bytes]:
    return [e for e in payload.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


def _usage_of(payload: bytes) -> dict | None:
    usage = None
    for event in _events(payload):
        data = event.removeprefix(b"data: ")
        if data.startswith(b"{"):
            obj = orjson.loads(data)
            if obj.get("usage"):
                usage = obj["usage"]
    return usage


def _wire(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p) + CHUNK_END


def _pieces(body: bytes, cuts: list[int]) -> list[bytes]:
    out, prev = [], 0
    for pos in sorted(set(cuts)):
        if 0 < pos < len(body) and pos > prev:
            out.append(body[prev:pos])
            prev = pos
    out.append(body[prev:])
    return out


# ---- byte identity and elision, any split -------------------------------------------------------


@needs_recorded
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_stream_relayed_byte_identical_for_any_split(data):
    """The client asked for usage itself: every upstream byte reaches it unchanged, framing too."""
    body = data.draw(st.sampled_from([OPENAI_STREAM, GROQ_STREAM])).read_bytes()
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=12))

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(body, split_at=cuts))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.status == 200
            assert resp.body == _wire(_pieces(body, cuts))
            assert resp.headers["x-gwcore-route"] == "relay"
            assert resp.headers["cache-control"] == "no-cache"
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert "content-encoding" not in resp.headers
            (rec,) = h.sink.records
            expected = _usage_of(body)
            if expected is None:
                assert rec.prompt_tokens is None
            else:
                assert rec.prompt_tokens == expected["prompt_tokens"]
                assert rec.completion_tokens == expected["completion_tokens"]
                assert rec.total_tokens == expected["total_tokens"]
            assert rec.status == 200 and not rec.aborted and rec.stream

    run(main(), use_uvloop=True)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cuts=st.lists(st.integers(1, 6000), max_size=10), ask=st.booleans())
def test_injected_usage_chunk_elided_everything_else_unchanged(cuts, ask):
    """A client that did not ask for usage never sees the usage chunk the gateway asked for; the
    record still has the usage; every other byte of the payload passes unchanged."""

    async def main():
        async with gateway_with_mock(events=8) as h:
            # The mock's own stream, as it answers a request that asks for usage.
            upstream = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            full = upstream.payload()
            h.mock.scenarios.append(Scenario.replay(full, split_at=[c % len(full) for c in cuts]))
            # Indented: the gateway must not re-encode what it does not change.
            sent = json.dumps(chat_body(True, include_usage=ask or None), indent=1).encode()
            resp = await raw_post(h.host, h.port, sent)
            assert resp.status == 200 and resp.complete
            forwarded = h.mock.requests[-1].json()
            assert forwarded["stream_options"] == {"include_usage": True}
            if not ask:  # no stream_options sent: the client's bytes go on, plus one member
                assert h.mock.requests[-1].body == (
                    sent[:-1] + b',"stream_options":{"include_usage":true}}'
                )
            usage_event = [e for e in _events(full) if b'"choices":[]' in e]
            assert len(usage_event) == 1
            expected = full if ask else full.replace(usage_event[0] + b"\n\n", b"", 1)
            assert resp.payload() == expected
            assert _events(resp.payload())[-1] == b"data: [DONE]"
            (rec,) = h.sink.records
            usage = orjson.loads(usage_event[0].removeprefix(b"data: "))["usage"]
            assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["total_tokens"],
            )

    run(main(), use_uvloop=True)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # plain: read in C
        (b'{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}', (9, 3, 12, None, None)),
        # not plain (a float count, an escaped key): read by orjson, the same meaning
        (b'{"prompt_tokens":9.0,"completion_tokens":3}', (9, 3, 12, None, None)),
        (
            b'{"prompt\\u005ftokens":9,"completion_tokens":3,'
            b'"prompt_tokens_details":{"cached_tokens":4}}',
            (9, 3, 12, 4, None),
        ),
        # not an object at all: no counts
        (b"[1,2]", (None, None, None, None, None)),
    ],
)
def test_usage_recorded_from_plain_and_other_usage_objects(usage, expected):
    body = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        b'data: {"id":"c","choices":[],"usage":' + usage + b"}\n\n"
        b"data: [DONE]\n\n"
    )

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(body))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.payload() == body
            (rec,) = h.sink.records
            got = (
                rec.prompt_tokens,
                rec.completion_tokens,
                rec.total_tokens,
                rec.cached_tokens,
                rec.reasoning_tokens,
            )
            assert got == expected

    run(main(), use_uvloop=True)


def test_comments_and_pings_pass_through():
    body = b': ping\n\ndata: {"choices":[]}\n\n: keep-alive\r\n\r\ndata: [DONE]\n\n'

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(body))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.payload() == body

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("ask", [True, None])
def test_a_last_usage_chunk_without_its_blank_line(ask):
    """A stream whose last event, the usage chunk, never gets its blank line before the chunked
    body ends: the body's end ends the event. Asked for by the client, it passes unchanged;
    injected by the gateway, it is elided like a finished one. Its usage is recorded either way."""
    events = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    tail = b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}'

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(events + tail))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=ask))
            assert resp.status == 200 and resp.complete
            assert resp.payload() == (events + tail if ask else events)
            (rec,) = h.sink.records
            assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (1, 2, 3)

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("stream", [True, False])
def test_upstream_rate_limit_headers_reach_the_client_and_others_do_not(stream):
    """The provider's rate-limit and processing headers pass (any case of their names); its
    other headers (a cookie, its own ids, its framing) stay with the gateway."""
    passed = [
        ("X-RateLimit-Remaining-Tokens", "149999"),
        ("openai-processing-ms", "112"),
        ("Retry-After", "3"),
    ]
    kept = [("Set-Cookie", "id=1"), ("X-Upstream-Secret", "s"), ("Server", "mock-upstream")]

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario(headers=passed + kept))
            resp = await raw_post(h.host, h.port, chat_body(stream))
            assert resp.status == 200
            for name, value in passed:
                assert resp.headers[name.lower()] == value
            assert "set-cookie" not in resp.headers
            assert "x-upstream-secret" not in resp.headers
            assert resp.headers.get("server") != "mock-upstream"

    run(main(), use_uvloop=True)


# ---- the request side ----------------------------------------------------------------------------


def test_request_forwarded_unchanged_when_nothing_must_change():
    raw = (
        b'{"model": "gpt-test",  "messages": [{"role":"user","content":"hi"}], "temperature": 0.70}'
    )

    async def main():
        async with gateway_with_mock() as h:
            resp = await raw_post(h.host, h.port, raw)
            assert resp.status == 200
            assert h.mock.requests[-1].body == raw  # same bytes, spacing and all

    run(main(), use_uvloop=True)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"stream":true}',
        # not plain (a surrogate pair): orjson reads it
        b'{"model":"gpt-test","messages":[{"role":"user","content":"\\ud83d\\ude00"}],"stream":true}',
        b'{"model":"gpt-test","messages":[1],"stream":true,"stream_options":{"include_usage":true}}',
        b'{"model":"gpt-test","messages":[1],"stream":true,"stream_options":{"x":1}}',
    ],
)
def test_body_read_in_c_or_by_orjson_alike(raw, monkeypatch):
    """The gateway reads a plain chat body in C (``chat_request_fields``, compiled build) and
    any other with orjson; switched off, orjson reads every body. Either way the upstream gets
    the same bytes and the client the same stream, and the record is the same."""
    import gwcore.gateway

    async def once():
        async with gateway_with_mock() as h:
            resp = await raw_post(h.host, h.port, raw)
            assert resp.status == 200
            (rec,) = h.sink.records
            return (
                h.mock.requests[-1].body,
                resp.body,
                (rec.requested_model, rec.stream, rec.total_tokens),
            )

    calls = []
    real = gwcore.gateway.chat_request_fields

    def spy(body):
        calls.append(real(body))
        return calls[-1]

    monkeypatch.setattr(gwcore.gateway, "chat_request_fields", spy)
    first = run(once(), use_uvloop=True)
    assert len(calls) == (1 if gwcore.gateway._READ_FIELDS else 0)
    monkeypatch.setattr(gwcore.gateway, "_READ_FIELDS", False)
    assert run(once(), use_uvloop=True) == first
    assert len(calls) <= 1
    if "x" in raw.decode() or "ud83d" in raw.decode():
        assert not calls or calls[0] is None
    else:
        assert not calls or calls[0] is not None
    sent = orjson.loads(first[0])
    assert sent["stream_options"] == {"include_usage": True} or "x" in sent["stream_options"]


def test_qualified_model_rewritten_other_fields_kept():
    async def main():
        async with gateway_with_mock() as h:
            body = chat_body(False, model="mock/gpt-test")
            body.update(temperature=0.25, user="u-1", tools=[{"type": "function", "function": {}}])
            resp = await raw_post(h.host, h.port, body)
            assert resp.status == 200
            sent = h.mock.requests[-1].json()
            assert sent == {**body, "model": "gpt-test"}
            (rec,) = h.sink.records
            assert rec.requested_model == "mock/gpt-test" and rec.upstream_model == "gpt-test"

    run(main(), use_uvloop=True)


def test_each_provider_gets_its_own_path_key_and_route():
    """Requests to three providers interleaved (two relayed, on other paths with other keys; one
    translated): each goes where its provider says, with its key, and is recorded as its own
    (what the gateway reads of a provider once, per provider object, is never another's)."""
    providers = [
        {"name": "a", "type": "openai_compatible", "api_key": "sk-a", "models": ["m-a"]},
        {
            "name": "b",
            "type": "openai_compatible",
            "base_url": "/alt/v1",  # on the mock
            "api_key": "sk-b",
            "models": ["m-b"],
        },
        {"name": "c", "type": "anthropic", "api_key": "sk-c", "models": ["m-c"]},
    ]
    where = {
        "m-a": ("/v1/chat/completions", "Bearer sk-a", None),
        "m-b": ("/alt/v1/chat/completions", "Bearer sk-b", None),
        "m-c": ("/v1/messages", None, "sk-c"),
    }
    asks = [("m-a", True), ("m-b", False), ("m-c", False), ("m-a", False), ("m-c", True)] * 2

    async def main():
        async with gateway_with_mock(providers=providers) as h:
            for model, stream in asks:
                resp = await raw_post(h.host, h.port, chat_body(stream, model=model))
                assert resp.status == 200, resp.body
            sent = [
                (r.path, r.header("authorization"), r.header("x-api-key")) for r in h.mock.requests
            ]
            assert sent == [where[model] for model, _ in asks]
            recorded = [(r.provider, r.route, r.stream) for r in h.sink.records]
            assert recorded == [
                (model[-1], "translated" if model == "m-c" else "relay", stream)
                for model, stream in asks
            ]

    run(main(), use_uvloop=True)


def test_provider_plans_stay_bounded():
    """One plan per provider object, up to a bound: registries replaced at run time do not pile
    theirs up."""
    from gwcore import gateway as gateway_module
    from gwcore.config import parse_config
    from gwcore.gateway import Gateway
    from gwcore.providers import Provider
    from gwcore.usage import MemorySink

    gw = Gateway(parse_config({"from_env": False}, {}), sink=MemorySink(), refresh_models=False)
    kept = gateway_module._PLANS_KEPT
    for i in range(kept * 2 + 3):
        p = Provider.create("p", "openai_compatible", "http://127.0.0.1:9/v1", f"sk-{i}")
        plan = gw._plan(p)
        assert plan.name == "p" and plan.relay and plan.path == "/v1/chat/completions"
        assert f"Bearer sk-{i}" in plan.stream_block and gw._plans[p] is plan
        assert 1 <= len(gw._plans) <= kept


def test_client_credentials_never_forwarded():
    async def main():
        async with gateway_with_mock() as h:
            await raw_post(
                h.host,
                h.port,
                chat_body(False),
                headers={"Authorization": "Bearer client-secret", "x-api-key": "client-secret"},
            )
            req = h.mock.requests[-1]
            assert req.header("authorization") == "Bearer sk-provider-key"
            assert req.header("x-api-key") is None
            assert "client-secret" not in str(req.headers)
            assert req.header("accept-encoding") == "identity"

    run(main(), use_uvloop=True)


def test_client_headers_rendered_once_per_combination_and_changing_ones_each_time(monkeypatch):
    """The client's forwarded headers reach the upstream as sent, request after request: those
    whose values repeat from a cache of checked lines (an entry per client's combination: two
    user agents, two entries), a header with a new value every request (a trace id) kept out of
    the cache key once it had more values than a client's header has, checked each time."""
    from gwcore import gateway

    # (fresh caches: earlier tests' clients sent other headers)
    monkeypatch.setattr(gateway, "_CLIENT_LINES", {})
    monkeypatch.setattr(gateway, "_VOLATILE", set())
    monkeypatch.setattr(gateway, "_SEEN_VALUES", {})
    kept = gateway._VALUES_KEPT

    async def main():
        async with gateway_with_mock() as h:
            for i in range(kept + 8):
                trace = f"00-{i:032x}-{i:016x}-01"
                agent = ("OpenAI/Python 1.0", "OpenAI/Node 4.0")[i % 2]
                sdk = {"User-Agent": agent, "X-Stainless-Lang": "python"}
                resp = await raw_post(
                    h.host, h.port, chat_body(False), headers={**sdk, "traceparent": trace}
                )
                assert resp.status == 200
                req = h.mock.requests[-1]
                assert req.header("user-agent") == agent
                assert req.header("x-stainless-lang") == "python"
                assert req.header("traceparent") == trace
                assert req.header("x-request-id") == resp.headers["x-request-id"]
                names = [name.lower() for name, _ in req.headers]
                assert names.count("user-agent") == names.count("traceparent") == 1
            assert {"traceparent"} == gateway._VOLATILE
            # one entry per trace id until it turned volatile, then one per user agent
            assert len(gateway._CLIENT_LINES) <= kept + 1 + 2

    run(main(), use_uvloop=True)


def test_client_lines_refuse_what_build_request_refuses_and_keep_the_order():
    """(The front door already refuses such headers: this is for a handler's own headers.)"""
    from gwcore import gateway
    from gwcore.errors import GatewayError

    for flat in (["x-odd", "bad\x01value"], ["x-ok", "1", "bad name", "v"]):
        before = dict(gateway._CLIENT_LINES)
        with pytest.raises(GatewayError) as err:
            gateway._client_lines("Block: b\r\n", flat)
        assert err.value.status == 400
        assert err.value.message == f"invalid character in header {flat[-2]!r}"
        assert before == gateway._CLIENT_LINES
    gateway._VOLATILE.add("x-changing")
    try:
        block, rest = gateway._client_lines(
            "Block: b\r\n", ["x-a", "1", "x-changing", "2", "x-b", "3", "x-changing", "4"]
        )
        assert block == "Block: b\r\nx-a: 1\r\nx-b: 3\r\n"
        assert rest == [("x-changing", "2"), ("x-changing", "4")]
    finally:
        gateway._VOLATILE.discard("x-changing")


def test_client_lines_memory_stays_bounded_when_no_name_can_turn_volatile(monkeypatch):
    """With the set of volatile names full, a header with a new value per request still keeps at
    most one value more than it takes to turn volatile, and the cache its bound."""
    from gwcore import gateway

    monkeypatch.setattr(gateway, "_CLIENT_LINES", {})
    monkeypatch.setattr(gateway, "_VOLATILE", {f"x-full-{i}" for i in range(256)})
    monkeypatch.setattr(gateway, "_SEEN_VALUES", {})
    for i in range(3000):
        block, rest = gateway._client_lines("B: b\r\n", ["x-trace", str(i), "x-a", "1"])
        assert block == f"B: b\r\nx-trace: {i}\r\nx-a: 1\r\n" and rest == []
    assert len(gateway._SEEN_VALUES["x-trace"]) == gateway._VALUES_KEPT + 1
    assert len(gateway._SEEN_VALUES["x-a"]) == 1
    assert len(gateway._CLIENT_LINES) <= 1024


def _copy(text: str) -> str:
    """An equal string that is another object (the front door hands out a new one for a long
    value, or once its caches evicted one)."""
    return "".join(list(text))


_CLIENT_NAMES = ["user-agent", "x-stainless-lang", "authorization", "content-length", "x-hop"]
_CLIENT_VALUES = ["ua/1", "ua/2", "python", "Bearer k", "91", "x-hop", "keep-alive"]


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from([*_CLIENT_NAMES, "connection"]),
                    st.sampled_from(range(len(_CLIENT_VALUES))),
                    st.booleans(),  # the value as a new object
                ),
                max_size=6,
            ),
            st.booleans(),  # the other provider (another dropped set, another block)
            st.sampled_from(range(3)),  # which client connection sends it
        ),
        min_size=1,
        max_size=12,
    ),
    volatile=st.booleans(),
)
def test_client_head_is_client_lines_of_the_forwarded_headers(requests, volatile):
    """Request after request, from three client connections, with header objects the same as an
    earlier request's or new ones (equal or not), the client's part of the upstream head is
    exactly what forwarding them anew makes (``_client_lines`` of ``_forwarded``): the result
    of a connection's last request is reused only for the very same name objects and the very
    same objects of every value that counts (the forwarded ones, and Connection's), whatever the
    values not forwarded (a credential, the body's length) are."""
    from gwcore import gateway
    from gwcore.upstream import HOP_BY_HOP, header_block

    names = {n: _copy(n) for n in [*_CLIENT_NAMES, "connection"]}  # one object per name
    values = [_copy(v) for v in _CLIENT_VALUES]
    providers = [
        ("A: a\r\n", gateway._NOT_FORWARDED | HOP_BY_HOP),
        ("B: b\r\n", gateway._NOT_FORWARDED | HOP_BY_HOP | frozenset({"x-stainless-lang"})),
    ]
    clients = [tuple(["127.0.0.1", 5000]), tuple(["127.0.0.1", 5000]), None]  # equal: two
    saved = (
        gateway._SHAPE_OF,
        gateway._CLIENT_LINES,
        gateway._VOLATILE,
        gateway._SEEN_VALUES,
        gateway._VERDICTS,
    )
    gateway._SHAPE_OF = {}
    gateway._CLIENT_LINES = {}
    gateway._VOLATILE = {"x-hop"} if volatile else set()
    gateway._SEEN_VALUES = {}
    gateway._VERDICTS = {}
    try:
        for fields, other, c in requests:
            block, dropped = providers[other]
            client = clients[c]
            headers = {}
            for name, v, fresh in fields:
                headers[names[name]] = _copy(values[v]) if fresh else values[v]
            known = gateway._known_shape(headers, dropped, block, client)
            lines, rest = gateway._client_head(block, headers, dropped, client)
            forwarded = gateway._forwarded(headers, dropped)
            if forwarded:
                want_lines, want_rest = gateway._client_lines(block, forwarded)
            else:
                want_lines, want_rest = block, []
            # The same upstream head: the rendered lines, then the pairs left for build_request
            # (which part is cached may differ once a name turned volatile; the bytes may not).
            assert lines + header_block(rest) == want_lines + header_block(want_rest)
            assert known is None or (known, []) == (lines, rest)
            rest.append(("x-request-id", "r"))  # (the caller's: a new list each time)
        assert len(gateway._SHAPE_OF) <= 3
    finally:
        (
            gateway._SHAPE_OF,
            gateway._CLIENT_LINES,
            gateway._VOLATILE,
            gateway._SEEN_VALUES,
            gateway._VERDICTS,
        ) = saved


def test_client_head_reuses_a_shape_only_for_the_same_objects(monkeypatch):
    """A connection's third request with the very same header objects as its second is answered
    from the shape the second left (the first leaves a mark only); a forwarded value that is
    another object (even an equal one), a changed Connection value, another connection or
    another provider is not; a value that is not forwarded (the length) may change."""
    from gwcore import gateway
    from gwcore.upstream import HOP_BY_HOP

    for name, value in (("_SHAPE_OF", {}), ("_CLIENT_LINES", {}), ("_VOLATILE", set())):
        monkeypatch.setattr(gateway, name, value)
    monkeypatch.setattr(gateway, "_SEEN_VALUES", {})
    dropped = gateway._NOT_FORWARDED | HOP_BY_HOP
    conn, other_conn = ("10.0.0.1", 4000), ("10.0.0.1", 4001)
    ua, n1, n2 = _copy("ua/1"), _copy("10"), _copy("20")
    first = {"user-agent": ua, "content-length": n1, "x-a": _copy("1")}
    lines, rest = gateway._client_head("B\r\n", first, dropped, conn)
    assert lines == "B\r\nuser-agent: ua/1\r\nx-a: 1\r\n" and rest == []
    assert gateway._known_shape(first, dropped, "B\r\n", conn) is None  # a mark only
    assert gateway._client_head("B\r\n", first, dropped, conn) == (lines, [])
    assert gateway._known_shape(first, dropped, "B\r\n", conn) == lines
    again = dict(first)
    again["content-length"] = n2  # not forwarded: the shape still holds
    assert gateway._known_shape(again, dropped, "B\r\n", conn) == lines
    other = dict(first)
    other["user-agent"] = _copy("ua/1")  # equal, another object
    assert gateway._known_shape(other, dropped, "B\r\n", conn) is None
    assert gateway._known_shape(first, dropped, "C\r\n", conn) is None  # another block
    assert gateway._known_shape(first, dropped, "B\r\n", other_conn) is None
    assert gateway._known_shape({**first, "x-b": ua}, dropped, "B\r\n", conn) is None
    hop = {"connection": _copy("x-a"), **first}
    for _ in range(2):
        assert gateway._client_head("B\r\n", hop, dropped, conn) == (
            "B\r\nuser-agent: ua/1\r\n",
            [],
        )
    assert gateway._known_shape(hop, dropped, "B\r\n", conn) == "B\r\nuser-agent: ua/1\r\n"
    hop2 = dict(hop)
    hop2["connection"] = _copy("close")  # x-a is forwarded again
    assert gateway._known_shape(hop2, dropped, "B\r\n", conn) is None
    assert gateway._client_head("B\r\n", hop2, dropped, conn)[0] == lines


def test_client_head_memory_stays_bounded(monkeypatch):
    """One short-lived connection per request: a mark each, the marks bounded."""
    from gwcore import gateway
    from gwcore.upstream import HOP_BY_HOP

    monkeypatch.setattr(gateway, "_SHAPE_OF", {})
    dropped = gateway._NOT_FORWARDED | HOP_BY_HOP
    headers = {"user-agent": "ua/1"}
    for port in range(gateway._SHAPES_KEPT + 100):
        assert gateway._client_head("B\r\n", headers, dropped, ("10.0.0.1", port)) == (
            "B\r\nuser-agent: ua/1\r\n",
            [],
        )
    assert 0 < len(gateway._SHAPE_OF) <= 100


def test_headers_the_client_names_in_connection_are_not_forwarded():
    """RFC 9110 7.6.1: a header the client's Connection header nominates is hop-by-hop too."""

    async def main():
        async with gateway_with_mock() as h:
            await raw_post(
                h.host,
                h.port,
                chat_body(False),
                headers={"Connection": "keep-alive, X-Hop", "X-Hop": "hop", "X-Keep": "end"},
            )
            req = h.mock.requests[-1]
            assert req.header("x-hop") is None
            assert req.header("x-keep") == "end"  # end-to-end headers still pass

    run(main(), use_uvloop=True)


def test_forwarded_headers_are_the_end_to_end_ones_only():
    """One pass over the client's headers: what the gateway sets, credentials, the fixed
    hop-by-hop set, Proxy-*, what Connection names and the provider's own headers stay behind,
    whatever the case of the names."""
    from gwcore.gateway import _NOT_FORWARDED, _forwarded
    from gwcore.upstream import HOP_BY_HOP

    dropped = _NOT_FORWARDED | HOP_BY_HOP | frozenset({"openai-beta"})
    headers = {
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "Proxy-Foo": "p",
        "TE": "trailers",
        "Upgrade": "h2c",
        "Authorization": "Bearer client",
        "X-Api-Key": "client",
        "Cookie": "c=1",
        "Host": "gw",
        "Content-Length": "10",
        "OpenAI-Beta": "own",
        "X-Keep": "k",
        "user-agent": "ua",
    }
    assert _forwarded(headers, dropped) == ["x-keep", "k", "user-agent", "ua"]
    assert _forwarded({"x-keep": "k"}, dropped) == ["x-keep", "k"]
    # Again (each name's verdict remembered per dropped set), and for another provider's set.
    assert _forwarded(headers, dropped) == ["x-keep", "k", "user-agent", "ua"]
    assert _forwarded(headers, _NOT_FORWARDED | HOP_BY_HOP) == [
        *("openai-beta", "own"),
        *("x-keep", "k"),
        *("user-agent", "ua"),
    ]


def test_request_on_an_idle_pooled_connection_needs_no_task():
    async def main():
        async with gateway_with_mock() as h:
            await warm_pool(h)
            no_awaited_path(h)
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            h.mock.requests.clear()
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 200 and resp.complete
            assert resp.headers["x-gwcore-route"] == "relay"
            (rec,) = h.sink.records
            assert rec.status == 200 and not rec.aborted
            assert rec.total_tokens == _usage_of(direct.payload())["total_tokens"]
            assert [r.connection for r in h.mock.requests] == [1]  # the pooled one

    run(main(), use_uvloop=True)


def test_stale_pooled_connection_is_sent_again_on_a_fresh_one():
    async def main():
        async with gateway_with_mock() as h:
            await warm_pool(h)
            h.mock.scenarios.append(Scenario(reset=True))  # closed as the request arrives
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 200 and resp.complete
            assert [r.connection for r in h.mock.requests] == [1, 2]
            (rec,) = h.sink.records
            assert rec.status == 200 and not rec.aborted and rec.total_tokens

            await asyncio.sleep(0.01)
            h.sink.clear()
            h.mock.requests.clear()
            h.mock.scenarios.extend([Scenario(reset=True), Scenario(reset=True)])
            resp = await raw_post(h.host, h.port, chat_body(True))  # the fresh one fails too
            assert resp.status == 502
            assert orjson.loads(resp.payload())["error"]["code"] == "upstream_closed"
            (rec,) = h.sink.records
            assert rec.status == 502 and len(h.mock.requests) == 2

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_a_relayed_request_leaves_no_cycles_behind(pooled):
    """Refcounting frees every object of a finished request (no cycle left for the collector:
    its pauses grow with the garbage, and a busy gateway makes it run often)."""

    async def main():
        async with gateway_with_mock() as h:
            if pooled:
                await warm_pool(h)
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(10):
                    resp = await raw_post(h.host, h.port, chat_body(True))
                    assert resp.status == 200 and resp.complete
                gc.collect()
                ours = [o for o in gc.garbage if type(o).__module__.startswith("gwcore")]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert ours == []

    run(main(), use_uvloop=True)


def test_a_stream_the_upstream_drops_leaves_no_cycles_behind():
    """The same after an upstream that drops the connection mid-stream: the connection lets go
    of the pump (which holds the relay, which holds the exchange, which holds the connection)."""

    async def main():
        async with gateway_with_mock(events=6) as h:
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(3):
                    h.mock.scenarios.append(Scenario(drop_at=400))
                    resp = await raw_post(h.host, h.port, chat_body(True))
                    assert resp.status == 200
                    assert b"upstream_closed" in resp.body
                gc.collect()
                ours = [  # (the mock's connections that dropped are its own business)
                    o
                    for o in gc.garbage
                    if type(o).__module__.startswith("gwcore")
                    and not type(o).__module__.startswith("gwcore.testing")
                ]
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert ours == []
            assert len(h.sink.records) == 3 and all(r.aborted for r in h.sink.records)

    run(main(), use_uvloop=True)


def test_upstream_keepalive_connection_reused():
    async def main():
        async with gateway_with_mock() as h:
            for _ in range(3):
                resp = await raw_post(h.host, h.port, chat_body(True))
                assert resp.status == 200 and resp.complete
            assert len({r.connection for r in h.mock.requests}) == 1

    run(main(), use_uvloop=True)


# ---- non-streaming -------------------------------------------------------------------------------


def test_non_streaming_relayed_as_received_with_usage():
    async def main():
        async with gateway_with_mock() as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(False))
            resp = await raw_post(h.host, h.port, chat_body(False))
            assert resp.status == 200
            assert resp.payload() == direct.payload()
            usage = orjson.loads(direct.payload())["usage"]
            (rec,) = h.sink.records
            assert rec.prompt_tokens == usage["prompt_tokens"] and not rec.stream

    run(main(), use_uvloop=True)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "authentication_error"),
        (404, "not_found_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_upstream_error_status_before_first_byte(status, etype, pooled):
    async def main():
        async with gateway_with_mock() as h:
            if pooled:
                await warm_pool(h)
                no_awaited_path(h)
            h.mock.scenarios.append(Scenario.error(status, "upstream says no", code="some_code"))
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == status
            err = orjson.loads(resp.payload())["error"]
            assert err["type"] == etype
            assert err["message"] == "upstream says no"
            assert err["code"] == "some_code"
            (rec,) = h.sink.records
            assert rec.status == status and rec.error == "upstream says no"

    run(main(), use_uvloop=True)


def test_upstream_unreachable_is_502():
    async def main():
        providers = [
            {"name": "dead", "type": "openai_compatible", "base_url": "http://127.0.0.1:9/v1"}
        ]
        async with gateway_with_mock(providers=providers) as h:
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 502
            assert orjson.loads(resp.payload())["error"]["code"] == "upstream_unreachable"
            (rec,) = h.sink.records
            assert rec.status == 502

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_upstream_header_timeout_is_504(pooled):
    async def main():
        async with gateway_with_mock(upstream={"header_timeout": 0.2}) as h:
            if pooled:
                await warm_pool(h)
                no_awaited_path(h)
            h.mock.scenarios.append(Scenario(hang=True))
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 504
            assert orjson.loads(resp.payload())["error"]["type"] == "timeout_error"
            (rec,) = h.sink.records
            assert rec.status == 504

    run(main(), use_uvloop=True)


def test_upstream_drop_after_first_byte_is_terminal_error_event():
    async def main():
        async with gateway_with_mock(events=6) as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            full = direct.body  # the wire as the mock answers the gateway's request
            # Cut the wire right after the third chunk: an event and chunk boundary.
            pos = 0
            for _ in range(3):
                eol = full.index(b"\r\n", pos)
                pos = eol + 2 + int(full[pos:eol], 16) + 2
            h.mock.scenarios.append(Scenario(drop_at=pos))
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 200 and resp.complete  # a clean end of the chunked body
            events = _events(resp.payload())
            assert len(events) == 4
            last = orjson.loads(events[-1].removeprefix(b"data: "))
            assert last["error"]["code"] == "upstream_closed"
            assert b"[DONE]" not in resp.payload()
            (rec,) = h.sink.records
            assert rec.aborted and rec.error

    run(main(), use_uvloop=True)


def test_upstream_drop_mid_chunk_breaks_the_client_connection():
    """Raw pass-through cut mid-chunk: no event can be appended honestly, so the client sees a
    broken body, never a clean-looking truncated one."""

    async def main():
        async with gateway_with_mock(events=6) as h:
            h.mock.scenarios.append(Scenario(drop_at=150))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.status == 200
            assert not resp.complete
            (rec,) = h.sink.records
            assert rec.aborted

    run(main(), use_uvloop=True)


def test_upstream_drop_mid_event_while_eliding_ends_with_error_event():
    """When the gateway holds back an unfinished event (elision mode), a cut mid-event still
    leaves the client at an event boundary: it gets the terminal error event and a clean end."""

    async def main():
        async with gateway_with_mock(events=6) as h:
            h.mock.scenarios.append(Scenario(drop_at=150))
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 200 and resp.complete
            last = _events(resp.payload())[-1]
            assert orjson.loads(last.removeprefix(b"data: "))["error"]["code"] == "upstream_closed"
            (rec,) = h.sink.records
            assert rec.aborted

    run(main(), use_uvloop=True)


# ---- the response head ---------------------------------------------------------------------------


def _data_segments_in(sock: socket.socket) -> int:
    """Segments carrying data this socket received (Linux ``tcp_info.tcpi_data_segs_in``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[152:156], "little")


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")
@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_head_leaves_with_the_first_event(pooled):
    """The upstream's head and first event arrive in one piece: the client gets its head and that
    event in one write (one TCP segment), then one segment per upstream write."""
    body = b"".join(b'data: {"choices":[],"n":%d}\n\n' % i for i in range(6))
    cuts = [len(body) * i // 6 for i in range(1, 6)]

    async def main():
        async with gateway_with_mock() as h:
            if pooled:
                await warm_pool(h)
                no_awaited_path(h)
            h.mock.scenarios.append(Scenario.replay(body, split_at=cuts, pace_ms=30))
            reader, writer = await asyncio.open_connection(h.host, h.port)
            try:
                sock = writer.get_extra_info("socket")
                data = orjson.dumps(chat_body(True, include_usage=True))
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
                )
                raw = b""
                while not raw.endswith(CHUNK_END):
                    chunk = await asyncio.wait_for(reader.read(65536), 5)
                    assert chunk
                    raw += chunk
                assert raw.startswith(b"HTTP/1.1 200 ")
                assert raw.partition(b"\r\n\r\n")[2] == _wire(_pieces(body, cuts))
                # six upstream writes (the head rode with the first): six segments, not seven
                assert _data_segments_in(sock) <= 6
            finally:
                writer.close()

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
def test_head_alone_is_not_held_back(pooled):
    """An upstream that sends its head and then thinks: the client has the head at once."""

    async def main():
        async with gateway_with_mock() as h:
            if pooled:
                await warm_pool(h)
                no_awaited_path(h)
            h.mock.scenarios.append(Scenario(head_separate=True, stall_at=0))
            reader, writer = await asyncio.open_connection(h.host, h.port)
            try:
                data = orjson.dumps(chat_body(True))
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 1.0)
                assert head.startswith(b"HTTP/1.1 200 ")
                assert b"x-gwcore-route: relay" in head.lower()
            finally:
                writer.close()

    run(main(), use_uvloop=True)


# ---- client disconnects --------------------------------------------------------------------------


@pytest.mark.parametrize("pooled", [False, True], ids=["fresh", "pooled"])
@pytest.mark.parametrize("when", ["before_head", "waiting_first_event", "mid_stream", "non_stream"])
def test_client_disconnect_closes_upstream_within_50ms(when, pooled):
    async def main():
        async with gateway_with_mock(events=200, pace_ms=5) as h:
            if pooled:
                await warm_pool(h)
                no_awaited_path(h)
            body, read_bytes = chat_body(True), 600
            if when == "before_head":
                h.mock.scenarios.append(Scenario(hang=True))
                read_bytes = 0
            elif when == "waiting_first_event":  # the head came, the first token did not
                h.mock.scenarios.append(Scenario(head_separate=True, stall_at=0))
                read_bytes = 100
            elif when == "non_stream":
                answer = orjson.dumps({"id": "x", "choices": [], "pad": "y" * 5000})
                h.mock.scenarios.append(
                    Scenario.replay(
                        answer, content_type="application/json", framing="length", stall_at=1000
                    )
                )
                body, read_bytes = chat_body(False), 100
            t0 = await disconnect_after(h, body, read_bytes=read_bytes)
            closed_at = await h.mock.wait_closed(1, timeout=2.0)
            assert closed_at - t0 < 0.05
            await asyncio.sleep(0.05)
            stats = h.gateway.pool.stats()
            assert all(s["idle"] == 0 and s["open"] == 0 for s in stats.values())
            (rec,) = h.sink.records
            assert rec.aborted

    run(main(), use_uvloop=True)


# ---- flow control --------------------------------------------------------------------------------


def test_client_that_stops_reading_pauses_the_upstream(http):
    """Crossed flow control: a client that reads nothing makes the gateway stop reading the
    upstream, so the backlog stays in the upstream's socket buffers, not in gateway memory."""
    event = b"data: " + b'{"choices":[{"delta":{"content":"' + b"x" * 900 + b'"}}]}' + b"\n\n"
    body = event * 20_000 + b"data: [DONE]\n\n"  # ~19 MB

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(
                Scenario.replay(body, split_at=list(range(65536, len(body), 65536)))
            )
            reader, writer = await asyncio.open_connection(h.host, h.port)
            data = orjson.dumps(chat_body(True, include_usage=True))
            writer.transport.set_write_buffer_limits(high=0)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
            )
            writer.transport.pause_reading()  # the client reads nothing from now on
            await asyncio.sleep(1.0)
            backlog = sum(
                c.transport.get_write_buffer_size()
                for c in h.mock._conns.values()
                if c.transport is not None
            )
            # What the gateway did not take stays at the upstream (the kernel's socket buffers
            # on the three hops hold a few MB more)...
            assert backlog > 5_000_000
            # ...and the gateway's own buffer towards the client stays under its high-water mark
            # plus one read (the loop reads at most 256 KiB at a time).
            buffered = front_buffers(http)
            assert buffered and max(buffered) <= 256 * 1024 + 256 * 1024
            writer.transport.resume_reading()
            # Then everything arrives, in order: the pieces the relay wrote to the socket itself
            # and those the transport held while the client read nothing.
            status, payload = await read_stream_to_end(reader)
            assert b" 200 " in status
            assert payload == body
            writer.close()

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("use_uvloop", [True, False])
def test_the_pump_writes_to_the_client_socket_on_uvloop(monkeypatch, use_uvloop):
    """On uvloop the relay hands its pump the client's socket (with the transport's buffer size
    to check first); on the stdlib loop, whose write sends at once, it does not. The client gets
    the same bytes either way."""
    made = []
    real = gwcore.relay.RelayPump

    def pump(*args):
        made.append(args)
        return real(*args)

    monkeypatch.setattr("gwcore.relay.RelayPump", pump)

    async def main():
        async with gateway_with_mock(events=40) as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            for _ in range(3):  # a new connection, then two on a pooled upstream connection
                resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
                assert resp.status == 200 and resp.complete
                assert resp.payload() == direct.payload()
            assert [r.completion_tokens for r in h.sink.records] == [37] * 3

    run(main(), use_uvloop=use_uvloop)
    assert len(made) == 3
    for args in made:
        fd, transport = args[4], args[5]
        if use_uvloop:
            assert fd >= 0 and transport.is_closing()  # (the connections are closed by now)
        else:
            assert fd == -1 and transport is None


# ---- other framings ------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "close"])
def test_stream_with_unchunked_upstream_framing_is_reframed(framing):
    body = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n'

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(body, framing=framing, split_at=[7, 30]))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.status == 200 and resp.complete
            assert resp.payload() == body
            (rec,) = h.sink.records
            assert rec.status == 200 and not rec.aborted

    run(main(), use_uvloop=True)


def test_http10_client_gets_the_stream_without_chunked_framing():
    async def main():
        async with gateway_with_mock(events=5) as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            reader, writer = await asyncio.open_connection(h.host, h.port)
            data = orjson.dumps(chat_body(True, include_usage=True))
            writer.write(
                b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
            )
            raw = await asyncio.wait_for(reader.read(-1), 5)  # the body ends with the connection
            head, _, payload = raw.partition(b"\r\n\r\n")
            assert b" 200 " in head.split(b"\r\n")[0]
            assert b"transfer-encoding" not in head.lower()
            assert payload == direct.payload()
            writer.close()

    run(main(), use_uvloop=True)


_json_members = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
    min_size=1,
    max_size=5,
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    obj=_json_members,
    indent=st.sampled_from([None, 1, 2]),
    pad=st.text(alphabet=" \t\r\n", max_size=3),
)
def test_member_added_to_the_clients_bytes(sse, obj, indent, pad):
    """The injected ``stream_options`` goes in as one more member after the client's bytes, which
    stay as sent (whitespace, key order, number spelling): the result parses to the client's
    object plus that member (both implementations of ``with_member``)."""
    from gwcore.gateway import _INCLUDE_USAGE

    obj.pop("stream_options", None)
    if not obj:
        obj["model"] = "m"
    raw = (json.dumps(obj, indent=indent) + pad).encode()
    out = sse.with_member(raw, _INCLUDE_USAGE)
    assert orjson.loads(out) == {**orjson.loads(raw), "stream_options": {"include_usage": True}}
    body = raw.rstrip(b" \t\r\n")
    assert out.startswith(body[:-1]) and out.endswith(raw[len(body) - 1 :])


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=40), member=st.binary(max_size=12))
def test_with_member_compiled_is_the_twin_on_any_bytes(sse_pair, raw, member):
    """Any bytes at all (not only a checked object): the compiled ``with_member`` answers the
    twin's bytes, byte for byte (trailing whitespace kept, the last other byte replaced)."""
    compiled, twin = sse_pair
    tail = bytes(b" \t\r\n"[i % 4] for i in range(len(member) % 5))
    for whole in (raw, raw + b"}" + tail, tail):
        assert compiled.with_member(whole, member) == twin.with_member(whole, member)


def test_new_relay_is_the_constructor_without_the_call():
    """``new_relay`` (the gateway's C call) sets every attribute ``RelayedResponse(...)`` sets, to
    the same value: the names come from the twin's instance dictionary."""
    import importlib.util
    from pathlib import Path

    import gwcore.relay as relay
    from gwcore.usage import UsageRecord

    source = Path(relay.__file__).with_name("relay.py")
    spec = importlib.util.spec_from_file_location("_relay_twin_names", source)
    twin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(twin)
    record = UsageRecord("r", "p", "m", "u", "relay", True)
    sink = object()
    names = sorted(vars(twin.RelayedResponse(None, record, sink, True, False, 1.5)))
    assert {"channel", "record", "sink", "stream", "elide_usage", "started_at", "_mode"} <= set(
        names
    )
    for args in ((None, record, sink, True, False, 1.5), (None, record, sink, False, True, 2.0)):
        made, called = relay.new_relay(*args), relay.RelayedResponse(*args)
        assert type(made) is relay.RelayedResponse
        for name in names:
            a, b = getattr(made, name), getattr(called, name)
            assert a == b or (a is b), name


def test_the_record_reaches_any_sink_once():
    """A package sink (a ``SinkBase``: a C call in the compiled relay) and any other object with a
    ``record`` method each get the record exactly once."""
    import gwcore.relay as relay
    from gwcore.usage import MemorySink, UsageRecord

    class PlainSink:
        def __init__(self) -> None:
            self.got: list = []

        def record(self, rec: UsageRecord) -> None:
            self.got.append(rec)

    for sink in (MemorySink(), PlainSink()):
        record = UsageRecord("r", "p", "m", "u", "relay", True)
        response = relay.new_relay(None, record, sink, True, False, 0.0)
        response.record_failure(502, "upstream unreachable")
        response.record_failure(504, "again")  # one record per request
        got = sink.records if isinstance(sink, MemorySink) else sink.got
        assert got == [record] and (record.status, record.error) == (502, "upstream unreachable")


_RESPONSE_NAMES = st.sampled_from(
    [
        b"x-ratelimit-remaining-tokens",
        b"X-RateLimit-Remaining-Tokens",
        b"openai-processing-ms",
        b"Retry-After",
        b"set-cookie",
        b"server",
        b"x-request-id",
        b"cf-ray",
    ]
)
_RESPONSE_VALUES = st.binary(max_size=12) | st.sampled_from([b"", b"0s", b"29999000", b"\xe9t\xe9"])


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(_RESPONSE_NAMES, _RESPONSE_VALUES), max_size=12))
def test_passed_lines_are_header_lines_of_the_passing_headers(headers):
    """The client's lines for an upstream head: exactly ``header_lines`` of the headers in
    ``_PASS_HEADERS`` (names in the upstream's case, values decoded), the same error for a CR or
    LF in a passing value; the verdicts cached per name (asked twice)."""
    from gwcore.relay import _PASS_HEADERS, _passed_lines
    from gwcore.server.protocol import header_lines
    from gwcore.sse import ResponseHead, response_head

    passing = [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k.lower() in _PASS_HEADERS
    ]
    try:
        expected = header_lines(passing)
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    for _ in range(2):
        try:
            got = _passed_lines(list(headers))
        except ValueError as exc:
            got = ("ValueError", str(exc))
        assert got == expected
    # The same headers as a plain head read in place (the relay's way): the same lines.
    raw = b"HTTP/1.1 200 OK\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n"
    head = response_head(raw, len(raw))
    if head is not None and head == list(headers):
        assert type(head) is ResponseHead and _passed_lines(head) == expected
