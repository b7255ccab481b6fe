"""The translation path end to end: the official ``openai`` SDK -> gwcore -> a mock Anthropic and
a mock Gemini upstream (real sockets), and raw-socket checks of the same responses."""

from __future__ import annotations

import asyncio

import openai
import orjson
import pytest
from gateway_harness import chat_body, disconnect_after, gateway_with_mock, raw_post

from gwcore.testing import Scenario, recorded_fixture, run

PROVIDERS = [
    {"name": "claude", "type": "anthropic", "api_key": "sk-ant-test", "models": ["claude-test"]},
    {"name": "gem", "type": "gemini", "api_key": "gem-test-key", "models": ["gemini-test"]},
]
MODELS = ["claude-test", "gemini-test"]
PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"


def sdk(h) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key="client-key", max_retries=0)


def anthropic_event(name: str, obj: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **obj}) + b"\n\n"


def anthropic_stream(*middle: bytes, reason: str = "end_turn") -> bytes:
    message = {"id": "msg_e2e", "role": "assistant", "content": [], "usage": {"input_tokens": 9}}
    return b"".join(
        [
            anthropic_event("message_start", {"message": message}),
            *middle,
            anthropic_event(
                "message_delta", {"delta": {"stop_reason": reason}, "usage": {"output_tokens": 6}}
            ),
            anthropic_event("message_stop", {}),
        ]
    )


def text_block(index: int, *pieces: str) -> bytes:
    out = anthropic_event(
        "content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}}
    )
    for piece in pieces:
        out += anthropic_event(
            "content_block_delta",
            {"index": index, "delta": {"type": "text_delta", "text": piece}},
        )
    return out + anthropic_event("content_block_stop", {"index": index})


def gemini_event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def _events(payload: bytes) -> list[bytes]:
    return [e for e in payload.split(b"\n\n") if e.strip()]


