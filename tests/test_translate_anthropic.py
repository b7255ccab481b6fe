"""OpenAI chat <-> Anthropic Messages, sans-I/O: requests, whole answers, streams, errors.

Streams are hand-written from the Messages streaming reference, plus the recorded real ones in
``shared/fixtures/recorded/anthropic`` (skipped when absent). Every stream test runs over both SSE
parser implementations (the ``sse`` fixture).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwcore.errors import GatewayError
from gwcore.testing import recorded_fixture
from gwcore.translate import anthropic
from gwcore.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    build_request,
    translate_response,
    upstream_error,
)

CREATED = 1700000000


def ev(name: str, obj: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def start(msg_id: str = "msg_01", **usage: int) -> bytes:
    usage = usage or {"input_tokens": 10, "output_tokens": 1}
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": "claude-upstream",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return ev("message_start", {"type": "message_start", "message": message})


def block(index: int, content_block: dict) -> bytes:
    return ev(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": content_block},
    )


def delta(index: int, d: dict) -> bytes:
    return ev("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})


def stop(index: int) -> bytes:
    return ev("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(reason: str | None, **usage: int) -> bytes:
    return ev(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage or {"output_tokens": 7},
        },
    )


END = ev("message_stop", {"type": "message_stop"})
PING = ev("ping", {"type": "ping"})

# Every mapping at once: cache tokens, ping, thinking (+ signature), text, two tool_use blocks with
# input_json_delta (one empty partial), cumulative output tokens, stop reason tool_use.
FULL_STREAM = b"".join(
    [
        start(
            input_tokens=10,
            cache_read_input_tokens=5,
            cache_creation_input_tokens=3,
            output_tokens=1,
        ),
        PING,
        block(0, {"type": "thinking", "thinking": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "Let me think"}),
        delta(0, {"type": "thinking_delta", "thinking": " more"}),
        delta(0, {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}),
        stop(0),
        block(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "Hello"}),
        PING,
        delta(1, {"type": "text_delta", "text": ' wörld "quoted"\n'}),
        stop(1),
        block(2, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}),
        delta(2, {"type": "input_json_delta", "partial_json": ""}),
        delta(2, {"type": "input_json_delta", "partial_json": '{"city":'}),
        delta(2, {"type": "input_json_delta", "partial_json": ' "Paris"}'}),
        stop(2),
        block(3, {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}),
        delta(3, {"type": "input_json_delta", "partial_json": "{}"}),
        stop(3),
        message_delta("tool_use", output_tokens=42),
        END,
    ]
)


def translate(sse, body: bytes, cuts=(), *, include_usage: bool = True, chunked: bool = False):
    """(output bytes, translator) for ``body`` fed in pieces cut at ``cuts``."""
    parser = sse.EventParser(chunked=chunked)
    t = AnthropicStreamTranslator(
        "claude-client", created=CREATED, include_usage=include_usage, fallback_id="chatcmpl-x"
    )
    out, prev = [], 0
    for pos in [*sorted(set(cuts)), len(body)]:
        if prev < pos <= len(body):
            out.append(t.feed(parser.feed(body[prev:pos])))
            prev = pos
    out.append(t.feed(parser.close()))
    out.append(t.close())
    return b"".join(out), t


def events(out: bytes) -> list:
    assert out.endswith(b"\n\n")
    found = []
    for raw in out.split(b"\n\n")[:-1]:
        assert raw.startswith(b"data: "), raw
        data = raw[6:]
        found.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return found


def deltas(out: bytes) -> list:
    """The choices' (delta, finish_reason) pairs, and the usage chunk as ("usage", usage)."""
    found = []
    for e in events(out):
        if e == "[DONE]":
            found.append("[DONE]")
        elif "error" in e:
            found.append(("error", e["error"]))
        elif e["choices"]:
            found.append((e["choices"][0]["delta"], e["choices"][0]["finish_reason"]))
        else:
            found.append(("usage", e["usage"]))
    return found


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = sizes[i % len(sizes)] if sizes else len(body)
        piece = body[pos : pos + n]
        out.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        pos += n
        i += 1
    return b"".join(out) + b"0\r\n\r\n"


