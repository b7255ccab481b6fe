"""A scriptable mock LLM provider on 127.0.0.1: real sockets, HTTP/1.1, keep-alive, chunked SSE.

It owns the provider side of tests and benchmarks: OpenAI chat (streaming and not), ``/v1/models``,
canned Anthropic ``/v1/messages`` and Gemini ``:generateContent`` / ``:streamGenerateContent``
answers, and per-request ``Scenario`` scripts (replay a recorded body split at given bytes, pace,
drop or stall mid-body, error status, hang, close without answering, raw bytes). It records the
requests it got and when each connection opened and closed; ``GET /_mock/stats`` answers those
counts as JSON (for benchmarks that run the mock as a process; the asking connection counts).

It never binds anything but the address it is given (127.0.0.1 by default), never contacts the
network, and in its default answer does no per-request work beyond one small JSON parse: the
framed event writes are precomputed per (model, include_usage).

In process: ``async with MockUpstream() as mock: mock.base_url``. As a process (benchmarks):
``python -m gwcore.testing.mock_upstream --port 9000 --events 33 --pace-ms 0``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import ssl
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from email.utils import formatdate
from typing import Any

import httptools
import orjson

__all__ = ["MockUpstream", "RecordedRequest", "Scenario", "main"]

_CREATED = 1700000000
_WORDS = (
    "Hello",
    " from",
    " the",
    " mock",
    " upstream",
    ":",
    " a",
    " steady",
    " stream",
    " of",
    " tokens",
    ".",
)
_CHUNK_END = b"0\r\n\r\n"


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


@dataclass
class Scenario:
    """How the mock answers ONE request (queued in ``mock.scenarios``; default answer when empty).

    Byte positions (``split_at``) count in the body before chunk framing; ``drop_at`` and
    ``stall_at`` count wire bytes after the response head (chunk framing included), so they can cut
    mid-chunk and mid-event. With ``raw`` they count from the first raw byte.
    """

    status: int = 200
    body: bytes | None = None  # replay this body; None: the built-in answer for the path
    content_type: str | None = None  # default text/event-stream for a replayed body
    headers: Sequence[tuple[str, str]] = ()
    framing: str = "chunked"  # "chunked" | "length" | "close" (HTTP/1.0 style, body ends at close)
    split_at: Sequence[int] | None = None  # None: one write per SSE event (a single write if JSON)
    pace_ms: float | None = None  # pause between writes (None: the mock's default pace)
    head_delay_ms: float = 0.0  # wait before the head
    head_separate: bool = False  # the head as its own write (default: with the first body write)
    terminator_separate: bool = False  # the chunked terminator "0\r\n\r\n" as its own write
    drop_at: int | None = None  # abort the connection after this many wire bytes
    stall_at: int | None = None  # stop sending after this many wire bytes; keep the connection
    hang: bool = False  # read the request, never answer
    reset: bool = False  # close the connection without answering (a stale keep-alive)
    raw: bytes | None = None  # write these bytes verbatim instead of a response
    close_after: bool = False  # close after the response, without announcing Connection: close

    @classmethod
    def replay(cls, body: bytes, **kw: Any) -> Scenario:
        return cls(body=body, **kw)

    @classmethod
    def error(
        cls, status: int, message: str, type: str = "invalid_request_error", code: str | None = None
    ) -> Scenario:
        body = orjson.dumps(
            {"error": {"message": message, "type": type, "param": None, "code": code}}
        )
        return cls(status=status, body=body, content_type="application/json", framing="length")


_DEFAULT_SCENARIO = Scenario()


@dataclass
class RecordedRequest:
    """One request the mock received."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # the mock's id of the connection it came on
    received_at: float = 0.0  # loop.time()

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


# ------------------------------------------------------------------------------ built-in answers


