"""OpenAI chat <-> native Gemini (generateContent, streamGenerateContent?alt=sse), sans-I/O.

The recorded Gemini fixtures come from Gemini's OpenAI-compatible endpoint, so they say nothing
about the native path: the native answers here are written by hand from the API reference
(``GenerateContentResponse``: candidates[].content.parts[] with text / thought / functionCall /
thoughtSignature, finishReason, usageMetadata, responseId; errors as ``{"error":{...}}``).
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gwcore.errors import GatewayError
from gwcore.translate.gemini import (
    THINKING_BUDGETS,
    GeminiStreamTranslator,
    build_request,
    endpoint,
    translate_response,
    upstream_error,
)

CREATED = 1700000000


def event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"  # Gemini ends events with CRLF CRLF


def chunk(parts: list, finish: str | None = None, usage: dict | None = None, **extra) -> dict:
    cand: dict = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        cand["finishReason"] = finish
    obj = {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"}
    if usage:
        obj["usageMetadata"] = usage
    obj.update(extra)
    return obj


FINAL_USAGE = {
    "promptTokenCount": 20,
    "candidatesTokenCount": 8,
    "thoughtsTokenCount": 12,
    "cachedContentTokenCount": 4,
    "totalTokenCount": 40,
}
FULL_STREAM = b"".join(
    [
        event(
            chunk(
                [{"text": "Thinking about it", "thought": True}],
                usage={"promptTokenCount": 20, "totalTokenCount": 20},
            )
        ),
        event(
            chunk([{"text": "Hello"}], usage={"promptTokenCount": 20, "candidatesTokenCount": 1})
        ),
        event(
            chunk(
                [
                    {"text": ' thére "q"\n'},
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2lnbmF0dXJl",
                    },
                    {"functionCall": {"name": "get_time", "args": {}}},
                ],
                finish="STOP",
                usage=FINAL_USAGE,
            )
        ),
    ]
)


def translate(sse, body: bytes, cuts=(), *, include_usage: bool = True, chunked: bool = False):
    parser = sse.EventParser(chunked=chunked)
    t = GeminiStreamTranslator(
        "gemini-client", created=CREATED, include_usage=include_usage, fallback_id="chatcmpl-x"
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
    found = []
    for raw in out.split(b"\n\n")[:-1]:
        assert raw.startswith(b"data: ")
        data = raw[6:]
        found.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return found


def deltas(out: bytes) -> list:
    found = []
    for e in events(out):
        if e == "[DONE]":
            found.append(e)
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
        piece = body[pos : pos + sizes[i % len(sizes)]]
        out.append(b"%x\r\n%b\r\n" % (len(piece), piece))
        pos += len(piece)
        i += 1
    return b"".join(out) + b"0\r\n\r\n"


# ---- streams -----------------------------------------------------------------------------------


def test_stream_every_mapping(sse):
    out, t = translate(sse, FULL_STREAM)
    assert deltas(out) == [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "Thinking about it"}, None),
        ({"content": "Hello"}, None),
        ({"content": ' thére "q"\n'}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_x_0",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        "extra_content": {"google": {"thought_signature": "c2lnbmF0dXJl"}},
                    }
                ]
            },
            None,
        ),
        (
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_x_1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ]
            },
            None,
        ),
        ({}, "tool_calls"),  # STOP with function calls
        (
            "usage",
            {
                "prompt_tokens": 20,
                "completion_tokens": 20,  # candidates 8 + thoughts 12
                "total_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
        ),
        "[DONE]",
    ]
    for e in events(out)[:-1]:
        assert (e["id"], e["model"], e["created"]) == ("resp-1", "gemini-client", CREATED)
    assert t.tokens()["reasoning_tokens"] == 12 and t.error is None


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
    ],
)
def test_finish_reasons(sse, reason, finish):
    out, _ = translate(sse, event(chunk([{"text": "x"}], finish=reason)), include_usage=False)
    assert deltas(out)[-2] == ({}, finish)


def test_blocked_prompt_is_content_filter(sse):
    body = event(
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}}
    )
    out, _ = translate(sse, body)
    assert deltas(out)[1:] == [
        ({}, "content_filter"),
        ("usage", {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}),
        "[DONE]",
    ]


def test_stream_without_finish_reason_finishes_at_the_end_of_the_body(sse):
    out, _ = translate(sse, event(chunk([{"text": "x"}])), include_usage=False)
    assert deltas(out)[-2:] == [({}, "stop"), "[DONE]"]


def test_error_event_is_terminal(sse):
    err = {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}
    out, t = translate(
        sse, event(chunk([{"text": "Hi"}])) + event(err) + event(chunk([{"text": "no"}]))
    )
    found = deltas(out)
    assert found[1] == ({"content": "Hi"}, None)
    assert found[2] == (
        "error",
        {
            "message": "Resource exhausted",
            "type": "rate_limit_error",
            "param": None,
            "code": "RESOURCE_EXHAUSTED",
        },
    )
    assert len(found) == 3 and b"[DONE]" not in out and t.error is not None


def test_malformed_event_ends_with_error(sse):
    out, t = translate(sse, event(chunk([{"text": "Hi"}])) + b"data: {nope\r\n\r\n")
    assert deltas(out)[-1][0] == "error" and t.error is not None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cuts=st.lists(st.integers(1, len(FULL_STREAM) - 1), max_size=20),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
)
def test_stream_split_anywhere_translates_identically(sse, cuts, sizes):
    whole, _ = translate(sse, FULL_STREAM)
    assert translate(sse, FULL_STREAM, cuts)[0] == whole
    wire = chunked(FULL_STREAM, sizes)
    framed, t = translate(sse, wire, [c % len(wire) for c in cuts], chunked=True)
    assert framed == whole and t.error is None


# ---- whole answers -----------------------------------------------------------------------------


def test_whole_answer():
    raw = orjson.dumps(
        chunk(
            [
                {"text": "Plan: call the tool", "thought": True},
                {"text": "Checking."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            ],
            finish="STOP",
            usage=FINAL_USAGE,
        )
    )
    out = orjson.loads(
        translate_response(raw, "gemini-client", created=CREATED, fallback_id="chatcmpl-r")[0]
    )
    assert (out["id"], out["model"], out["object"]) == (
        "resp-1",
        "gemini-client",
        "chat.completion",
    )
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Checking.",
        "refusal": None,
        "reasoning_content": "Plan: call the tool",
        "tool_calls": [
            {
                "id": "call_r_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert out["usage"]["completion_tokens"] == 20 and out["usage"]["total_tokens"] == 40


def test_whole_answer_blocked_prompt_and_junk():
    raw = orjson.dumps({"promptFeedback": {"blockReason": "OTHER"}})
    out = orjson.loads(translate_response(raw, "m", created=CREATED, fallback_id="chatcmpl-r")[0])
    assert out["id"] == "chatcmpl-r"
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""
    with pytest.raises(GatewayError) as info:
        translate_response(b"[1,2]", "m", created=CREATED, fallback_id="x")
    assert info.value.status == 502


@pytest.mark.parametrize(
    ("status", "state", "etype"),
    [
        (400, "INVALID_ARGUMENT", "invalid_request_error"),
        (403, "PERMISSION_DENIED", "authentication_error"),
        (404, "NOT_FOUND", "not_found_error"),
        (429, "RESOURCE_EXHAUSTED", "rate_limit_error"),
        (500, "INTERNAL", "server_error"),
        (503, "UNAVAILABLE", "server_error"),
    ],
)
def test_upstream_error_shape(status, state, etype):
    raw = orjson.dumps({"error": {"code": status, "message": "gemini says no", "status": state}})
    err = upstream_error(status, raw)
    assert (err.status, err.type, err.code, err.message) == (status, etype, state, "gemini says no")
    assert upstream_error(status, b"[" + raw + b"]").message == "gemini says no"  # list form


# ---- requests ----------------------------------------------------------------------------------


def req(**body) -> dict:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return orjson.loads(build_request({"model": "g", **body}, "gemini-up", True))


def bad(param: str, **body) -> GatewayError:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    with pytest.raises(GatewayError) as info:
        build_request({"model": "g", **body}, "gemini-up", False)
    assert info.value.status == 400 and info.value.param == param
    return info.value


def test_endpoint():
    assert (
        endpoint("gemini-2.5-flash", True)
        == "/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    )
    assert endpoint("models/gemini-2.5-pro", False) == "/models/gemini-2.5-pro:generateContent"
    assert endpoint("tunedModels/my-x", False) == "/tunedModels/my-x:generateContent"
    assert endpoint("a b?", False) == "/models/a%20b%3F:generateContent"


PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
FILE_URI = "https://generativelanguage.googleapis.com/v1beta/files/abc123"


def test_request_conversation():
    sig = {"google": {"thought_signature": "c2ln"}}
    out = req(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Use metric."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                    {"type": "image_url", "image_url": {"url": FILE_URI}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                        "extra_content": sig,
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": '{"found": true}'},
            {"role": "user", "content": "And?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "count", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "3"},
            {"role": "tool", "tool_call_id": "call_a", "content": "plain text"},
        ]
    )
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Use metric."}]}
    c = out["contents"]
    assert [m["role"] for m in c] == ["user", "model", "user", "model", "user"]
    assert c[0]["parts"][1:] == [
        {"inlineData": {"mimeType": "image/png", "data": PNG.split(",", 1)[1]}},
        {"fileData": {"fileUri": FILE_URI}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
    ]
    assert c[1]["parts"] == [
        {"text": "Let me look."},
        {"functionCall": {"name": "lookup", "args": {"q": "x"}}, "thoughtSignature": "c2ln"},
    ]
    assert c[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"found": True}}},
        {"text": "And?"},
    ]
    assert c[4]["parts"] == [
        {"functionResponse": {"name": "count", "response": {"output": 3}}},
        {"functionResponse": {"name": "lookup", "response": {"output": "plain text"}}},
    ]
    assert "generationConfig" not in out


def test_request_generation_config():
    out = req(
        max_tokens=100,
        temperature=1.5,
        top_p=0.5,
        top_k=40,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        seed=7,
        stop=["x", "y"],
        user="ignored",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "r", "strict": True, "schema": {"type": "object"}},
        },
        reasoning_effort="low",
        stream_options={"include_usage": True},
    )
    assert out["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 1.5,
        "topP": 0.5,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "topK": 40,
        "seed": 7,
        "stopSequences": ["x", "y"],
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": THINKING_BUDGETS["low"], "includeThoughts": True},
    }
    config = req(response_format={"type": "json_object"}, reasoning_effort="none")[
        "generationConfig"
    ]
    assert config == {
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 0, "includeThoughts": False},
    }


def test_request_tools():
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather now",
                "parameters": {"type": "object", "additionalProperties": False},
            },
        },
        {"type": "function", "function": {"name": "noargs"}},
    ]
    out = req(tools=tools, tool_choice="required")
    assert out["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "weather",
                    "description": "Weather now",
                    "parametersJsonSchema": {"type": "object", "additionalProperties": False},
                },
                {"name": "noargs"},
            ]
        }
    ]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert req(tools=tools, tool_choice="auto")["toolConfig"]["functionCallingConfig"] == {
        "mode": "AUTO"
    }
    assert req(tools=tools, tool_choice="none")["toolConfig"]["functionCallingConfig"] == {
        "mode": "NONE"
    }
    named = {"type": "function", "function": {"name": "weather"}}
    assert req(tools=tools, tool_choice=named)["toolConfig"]["functionCallingConfig"] == {
        "mode": "ANY",
        "allowedFunctionNames": ["weather"],
    }
    assert "toolConfig" not in req(tools=tools, parallel_tool_calls=True)


@pytest.mark.parametrize(
    ("param", "body"),
    [
        ("temperature", {"temperature": 2.5}),
        ("n", {"n": 3}),
        ("parallel_tool_calls", {"parallel_tool_calls": False}),
        ("logprobs", {"logprobs": True}),
        ("audio", {"audio": {"voice": "x"}}),
        ("frobnicate", {"frobnicate": True}),
        ("response_format.type", {"response_format": {"type": "yaml"}}),
        (
            "response_format.json_schema.schema",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        ),
        ("reasoning_effort", {"reasoning_effort": "max"}),
        (
            "tools[0].function.strict",
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
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
                                "image_url": {"url": "https://example.com/cat.png"},
                            }
                        ],
                    }
                ]
            },
        ),
        (
            "messages[0].content[0].input_audio",
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "input_audio",
                                "input_audio": {"data": "AA==", "format": "ogg"},
                            }
                        ],
                    }
                ]
            },
        ),
        (
            "messages[0].tool_call_id",
            {"messages": [{"role": "tool", "tool_call_id": "nobody", "content": "x"}]},
        ),
        ("messages[0].role", {"messages": [{"role": "function", "name": "f", "content": "x"}]}),
    ],
)
def test_request_fields_that_cannot_be_honoured_are_400(param, body):
    assert bad(param, **body).message