# ---- streams: golden ------------------------------------------------------------------------


def test_stream_every_mapping(sse):
    out, t = translate(sse, FULL_STREAM)
    assert deltas(out) == [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "Let me think"}, None),
        ({"reasoning_content": " more"}, None),
        ({"content": "Hello"}, None),
        ({"content": ' wörld "quoted"\n'}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}, None),
        ({}, "tool_calls"),
        (
            "usage",
            {
                "prompt_tokens": 18,  # 10 uncached + 5 cache reads + 3 cache writes
                "completion_tokens": 42,  # message_delta's cumulative count, not 1 + 42
                "total_tokens": 60,
                "prompt_tokens_details": {"cached_tokens": 5, "cache_creation_tokens": 3},
            },
        ),
        "[DONE]",
    ]
    for e in events(out)[:-1]:
        assert e["id"] == "msg_01"
        assert e["model"] == "claude-client"
        assert e["created"] == CREATED
        assert e["object"] == "chat.completion.chunk"
        if e["choices"]:
            assert e["usage"] is None  # with include_usage, every chunk but the last has null
    assert t.done and t.error is None
    assert t.tokens() == {
        "prompt_tokens": 18,
        "completion_tokens": 42,
        "total_tokens": 60,
        "cached_tokens": 5,
        "reasoning_tokens": None,
    }


def test_stream_exact_bytes_of_a_short_answer(sse):
    body = (
        start()
        + block(0, {"type": "text", "text": ""})
        + delta(0, {"type": "text_delta", "text": "Hi"})
    )
    body += stop(0) + message_delta("end_turn", output_tokens=2) + END
    out, _ = translate(sse, body, include_usage=False)
    head = b'data: {"id":"msg_01","object":"chat.completion.chunk","created":1700000000,'
    head += b'"model":"claude-client","choices":[{"index":0,"delta":'
    assert out == (
        head
        + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        + head
        + b'{"content":"Hi"},"logprobs":null,"finish_reason":null}]}\n\n'
        + head
        + b'{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
        + b"data: [DONE]\n\n"
    )


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(sse, reason, finish):
    out, _ = translate(sse, start() + message_delta(reason) + END, include_usage=False)
    assert deltas(out)[-2] == ({}, finish)
    out, _ = translate(sse, start() + message_delta(reason) + END)
    assert deltas(out)[-3] == ({}, finish)


def test_without_include_usage_no_usage_chunk_and_no_usage_field(sse):
    out, t = translate(sse, FULL_STREAM, include_usage=False)
    assert all("usage" not in e for e in events(out)[:-1])
    assert events(out)[-1] == "[DONE]" and out.count(b"[DONE]") == 1
    assert t.tokens()["completion_tokens"] == 42  # the usage record still gets it


def test_error_event_is_terminal(sse):
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    body = start() + block(0, {"type": "text", "text": ""})
    body += delta(0, {"type": "text_delta", "text": "Hel"}) + ev("error", err)
    body += delta(0, {"type": "text_delta", "text": "never sent"})
    out, t = translate(sse, body)
    found = deltas(out)
    assert found[:2] == [({"role": "assistant", "content": ""}, None), ({"content": "Hel"}, None)]
    assert found[2] == (
        "error",
        {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        },
    )
    assert len(found) == 3 and b"[DONE]" not in out
    assert t.done and t.error.message == "Overloaded"


def test_stream_cut_before_message_stop_ends_with_error(sse):
    body = (
        start()
        + block(0, {"type": "text", "text": ""})
        + delta(0, {"type": "text_delta", "text": "Hi"})
    )
    out, t = translate(sse, body)
    last = deltas(out)[-1]
    assert last[0] == "error" and last[1]["code"] == "upstream_incomplete"
    assert b"[DONE]" not in out and t.error is not None