def _frame(piece: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(piece), piece)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _chat_usage(prompt: int, completion: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def provider_response_headers(n: int) -> list[tuple[str, str]]:
    """The headers OpenAI's API sends with a chat stream (besides the content type and the
    framing, which the mock writes itself), for its ``n``-th answer: the values that change per
    answer (rate limits left, timings, ids, cookies, the date) change with ``n``."""
    ms = 180 + n % 97
    return [
        ("date", formatdate(1_790_000_000 + n // 1000, usegmt=True)),
        ("access-control-expose-headers", "X-Request-ID"),
        ("openai-organization", "user-mockorganization0001"),
        ("openai-processing-ms", str(ms)),
        ("openai-project", "proj_mockproject00000000001"),
        ("openai-version", "2020-10-01"),
        ("x-envoy-upstream-service-time", str(ms - 4)),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "30000000"),
        ("x-ratelimit-remaining-requests", str(9999 - n % 5000)),
        ("x-ratelimit-remaining-tokens", str(29_999_000 - n % 1_000_000)),
        ("x-ratelimit-reset-requests", f"{6 + n % 50}ms"),
        ("x-ratelimit-reset-tokens", "0s"),
        ("x-request-id", f"req_{n:032x}"),
        ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
        ("cf-cache-status", "DYNAMIC"),
        (
            "set-cookie",
            f"__cf_bm=mock{n:040x}-1790000000-1.0.1.1-mock; path=/; "
            "expires=Sat, 21-Sep-26 12:30:00 GMT; domain=.api.openai.com; HttpOnly; Secure; "
            "SameSite=None",
        ),
        ("x-content-type-options", "nosniff"),
        (
            "set-cookie",
            f"_cfuvid=mock{n:032x}-1790000000000-0.0.1.1-604800000; path=/; "
            "domain=.api.openai.com; HttpOnly; Secure; SameSite=None",
        ),
        ("server", "cloudflare"),
        ("cf-ray", f"{n:016x}-AMS"),
        ("alt-svc", 'h3=":443"; ma=86400'),
    ]


def chat_stream_events(
    model: str, events: int, include_usage: bool, prompt_tokens: int
) -> list[bytes]:
    """``events`` SSE events (role, content..., finish, [DONE]); plus the usage-only chunk before
    [DONE] when ``include_usage``. Content chunks: ``events - 3``."""
    n_content = max(0, events - 3)
    base = {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict, finish: str | None) -> bytes:
        obj = dict(base)
        obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if include_usage:
            obj["usage"] = None
        return _sse(obj)

    out = [chunk({"role": "assistant", "content": ""}, None)]
    out += [chunk({"content": _WORDS[i % len(_WORDS)]}, None) for i in range(n_content)]
    out.append(chunk({}, "stop"))
    if include_usage:
        obj = dict(base)
        obj["choices"] = []
        obj["usage"] = _chat_usage(prompt_tokens, n_content)
        out.append(_sse(obj))
    out.append(b"data: [DONE]\n\n")
    return out


def chat_completion(model: str, events: int, prompt_tokens: int) -> bytes:
    n_content = max(0, events - 3)
    text = "".join(_WORDS[i % len(_WORDS)] for i in range(n_content))
    return orjson.dumps(
        {
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": _CREATED,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _chat_usage(prompt_tokens, n_content),
            "system_fingerprint": None,
        }
    )


def anthropic_message(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_mock",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": "Hello from the mock"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 5},
        }
    )


def _text_pieces(deltas: int) -> list[str]:
    """The canned answer in ``deltas`` pieces: one piece is the short canned sentence."""
    if deltas <= 1:
        return ["Hello from the mock"]
    return [_WORDS[i % len(_WORDS)] for i in range(deltas)]


def anthropic_stream(model: str, deltas: int = 1) -> bytes:
    """An Anthropic Messages stream whose text comes in ``deltas`` ``text_delta`` events."""

    def ev(name: str, obj: dict) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    pieces = _text_pieces(deltas)
    usage0 = {"input_tokens": 11, "output_tokens": 1}
    return b"".join(
        [
            ev(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_mock",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage0,
                    },
                },
            ),
            ev(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ev("ping", {"type": "ping"}),
            *(
                ev(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
                for piece in pieces
            ),
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 5 if deltas <= 1 else deltas},
                },
            ),
            ev("message_stop", {"type": "message_stop"}),
        ]
    )