# ---- text ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_sdk_text_streamed_and_not(model):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS, text_deltas=7) as h:
            client = sdk(h)
            messages = [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "hi"},
            ]
            done = await client.chat.completions.create(model=model, messages=messages)
            assert done.choices[0].message.content == "Hello from the mock"
            assert done.choices[0].finish_reason == "stop"
            assert done.model == model
            assert done.usage.prompt_tokens == 11 and done.usage.completion_tokens == 5
            sent = h.mock.requests[-1]
            if model.startswith("claude"):
                assert sent.path == "/v1/messages"
                assert sent.header("x-api-key") == "sk-ant-test"
                assert sent.header("anthropic-version")
                assert sent.json()["system"] == [{"type": "text", "text": "Be kind."}]
            else:
                assert sent.path == "/v1/models/gemini-test:generateContent"
                assert sent.header("x-goog-api-key") == "gem-test-key"
                assert sent.json()["systemInstruction"] == {"parts": [{"text": "Be kind."}]}
            assert sent.header("authorization") is None  # the client's key never goes upstream

            stream = await client.chat.completions.create(
                model=model, messages=messages, stream=True
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == "Hello from the mock upstream: a"  # 7 deltas of the mock's words
            assert chunks[0].choices[0].delta.role == "assistant"
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert all(c.usage is None for c in chunks)
            assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
            assert {c.model for c in chunks} == {model}
            if model.startswith("gemini"):
                assert h.mock.requests[-1].path.endswith(":streamGenerateContent?alt=sse")

            stream = await client.chat.completions.create(
                model=model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 7
            rec = h.sink.records[-1]
            assert rec.route == "translated" and rec.stream and not rec.aborted
            assert (rec.prompt_tokens, rec.completion_tokens) == (11, 7)
            assert rec.total_tokens == chunks[-1].usage.total_tokens
            assert len(h.sink.records) == 3
            assert all(r.route == "translated" and r.status == 200 for r in h.sink.records)
            await client.close()

    run(main(), use_uvloop=True)


def test_raw_response_head_and_keepalive_reuse():
    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            for model in MODELS:
                for stream in (True, False):
                    # the upstream's last chunk comes apart from the last event: the gateway ends
                    # the client's stream at once and still pools the connection
                    h.mock.scenarios.append(Scenario(terminator_separate=True, pace_ms=2))
                    headers = {"anthropic-beta": "some-beta", "openai-beta": "x", "x-api-key": "k"}
                    resp = await raw_post(
                        h.host, h.port, chat_body(stream, model=model), headers=headers
                    )
                    assert resp.status == 200
                    assert resp.headers["x-gwcore-route"] == "translated"
                    sent = h.mock.requests[-1]
                    claude = model.startswith("claude")
                    assert sent.header("anthropic-beta") == ("some-beta" if claude else None)
                    assert sent.header("openai-beta") is None
                    assert sent.header("x-api-key") == ("sk-ant-test" if claude else None)
                    if stream:
                        assert resp.complete
                        assert resp.headers["content-type"].startswith("text/event-stream")
                        assert resp.headers["cache-control"] == "no-cache"
                        assert resp.headers["x-accel-buffering"] == "no"
                        assert _events(resp.payload())[-1] == b"data: [DONE]"
                        assert resp.payload().count(b"[DONE]") == 1
                    else:
                        assert resp.headers["content-type"] == "application/json"
                        assert orjson.loads(resp.payload())["object"] == "chat.completion"
                    await asyncio.sleep(0.02)  # the upstream's last chunk, 2 ms after the rest
            await asyncio.sleep(0.05)
            assert h.mock.connections_opened == 1  # one upstream connection served all four
            stats = h.gateway.pool.stats()
            assert sum(s["idle"] for s in stats.values()) == 1

    run(main(), use_uvloop=True)


def test_recorded_anthropic_stream_split_on_the_wire():
    path = recorded_fixture(__file__, "anthropic", "messages_stream.txt")
    if path is None:
        pytest.skip("shared/fixtures/recorded/anthropic is not beside this checkout")
    body = path.read_bytes()

    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            outputs = set()
            for cuts in ([], [1, 2, 3], [len(body) // 3, len(body) // 2], list(range(5, 900, 37))):
                h.mock.scenarios.append(Scenario.replay(body, split_at=cuts))
                resp = await raw_post(
                    h.host, h.port, chat_body(True, model="claude-test", include_usage=True)
                )
                assert resp.status == 200 and resp.complete
                payload = resp.payload()
                # the same events whatever the upstream split (created may tick between requests)
                outputs.add(
                    b"\n\n".join(
                        orjson.dumps({**orjson.loads(e[6:]), "created": 0})
                        for e in _events(payload)[:-1]
                    )
                )
            assert len(outputs) == 1
            usage = orjson.loads(_events(payload)[-2][6:])["usage"]
            assert usage["prompt_tokens"] == 10 and usage["completion_tokens"] == 5

    run(main(), use_uvloop=True)


# ---- tools and images --------------------------------------------------------------------------


def _tool_answer(model: str) -> Scenario:
    if model.startswith("claude"):
        body = anthropic_stream(
            text_block(0, "Checking."),
            anthropic_event(
                "content_block_start",
                {
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_9", "name": "weather"},
                },
            ),
            anthropic_event(
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}},
            ),
            anthropic_event(
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'}},
            ),
            anthropic_event("content_block_stop", {"index": 1}),
            reason="tool_use",
        )
    else:
        part = {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}}
        body = gemini_event(
            {"candidates": [{"content": {"parts": [{"text": "Checking."}], "role": "model"}}]}
        ) + gemini_event(
            {
                "candidates": [
                    {
                        "content": {
                            "parts": [{**part, "thoughtSignature": "c2ln"}],
                            "role": "model",
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 6},
            }
        )
    return Scenario.replay(body)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_tool_call_round_trip(model):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]

    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            client = sdk(h)
            messages: list[dict] = [{"role": "user", "content": "Weather in Oslo?"}]
            h.mock.scenarios.append(_tool_answer(model))
            stream = await client.chat.completions.create(
                model=model, messages=messages, tools=tools, tool_choice="auto", stream=True
            )
            calls: dict[int, dict] = {}
            text, finish = "", None
            async for c in stream:
                d = c.choices[0].delta
                text += d.content or ""
                for tc in d.tool_calls or ():
                    call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                    call["id"] = tc.id or call["id"]
                    call["name"] += tc.function.name or ""
                    call["arguments"] += tc.function.arguments or ""
                    extra = (tc.model_extra or {}).get("extra_content")
                    if extra:
                        call["extra_content"] = extra
                finish = c.choices[0].finish_reason or finish
            assert text == "Checking." and finish == "tool_calls"
            (call,) = calls.values()
            assert call["name"] == "weather" and orjson.loads(call["arguments"]) == {"city": "Oslo"}
            sent = h.mock.requests[-1].json()
            if model.startswith("claude"):
                assert sent["tool_choice"] == {"type": "auto"}
                assert sent["tools"][0]["input_schema"]["properties"] == {
                    "city": {"type": "string"}
                }
            else:
                assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
                assert sent["tools"][0]["functionDeclarations"][0]["name"] == "weather"

            tool_call = {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
            }
            if "extra_content" in call:
                tool_call["extra_content"] = call["extra_content"]
            messages += [
                {"role": "assistant", "content": text, "tool_calls": [tool_call]},
                {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 12}'},
            ]
            done = await client.chat.completions.create(model=model, messages=messages, tools=tools)
            assert done.choices[0].message.content == "Hello from the mock"
            sent = h.mock.requests[-1].json()
            if model.startswith("claude"):
                assert sent["messages"][1]["content"][1] == {
                    "type": "tool_use",
                    "id": "toolu_9",
                    "name": "weather",
                    "input": {"city": "Oslo"},
                }
                assert sent["messages"][2] == {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_9",
                            "content": '{"temp_c": 12}',
                        }
                    ],
                }
            else:
                assert sent["contents"][1]["parts"][1] == {
                    "functionCall": {"name": "weather", "args": {"city": "Oslo"}},
                    "thoughtSignature": "c2ln",  # returned to Gemini as it came
                }
                assert sent["contents"][2]["parts"] == [
                    {"functionResponse": {"name": "weather", "response": {"temp_c": 12}}}
                ]
            await client.close()

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_image(model):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            client = sdk(h)
            content = [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": PNG}},
            ]
            done = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": content}]
            )
            assert done.choices[0].message.content
            sent = h.mock.requests[-1].json()
            data = PNG.split(",", 1)[1]
            if model.startswith("claude"):
                assert sent["messages"][0]["content"][1]["source"] == {
                    "type": "base64",
                    "media_type": "image/png",
                    "data": data,
                }
            else:
                assert sent["contents"][0]["parts"][1] == {
                    "inlineData": {"mimeType": "image/png", "data": data}
                }
            # an image URL the provider cannot read is refused before anything goes upstream
            before = len(h.mock.requests)
            content[1] = {"type": "image_url", "image_url": {"url": "http://example.test/a.png"}}
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": content}]
                )
            assert info.value.body["param"] == "messages[0].content[1].image_url.url"
            assert len(h.mock.requests) == before
            await client.close()

    run(main(), use_uvloop=True)


