"""The mock upstream itself, seen by independent clients (httpx, raw sockets, a subprocess)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import orjson
import pytest

from gwcore.testing import MockUpstream, Scenario, recorded_fixture, run


def sse(text: bytes) -> list[bytes]:
    return [line[6:] for line in text.split(b"\n") if line.startswith(b"data: ")]


def test_openai_chat_stream_and_usage_chunk():
    async def main():
        async with MockUpstream(events=6) as mock, httpx.AsyncClient(base_url=mock.base_url) as c:
            body = {"model": "gpt-x", "stream": True, "stream_options": {"include_usage": True}}
            async with c.stream("POST", "/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-type"] == "text/event-stream"
                assert resp.headers["transfer-encoding"] == "chunked"
                data = b"".join([chunk async for chunk in resp.aiter_raw()])
            events = sse(data)
            assert events[-1] == b"[DONE]" and len(events) == 7
            chunks = [orjson.loads(e) for e in events[:-1]]
            assert {c["model"] for c in chunks} == {"gpt-x"}
            assert all(c["usage"] is None for c in chunks[:-1])
            assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 14
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
            assert text == "Hello from the"

            resp = await c.post("/chat/completions", json={"model": "gpt-x", "stream": True})
            assert b'"usage"' not in resp.content and resp.content.endswith(b"data: [DONE]\n\n")

            resp = await c.post("/chat/completions", json={"model": "gpt-x"})
            assert resp.headers["content-length"] == str(len(resp.content))
            done = resp.json()
            assert done["object"] == "chat.completion"
            assert done["choices"][0]["message"]["content"] == "Hello from the"
            assert done["usage"]["completion_tokens"] == 3

            models = (await c.get("/models")).json()
            assert [m["id"] for m in models["data"]] == ["mock-model", "mock-model-mini"]
            assert mock.connections_opened == 1  # httpx kept the connection alive

            req = mock.requests[0]
            assert (req.method, req.path, req.json()["model"]) == (
                "POST",
                "/v1/chat/completions",
                "gpt-x",
            )
            assert req.header("content-type") == "application/json"

    run(main())


def test_provider_headers_change_from_one_answer_to_the_next():
    """``provider_headers``: a chat stream carries the headers OpenAI's API sends, their
    per-answer values (rate limits left, ids, cookies) changing; the body is the usual one."""

    async def main():
        async with (
            MockUpstream(events=4, provider_headers=True) as mock,
            httpx.AsyncClient(base_url=mock.base_url) as c,
        ):
            heads = []
            for _ in range(2):
                resp = await c.post("/chat/completions", json={"model": "m", "stream": True})
                assert resp.status_code == 200
                assert resp.content.endswith(b"data: [DONE]\n\n")
                assert len(sse(resp.content)) == 4
                heads.append(resp.headers)
            first, second = heads
            assert len(first.get_list("set-cookie")) == 2
            for name in ("openai-version", "x-ratelimit-limit-tokens", "server"):
                assert first[name] == second[name]
            for name in ("x-request-id", "x-ratelimit-remaining-tokens", "cf-ray"):
                assert first[name] != second[name]
            assert first["content-type"] == "text/event-stream"

    run(main())


def test_default_stream_is_one_write_per_event():
    async def main():
        async with MockUpstream(events=33, pace_ms=15) as mock:
            reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
            body = b'{"model":"m","stream":true}'
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                % (len(body), body)
            )
            reads = []
            while True:
                data = await reader.read(65536)
                reads.append(data)
                if data.endswith(b"0\r\n\r\n"):
                    break
            assert len(reads) == 33  # paced: every event is a read of its own
            assert reads[0].startswith(b"HTTP/1.1 200 OK\r\n")
            assert all(r.count(b"data: ") == 1 for r in reads)
            writer.close()
            await mock.wait_closed(1)
            assert mock.open_connections == 0 and mock.connections_closed == 1

    run(main())


def test_pipelined_requests_answered_in_order_and_close_after():
    async def main():
        async with MockUpstream() as mock:
            mock.scenarios.extend(
                [
                    Scenario(body=b"first", content_type="text/plain", framing="length"),
                    Scenario(
                        body=b"second", content_type="text/plain", framing="length", pace_ms=20
                    ),
                    Scenario(body=b"third", content_type="text/plain", close_after=True),
                ]
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
            writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
            data = await asyncio.wait_for(reader.read(), 2)  # until the mock closes
            assert data.index(b"first") < data.index(b"second") < data.index(b"third")
            assert data.count(b"HTTP/1.1 200 OK") == 3
            await mock.wait_closed(1)
            writer.close()

    run(main())


def test_anthropic_and_gemini_canned_answers():
    async def main():
        async with MockUpstream() as mock, httpx.AsyncClient(base_url=mock.url) as c:
            msg = (await c.post("/v1/messages", json={"model": "claude-x"})).json()
            assert msg["type"] == "message" and msg["usage"]["output_tokens"] == 5
            resp = await c.post("/v1/messages", json={"model": "claude-x", "stream": True})
            assert resp.headers["content-type"] == "text/event-stream"
            assert resp.text.startswith("event: message_start\n")
            assert "event: message_stop" in resp.text

            path = "/v1beta/models/gemini-2.5-flash"
            resp = await c.post(path + ":generateContent", json={"contents": []})
            assert resp.json()["modelVersion"] == "gemini-2.5-flash"
            resp = await c.post(path + ":streamGenerateContent?alt=sse", json={"contents": []})
            event = orjson.loads(sse(resp.content)[0])
            assert event["usageMetadata"]["totalTokenCount"] == 16
            listing = (await c.get("/v1beta/models")).json()
            assert listing["models"][0]["name"] == "models/mock-model"
            listing = (await c.get("/v1/models", headers={"anthropic-version": "x"})).json()
            assert listing["data"][0]["type"] == "model"
            assert (await c.get("/nowhere")).status_code == 404

    run(main())


def test_replay_recorded_body_and_error_scenarios():
    path = recorded_fixture(__file__, "anthropic", "messages_stream.txt")
    if path is None:
        pytest.skip("recorded fixtures are not in this checkout")
    body = path.read_bytes()

    async def main():
        async with MockUpstream() as mock, httpx.AsyncClient(base_url=mock.url) as c:
            mock.scenarios.append(Scenario.replay(body, split_at=[1, 2, 3, 500, 501]))
            resp = await c.post("/v1/messages", json={"stream": True})
            assert resp.content == body

            mock.scenarios.append(Scenario.error(401, "bad key", "authentication_error"))
            resp = await c.post("/v1/chat/completions", json={})
            assert resp.status_code == 401
            assert resp.json()["error"] == {
                "message": "bad key",
                "type": "authentication_error",
                "param": None,
                "code": None,
            }

            mock.scenarios.append(Scenario(drop_at=100))
            with pytest.raises(httpx.HTTPError):
                await c.post("/v1/chat/completions", json={"stream": True})

            mock.scenarios.append(Scenario(hang=True))
            with pytest.raises(httpx.ReadTimeout):
                await c.get("/v1/models", timeout=0.2)

    run(main())


def test_runs_as_a_process():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gwcore.testing.mock_upstream", "--port", "0", "--events", "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("mock upstream listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        body = {"model": "m", "stream": True}
        resp = httpx.post(base_url + "/chat/completions", json=body, timeout=5)
        assert len(sse(resp.content)) == 5
    finally:
        proc.terminate()
        proc.wait(5)