def test_malformed_event_ends_with_error(sse):
    body = start() + b"event: content_block_delta\ndata: {not json\n\n" + END
    out, t = translate(sse, body)
    assert deltas(out)[-1][0] == "error" and deltas(out)[-1][1]["code"] == "upstream_bad_response"
    assert t.error is not None


def test_events_without_event_field_use_the_data_type(sse):
    body = b"".join(
        b"data: " + e.split(b"\ndata: ", 1)[1]
        for e in (start(), block(0, {"type": "text", "text": ""}), message_delta("end_turn"), END)
    )
    out, _ = translate(sse, body, include_usage=False)
    assert deltas(out) == [({"role": "assistant", "content": ""}, None), ({}, "stop"), "[DONE]"]


def test_text_block_that_starts_with_text_and_crlf_events(sse):
    body = start() + block(0, {"type": "text", "text": "Already"}) + stop(0)
    body += message_delta("end_turn") + END
    out, _ = translate(sse, body.replace(b"\n", b"\r\n"), include_usage=False)
    assert deltas(out)[1] == ({"content": "Already"}, None)


# ---- streams: any split, any chunking ----------------------------------------------------------


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(1, len(FULL_STREAM) - 1), max_size=20),
    crlf=st.booleans(),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
)
def test_stream_split_anywhere_translates_identically(sse, cuts, crlf, sizes):
    body = FULL_STREAM.replace(b"\n", b"\r\n") if crlf else FULL_STREAM
    whole, _ = translate(sse, body)
    split, _ = translate(sse, body, [c % len(body) for c in cuts])
    assert split == whole
    wire = chunked(body, sizes)
    framed, t = translate(sse, wire, [c % len(wire) for c in cuts], chunked=True)
    assert framed == whole and t.error is None


# ---- recorded real answers ---------------------------------------------------------------------


def recorded(name: str):
    path = recorded_fixture(__file__, "anthropic", name)
    if path is None:
        pytest.skip("shared/fixtures/recorded/anthropic is not beside this checkout")
    return path.read_bytes()


def test_recorded_stream(sse):
    body = recorded("messages_stream.txt")
    out, t = translate(sse, body)
    found = deltas(out)
    text = "".join(d.get("content", "") for d, _ in found[:-2] if isinstance(d, dict))
    start_event = orjson.loads(body.split(b"data: ", 2)[1].split(b"\n", 1)[0])
    message = start_event["message"]
    assert text == "Hello World"
    assert found[-3] == ({}, "stop")
    assert found[-2][0] == "usage" and found[-1] == "[DONE]"
    assert found[-2][1]["prompt_tokens"] == message["usage"]["input_tokens"]
    assert found[-2][1]["completion_tokens"] == 5
    assert events(out)[0]["id"] == message["id"]
    assert t.error is None


@pytest.mark.parametrize(
    "name",
    [
        "messages.json",
        "messages_with_tools.json",
        "messages_extended_thinking.json",
        "messages_with_params.json",
        "messages_multimodal.json",
        "messages_multi_turn.json",
    ],
)
def test_recorded_whole_answers(name):
    raw = recorded(name)
    msg = orjson.loads(raw)
    body, tokens = translate_response(raw, "claude-client", created=CREATED, fallback_id="x")
    out = orjson.loads(body)
    assert out["id"] == msg["id"] and out["model"] == "claude-client"
    assert out["object"] == "chat.completion" and out["created"] == CREATED
    choice = out["choices"][0]
    texts = "".join(b["text"] for b in msg["content"] if b["type"] == "text")
    assert choice["message"]["content"] == texts
    assert choice["finish_reason"] == anthropic.STOP_REASONS[msg["stop_reason"]]
    u = msg["usage"]
    prompt = u["input_tokens"] + u.get("cache_read_input_tokens", 0)
    prompt += u.get("cache_creation_input_tokens", 0)
    assert out["usage"]["prompt_tokens"] == prompt == tokens["prompt_tokens"]
    assert out["usage"]["completion_tokens"] == u["output_tokens"]
    calls = [b for b in msg["content"] if b["type"] == "tool_use"]
    if calls:
        assert choice["finish_reason"] == "tool_calls"
        got = choice["message"]["tool_calls"]
        assert [c["id"] for c in got] == [c["id"] for c in calls]
        assert [orjson.loads(c["function"]["arguments"]) for c in got] == [
            c["input"] for c in calls
        ]
    thinking = [b["thinking"] for b in msg["content"] if b["type"] == "thinking"]
    if thinking:
        assert choice["message"]["reasoning_content"] == "".join(thinking)