def gemini_response(model: str) -> dict:
    return {
        "candidates": [
            {
                "content": {"parts": [{"text": "Hello from the mock"}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 11,
            "candidatesTokenCount": 5,
            "totalTokenCount": 16,
        },
        "modelVersion": model,
    }


def gemini_stream(model: str, deltas: int = 1) -> bytes:
    """A Gemini ``alt=sse`` stream: one event per text piece, each with the usage so far (as
    Gemini sends it), the last with the finish reason. One piece: the canned single event."""
    if deltas <= 1:
        return _sse(gemini_response(model))
    out = []
    for i, piece in enumerate(_text_pieces(deltas)):
        content = {"parts": [{"text": piece}], "role": "model"}
        cand: dict[str, Any] = {"content": content, "index": 0}
        if i == deltas - 1:
            cand["finishReason"] = "STOP"
        usage = {"promptTokenCount": 11, "candidatesTokenCount": i + 1, "totalTokenCount": 12 + i}
        out.append(
            _sse(
                {
                    "candidates": [cand],
                    "usageMetadata": usage,
                    "modelVersion": model,
                    "responseId": "gemini-mock",
                }
            ).replace(b"\n\n", b"\r\n\r\n")  # Gemini ends its events with CRLF CRLF
        )
    return b"".join(out)


# ------------------------------------------------------------------------------------ connection


class _MockConnection(asyncio.Protocol):
    def __init__(self, mock: MockUpstream, conn_id: int) -> None:
        self.mock = mock
        self.id = conn_id
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[RecordedRequest, bool]] = deque()
        self.busy = False
        self.closed = False
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.mock._opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.mock._closed(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = RecordedRequest(
            method=self.parser.get_method().decode(),
            path=self._url.decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            connection=self.id,
            received_at=self.mock._now(),
        )
        self.pending.append((req, self.parser.should_keep_alive()))
        if not self.busy:
            self._next()

    # answering
    def _next(self) -> None:
        while self.pending and not self.closed:
            req, keep_alive = self.pending.popleft()
            self.mock._record(req)
            actions = self.mock._plan(req, keep_alive)
            self.busy = True
            if not self._run(actions, 0):
                return  # continues from a timer (or never: hang/stall)
        self.busy = False

    def _run(self, actions: list, i: int) -> bool:
        """Execute actions from ``i``; False when the rest runs later (or never)."""
        transport = self.transport
        n = len(actions)
        while i < n:
            if self.closed:
                return False
            kind, arg = actions[i]
            i += 1
            if kind == "w":
                transport.write(arg)
            elif kind == "sleep":
                self._timer = asyncio.get_running_loop().call_later(arg, self._resume, actions, i)
                return False
            elif kind == "hang":
                return False
            elif kind == "close":
                transport.close()
                return False
            elif kind == "abort":
                transport.abort()
                return False
        return True

    def _resume(self, actions: list, i: int) -> None:
        self._timer = None
        if self._run(actions, i):
            self._next()


# ------------------------------------------------------------------------------------------ mock


class MockUpstream:
    """The mock provider. Attributes tests may set: ``scenarios`` (a deque of ``Scenario``, one per
    request, FIFO), ``events`` (SSE events per default stream), ``text_deltas`` (text deltas per
    Anthropic / Gemini stream), ``pace_ms``, ``models``, ``prompt_tokens``. Observations:
    ``requests``, ``connections_opened``, ``connections_closed``, ``opened_at`` / ``closed_at``
    (connection id -> loop time), ``open_connections``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        events: int = 33,
        text_deltas: int = 1,
        pace_ms: float = 0.0,
        record: bool = True,
        models: Sequence[str] = ("mock-model", "mock-model-mini"),
        ssl_context: ssl.SSLContext | None = None,
        provider_headers: bool = False,
    ) -> None:
        self.host = host
        # Chat streams carry the response headers a real provider sends (``provider_headers``):
        # rate limits, timings, ids, cookies, values that change from one answer to the next.
        self.provider_headers = provider_headers
        self._answers = itertools.count(1)
        self.ssl_context = ssl_context
        self.port = port
        self.events = events
        self.text_deltas = text_deltas
        self.pace_ms = pace_ms
        self.record = record
        self.models = list(models)
        self.prompt_tokens = 11
        self.scenarios: deque[Scenario] = deque()
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self.opened_at: dict[int, float] = {}
        self.closed_at: dict[int, float] = {}
        self._conns: dict[int, _MockConnection] = {}
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._close_waiters: list[tuple[int, asyncio.Future]] = []
        self._request_waiters: list[tuple[int, asyncio.Future]] = []
        self._cache: dict[tuple, list[tuple[str, Any]]] = {}

    # ---- lifecycle

    async def start(self) -> MockUpstream:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _MockConnection(self, next(self._ids)),
            self.host,
            self.port,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._conns.values()):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None

    async def __aenter__(self) -> MockUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def last_request(self) -> RecordedRequest:
        return self.requests[-1]

    # ---- waiting helpers for tests

    async def wait_closed(self, count: int = 1, timeout: float = 2.0) -> float:
        """Wait until ``count`` connections closed in total; return the loop time of that close."""
        if self.connections_closed < count:
            fut = self._loop.create_future()
            self._close_waiters.append((count, fut))
            await asyncio.wait_for(fut, timeout)
        return sorted(self.closed_at.values())[count - 1]

    async def wait_requests(self, count: int = 1, timeout: float = 2.0) -> None:
        if len(self.requests) < count:
            fut = self._loop.create_future()
            self._request_waiters.append((count, fut))
            await asyncio.wait_for(fut, timeout)

    def close_idle_connections(self) -> int:
        """Close every connection not answering a request (keep-alive closed between requests)."""
        n = 0
        for conn in list(self._conns.values()):
            if not conn.busy and conn.transport is not None:
                conn.transport.close()
                n += 1
        return n

    # ---- connection bookkeeping

    def _now(self) -> float:
        return self._loop.time()

    def _opened(self, conn: _MockConnection) -> None:
        self.connections_opened += 1
        self._conns[conn.id] = conn
        self.opened_at[conn.id] = self._now()

    def _closed(self, conn: _MockConnection) -> None:
        self.connections_closed += 1
        self._conns.pop(conn.id, None)
        self.closed_at[conn.id] = self._now()
        self._close_waiters = self._wake(self._close_waiters, self.connections_closed)

    def _record(self, req: RecordedRequest) -> None:
        if self.record:
            self.requests.append(req)
            self._request_waiters = self._wake(self._request_waiters, len(self.requests))

    @staticmethod
    def _wake(waiters: list, value: int) -> list:
        keep = []
        for count, fut in waiters:
            if value >= count:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((count, fut))
        return keep

    # ---- planning an answer

    def _plan(self, req: RecordedRequest, keep_alive: bool) -> list[tuple[str, Any]]:
        scenario = self.scenarios.popleft() if self.scenarios else None
        if scenario is None:
            plan = self._default_plan(req, keep_alive)
            if plan is not None:
                return plan
            return self._scenario_plan(self._builtin_scenario(req), keep_alive)
        if scenario.body is None and scenario.raw is None and not (scenario.hang or scenario.reset):
            # no body given: the built-in answer, delivered the way the scenario says
            builtin = self._builtin_scenario(req)
            changes = {
                f.name: getattr(scenario, f.name)
                for f in fields(Scenario)
                if getattr(scenario, f.name) != getattr(_DEFAULT_SCENARIO, f.name)
            }
            scenario = replace(builtin, **changes)
        return self._scenario_plan(scenario, keep_alive)

    def _default_plan(self, req: RecordedRequest, keep_alive: bool) -> list | None:
        """The cached fast path: an OpenAI chat or Anthropic stream at the default pace."""
        stream = self._chat_stream(req)
        if stream is None:
            return self._anthropic_plan(req, keep_alive)
        model, include_usage = stream
        if self.provider_headers:  # a head of its own for each answer: not cached
            events = chat_stream_events(model, self.events, include_usage, self.prompt_tokens)
            headers = provider_response_headers(next(self._answers))
            scenario = Scenario(body=b"".join(events), headers=headers)
            return self._scenario_plan(scenario, keep_alive, events)
        key = (model, include_usage, self.events, self.pace_ms, self.prompt_tokens, keep_alive)
        plan = self._cache.get(key)
        if plan is None:
            events = chat_stream_events(model, self.events, include_usage, self.prompt_tokens)
            plan = self._scenario_plan(Scenario(body=b"".join(events)), keep_alive, events)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = plan
        return plan

    def _anthropic_plan(self, req: RecordedRequest, keep_alive: bool) -> list | None:
        if req.method != "POST" or not req.path.startswith("/v1/messages"):
            return None
        try:
            payload = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or payload.get("stream") is not True:
            return None
        model = str(payload.get("model") or "mock-model")
        key = ("anthropic", model, self.text_deltas, self.pace_ms, keep_alive)
        plan = self._cache.get(key)
        if plan is None:
            plan = self._scenario_plan(
                Scenario(body=anthropic_stream(model, self.text_deltas)), keep_alive
            )
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = plan
        return plan

    @staticmethod
    def _chat_stream(req: RecordedRequest) -> tuple[str, bool] | None:
        """(model, include_usage) when ``req`` asks for an OpenAI chat stream."""
        if req.method != "POST" or not req.path.startswith("/v1/chat/completions"):
            return None
        try:
            payload = orjson.loads(req.body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict) or payload.get("stream") is not True:
            return None
        opts = payload.get("stream_options")
        include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        return str(payload.get("model") or "mock-model"), include_usage

    def _builtin_scenario(self, req: RecordedRequest) -> Scenario:
        path, _, _query = req.path.partition("?")
        try:
            payload = orjson.loads(req.body) if req.body else {}
        except orjson.JSONDecodeError:
            return Scenario.error(400, "the request body is not JSON")
        if not isinstance(payload, dict):
            payload = {}
        model = str(payload.get("model") or "mock-model")
        json_type = "application/json"
        stream = self._chat_stream(req)
        if stream is not None:
            events = chat_stream_events(stream[0], self.events, stream[1], self.prompt_tokens)
            return Scenario(body=b"".join(events))
        if req.method == "POST" and path.endswith("/chat/completions"):
            return Scenario(
                body=chat_completion(model, self.events, self.prompt_tokens),
                content_type=json_type,
                framing="length",
            )
        if req.method == "POST" and path.endswith("/messages"):
            if payload.get("stream") is True:
                return Scenario(body=anthropic_stream(model, self.text_deltas))
            return Scenario(body=anthropic_message(model), content_type=json_type, framing="length")
        if req.method == "POST" and ":streamGenerateContent" in path:
            gmodel = path.rsplit("/", 1)[-1].split(":", 1)[0]
            return Scenario(body=gemini_stream(gmodel, self.text_deltas))
        if req.method == "POST" and ":generateContent" in path:
            gmodel = path.rsplit("/", 1)[-1].split(":", 1)[0]
            body = orjson.dumps(gemini_response(gmodel))
            return Scenario(body=body, content_type=json_type, framing="length")
        if req.method == "GET" and path == "/_mock/stats":
            stats = {
                "connections_opened": self.connections_opened,
                "connections_closed": self.connections_closed,
                "open_connections": self.open_connections,
            }
            return Scenario(body=orjson.dumps(stats), content_type=json_type, framing="length")
        if req.method == "GET" and path.endswith("/models"):
            return Scenario(body=self._models_body(req, path), content_type=json_type)
        return Scenario.error(404, f"the mock has no route for {req.method} {path}")

    def _models_body(self, req: RecordedRequest, path: str) -> bytes:
        if path.startswith("/v1beta"):  # Gemini's native listing
            data = [
                {"name": "models/" + m, "displayName": m, "supportedGenerationMethods": []}
                for m in self.models
            ]
            return orjson.dumps({"models": data})
        if req.header("anthropic-version") is not None:
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models
            ]
            return orjson.dumps({"data": data, "has_more": False})
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": "mock"}
            for m in self.models
        ]
        return orjson.dumps({"object": "list", "data": data})

    def _scenario_plan(
        self, sc: Scenario, keep_alive: bool, events: list[bytes] | None = None
    ) -> list[tuple[str, Any]]:
        plan: list[tuple[str, Any]] = []
        if sc.head_delay_ms:
            plan.append(("sleep", sc.head_delay_ms / 1000))
        if sc.hang:
            return [*plan, ("hang", None)]
        if sc.reset:
            return [*plan, ("close", None)]
        pace = (self.pace_ms if sc.pace_ms is None else sc.pace_ms) / 1000
        if sc.raw is not None:
            head, writes = b"", _split(sc.raw, sc.split_at)
        else:
            body = sc.body if sc.body is not None else b""
            ctype = sc.content_type or "text/event-stream"
            if sc.split_at is not None:
                pieces = _split(body, sc.split_at)
            elif events is not None:
                pieces = events
            elif ctype.startswith("text/event-stream"):
                pieces = split_sse_events(body)
            else:
                pieces = [body] if body else []
            lines = [f"HTTP/1.1 {sc.status} {_reason(sc.status)}", f"Content-Type: {ctype}"]
            if ctype.startswith("text/event-stream"):
                lines.append("Cache-Control: no-cache")
            lines += [f"{k}: {v}" for k, v in sc.headers]
            if sc.framing == "chunked":
                lines.append("Transfer-Encoding: chunked")
                writes = [_frame(p) for p in pieces if p]
                if sc.terminator_separate or not writes:
                    writes.append(_CHUNK_END)
                else:
                    writes[-1] += _CHUNK_END
            elif sc.framing == "length":
                lines.append(f"Content-Length: {len(body)}")
                writes = [p for p in pieces if p]
            elif sc.framing == "close":
                lines.append("Connection: close")
                writes = [p for p in pieces if p]
            else:
                raise ValueError(f"unknown framing {sc.framing!r}")
            if not keep_alive and sc.framing != "close":
                lines.append("Connection: close")
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        cut = sc.drop_at if sc.drop_at is not None else sc.stall_at
        ending: tuple[str, Any] | None = None
        if cut is not None:
            writes = _truncate(writes, cut)
            ending = ("abort", None) if sc.drop_at is not None else ("hang", None)
        if head:
            if sc.head_separate or not writes:
                writes.insert(0, head)
            else:
                writes[0] = head + writes[0]
        for i, w in enumerate(writes):
            if i and pace:
                plan.append(("sleep", pace))
            plan.append(("w", w))
        if ending is not None:
            plan.append(ending)
        elif sc.raw is not None or sc.framing == "close" or sc.close_after or not keep_alive:
            plan.append(("close", None))
        return plan


def _split(data: bytes, positions: Sequence[int] | None) -> list[bytes]:
    if not positions:
        return [data] if data else []
    out, prev = [], 0
    for pos in sorted(set(positions)):
        if 0 < pos < len(data) and pos > prev:
            out.append(data[prev:pos])
            prev = pos
    out.append(data[prev:])
    return [p for p in out if p]


def split_sse_events(body: bytes) -> list[bytes]:
    """One piece per SSE event (ends at a blank line, LF or CRLF)."""
    out, start, i = [], 0, 0
    n = len(body)
    while i < n:
        if body.startswith(b"\n\n", i):
            end = i + 2
        elif body.startswith(b"\r\n\r\n", i):
            end = i + 4
        else:
            i += 1
            continue
        out.append(body[start:end])
        start = i = end
    if start < n:
        out.append(body[start:])
    return out


def _truncate(writes: list[bytes], limit: int) -> list[bytes]:
    out, total = [], 0
    for w in writes:
        if total + len(w) >= limit:
            if limit - total > 0:
                out.append(w[: limit - total])
            return out
        out.append(w)
        total += len(w)
    return out


# ------------------------------------------------------------------------------------- process


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gwcore.testing.mock_upstream",
        description="A mock OpenAI-compatible provider on 127.0.0.1 for benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--events", type=int, default=33, help="SSE events per stream answer")
    parser.add_argument(
        "--text-deltas",
        type=int,
        default=1,
        help="text deltas per Anthropic / Gemini stream answer (1: one canned sentence)",
    )
    parser.add_argument("--pace-ms", type=float, default=0.0, help="pause between events")
    parser.add_argument("--record", action="store_true", help="keep received requests (memory)")
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument(
        "--provider-headers",
        action="store_true",
        help="chat streams carry the two dozen response headers OpenAI's API sends",
    )
    args = parser.parse_args(argv)

    async def serve() -> None:
        mock = MockUpstream(
            args.host,
            args.port,
            events=args.events,
            text_deltas=args.text_deltas,
            pace_ms=args.pace_ms,
            record=args.record,
            provider_headers=args.provider_headers,
        )
        await mock.start()
        print(f"mock upstream listening on {mock.base_url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await mock.stop()

    runner = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