# ---- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_sdk_upstream_errors_before_the_first_byte(model):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            client = sdk(h)
            messages = [{"role": "user", "content": "hi"}]
            if model.startswith("claude"):
                e429 = {
                    "type": "error",
                    "error": {"type": "rate_limit_error", "message": "slow down"},
                }
                e400 = {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "bad"},
                }
                codes = ("rate_limit_error", "invalid_request_error")
            else:
                e429 = {
                    "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}
                }
                e400 = {"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
                codes = ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT")
            json = "application/json"
            h.mock.scenarios.append(
                Scenario(status=429, body=orjson.dumps(e429), content_type=json, framing="length")
            )
            with pytest.raises(openai.RateLimitError, match="slow down") as info:
                await client.chat.completions.create(model=model, messages=messages, stream=True)
            assert info.value.body["code"] == codes[0]
            h.mock.scenarios.append(
                Scenario(status=400, body=orjson.dumps(e400), content_type=json)
            )
            with pytest.raises(openai.BadRequestError, match="bad") as info:
                await client.chat.completions.create(model=model, messages=messages)
            assert info.value.body["code"] == codes[1]
            assert [r.status for r in h.sink.records] == [429, 400]
            assert all(r.error for r in h.sink.records)

            # a field the provider cannot honour: 400 naming it, nothing sent upstream
            before = len(h.mock.requests)
            with pytest.raises(openai.BadRequestError) as info:
                await client.chat.completions.create(model=model, messages=messages, n=2)
            assert info.value.body["param"] == "n"
            assert len(h.mock.requests) == before
            await client.close()

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("model", MODELS)
def test_sdk_upstream_error_after_the_first_byte(model):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS) as h:
            client = sdk(h)
            if model.startswith("claude"):
                err = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
                body = anthropic_event(
                    "message_start", {"message": {"id": "m", "usage": {"input_tokens": 3}}}
                )
                body += text_block(0, "Hel") + anthropic_event("error", err)
            else:
                body = gemini_event({"candidates": [{"content": {"parts": [{"text": "Hel"}]}}]})
                body += gemini_event(
                    {"error": {"code": 503, "message": "Overloaded", "status": "UNAVAILABLE"}}
                )
            h.mock.scenarios.append(Scenario.replay(body))
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            got = []
            with pytest.raises(openai.APIError, match="Overloaded"):
                async for c in stream:
                    got.append(c.choices[0].delta.content)
            assert "Hel" in got
            rec = h.sink.records[-1]
            assert rec.status == 200 and rec.aborted and rec.error == "Overloaded"
            await client.close()

    run(main(), use_uvloop=True)