def test_whole_answer_tool_use_only_has_null_content():
    raw = orjson.dumps(
        {
            "id": "msg_2",
            "type": "message",
            "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 3, "output_tokens": 4},
        }
    )
    out = orjson.loads(translate_response(raw, "m", created=CREATED, fallback_id="x")[0])
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]


def test_whole_answer_not_a_message_is_502():
    with pytest.raises(GatewayError) as info:
        translate_response(b"<html>", "m", created=CREATED, fallback_id="x")
    assert info.value.status == 502


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "etype"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "authentication_error"),
        (404, "not_found_error", "not_found_error"),
        (413, "request_too_large", "invalid_request_error"),
        (429, "rate_limit_error", "rate_limit_error"),
        (500, "api_error", "server_error"),
        (529, "overloaded_error", "server_error"),
    ],
)
def test_upstream_error_shape(status, kind, etype):
    raw = orjson.dumps({"type": "error", "error": {"type": kind, "message": "provider says no"}})
    err = upstream_error(status, raw)
    assert (err.status, err.type, err.code, err.message) == (
        status,
        etype,
        kind,
        "provider says no",
    )


def test_upstream_error_without_json_keeps_the_text():
    err = upstream_error(502, b"Bad Gateway")
    assert err.status == 502 and "Bad Gateway" in err.message


# ---- requests ----------------------------------------------------------------------------------


def req(**body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return orjson.loads(build_request({"model": "c", **body}, "claude-up", False))


def bad(param: str, **body) -> GatewayError:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(GatewayError) as info:
        build_request({"model": "c", **body}, "claude-up", True)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    assert info.value.param == param
    return info.value


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def test_request_conversation():
    out = orjson.loads(
        build_request(
            {
                "model": "c",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Weather here?"},
                            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                            {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                            },
                            {
                                "id": "call_2",
                                "type": "function",
                                "function": {"name": "time", "arguments": ""},
                            },
                        ],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
                    {
                        "role": "tool",
                        "tool_call_id": "call_2",
                        "content": [{"type": "text", "text": "noon"}],
                    },
                    {"role": "user", "content": "Thanks"},
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            "claude-up",
            True,
        )
    )
    assert out["model"] == "claude-up" and out["stream"] is True
    assert out["max_tokens"] == DEFAULT_MAX_TOKENS
    assert out["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Use metric."},
    ]
    user, assistant, results = out["messages"]
    assert user["role"] == "user"
    assert user["content"][1] == {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PNG.split(",", 1)[1]},
    }
    assert user["content"][2] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x.test/a.jpg"},
    }
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "call_2", "name": "time", "input": {}},
        ],
    }
    # both results and the next user text in one user turn, results first
    assert results == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "call_1", "content": "12C"},
            {"type": "tool_result", "tool_use_id": "call_2", "content": "noon"},
            {"type": "text", "text": "Thanks"},
        ],
    }


def test_request_parameters():
    out = req(
        max_completion_tokens=300,
        max_tokens=9,
        temperature=0.5,
        top_p=0.9,
        stop="END",
        user="u-1",
        store=False,
        metadata={"a": "b"},
        service_tier="auto",
        n=1,
        presence_penalty=0,
        logprobs=False,
    )
    assert out["max_tokens"] == 300
    assert (out["temperature"], out["top_p"], out["stop_sequences"]) == (0.5, 0.9, ["END"])
    assert out["metadata"] == {"user_id": "u-1"}
    assert "stream" not in out
    assert req(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert req(max_tokens=7)["max_tokens"] == 7


def test_request_tools_and_tool_choice():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {"type": "function", "function": {"name": "noargs"}},
    ]
    out = req(tools=tools)
    assert out["tools"] == [
        {
            "name": "weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
        {"name": "noargs", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in out
    assert req(tools=tools, tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert req(tools=tools, tool_choice="required")["tool_choice"] == {"type": "any"}
    assert req(tools=tools, tool_choice="none")["tool_choice"] == {"type": "none"}
    named = {"type": "function", "function": {"name": "weather"}}
    assert req(tools=tools, tool_choice=named)["tool_choice"] == {"type": "tool", "name": "weather"}
    assert req(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert req(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    bad("tool_choice", tools=tools, tool_choice="sometimes")
    bad("tools[0].type", tools=[{"type": "custom", "custom": {"name": "x"}}])
    strict = [{"type": "function", "function": {"name": "f", "strict": True}}]
    bad("tools[0].function.strict", tools=strict)


def test_request_reasoning_effort_to_thinking_budget():
    out = req(reasoning_effort="medium")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert out["max_tokens"] == 8192 + DEFAULT_MAX_TOKENS
    out = req(reasoning_effort="high", max_completion_tokens=5000)
    assert out["thinking"]["budget_tokens"] == 4999 and out["max_tokens"] == 5000
    assert "thinking" not in req(reasoning_effort="none")
    bad("max_completion_tokens", reasoning_effort="low", max_completion_tokens=1000)
    bad("reasoning_effort", reasoning_effort="extreme")


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("temperature", {"temperature": 1.5}),
        ("temperature", {"temperature": "hot"}),
        ("top_p", {"top_p": 2}),
        ("max_tokens", {"max_tokens": 0}),
        ("stop", {"stop": [1]}),
        ("n", {"n": 2}),
        ("seed", {"seed": 7}),
        ("logprobs", {"logprobs": True}),
        ("presence_penalty", {"presence_penalty": 0.5}),
        ("logit_bias", {"logit_bias": {"1": 2}}),
        ("modalities", {"modalities": ["text", "audio"]}),
        ("response_format", {"response_format": {"type": "json_object"}}),
        ("functions", {"functions": [{"name": "f"}]}),
        ("frobnicate", {"frobnicate": 1}),
        ("messages[0].role", {"messages": [{"role": "wizard", "content": "x"}]}),
        (
            "messages[0].content[0].type",
            {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        ),
        (
            "messages[0].content[0]",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AA==", "format": "wav"},
                            }
                        ],
                    }
                ]
            },
        ),
        (
            "messages[0].content[0].image_url.url",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                    }
                ]
            },
        ),
        (
            "messages[0].content[0].image_url.url",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="},
                            }
                        ],
                    }
                ]
            },
        ),
        (
            "messages[0].content[0].image_url.url",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": "data:image/png,raw"}}
                        ],
                    }
                ]
            },
        ),
        (
            "messages[0].tool_calls[0].function.arguments",
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{oops"},
                            }
                        ],
                    }
                ]
            },
        ),
        ("messages[0].tool_call_id", {"messages": [{"role": "tool", "content": "x"}]}),
    ],
)
def test_request_fields_that_cannot_be_honoured_are_400(param, body):
    err = bad(param, **body)
    assert err.param == param and err.message


def test_request_pdf_file_part():
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    out = req(
        messages=[{"role": "user", "content": [{"type": "file", "file": {"file_data": pdf}}]}]
    )
    assert out["messages"][0]["content"][0] == {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
    }
    bad(
        "messages[0].content[0].file",
        messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}],
    )