@pytest.mark.parametrize("model", MODELS)
def test_upstream_drop_mid_stream_is_a_terminal_error_event(model):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS, text_deltas=12) as h:
            h.mock.scenarios.append(Scenario(drop_at=700))  # mid-event, mid-chunk
            resp = await raw_post(h.host, h.port, chat_body(True, model=model))
            assert resp.status == 200 and resp.complete  # a clean end of the client's body
            events = _events(resp.payload())
            last = orjson.loads(events[-1].removeprefix(b"data: "))
            assert last["error"]["code"] == "upstream_closed"
            assert b"[DONE]" not in resp.payload()
            assert all(orjson.loads(e[6:]).get("choices") for e in events[:-1])
            (rec,) = h.sink.records
            assert rec.aborted and rec.error

    run(main(), use_uvloop=True)


# ---- client disconnects --------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("when", ["before_head", "mid_stream", "whole_answer"])
def test_client_disconnect_closes_upstream_within_50ms(model, when):
    async def main():
        async with gateway_with_mock(providers=PROVIDERS, text_deltas=200, pace_ms=5) as h:
            if when == "before_head":
                h.mock.scenarios.append(Scenario(hang=True))
            elif when == "whole_answer":  # the gateway reads a whole answer that never ends
                h.mock.scenarios.append(Scenario(stall_at=40))
            t0 = await disconnect_after(
                h,
                chat_body(when != "whole_answer", model=model),
                read_bytes=600 if when == "mid_stream" else 0,
            )
            closed_at = await h.mock.wait_closed(1, timeout=2.0)
            assert closed_at - t0 < 0.05
            await asyncio.sleep(0.05)
            stats = h.gateway.pool.stats()
            assert all(s["idle"] == 0 and s["open"] == 0 for s in stats.values())
            (rec,) = h.sink.records
            assert rec.aborted and rec.route == "translated"

    run(main(), use_uvloop=True)
