"""A gateway in front of the mock upstream, in-process, for the relay and end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gwcore.config import parse_config
from gwcore.gateway import Gateway
from gwcore.server import routes
from gwcore.server.app import App
from gwcore.server.config import ServerConfig, Timeouts
from gwcore.server.runner import running_server
from gwcore.testing import MockUpstream
from gwcore.usage import MemorySink

CHUNK_END = b"0\r\n\r\n"


@dataclass
class Harness:
    mock: MockUpstream
    gateway: Gateway
    sink: MemorySink
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def gateway_with_mock(
    *,
    providers: Sequence[dict[str, Any]] | None = None,
    upstream: dict[str, Any] | None = None,
    **mock_kwargs: Any,
) -> AsyncIterator[Harness]:
    async with MockUpstream(**mock_kwargs) as mock:
        if providers is None:
            providers = [
                {
                    "name": "mock",
                    "type": "openai_compatible",
                    "base_url": mock.base_url,
                    "api_key": "sk-provider-key",
                    "models": ["gpt-test"],
                }
            ]
        else:
            # a base_url that is a path ("/alt/v1") is one on the mock
            providers = [
                {**p, "base_url": _on_mock(mock, p.get("base_url", mock.base_url))}
                for p in providers
            ]
        data: dict[str, Any] = {"from_env": False, "providers": list(providers)}
        if upstream:
            data["upstream"] = upstream
        sink = MemorySink()
        gateway = Gateway(parse_config(data, {}), sink=sink, refresh_models=False)
        app = App(ServerConfig(timeouts=Timeouts(drain=1.0)))
        routes.install(app, app.config, gateway)
        async with running_server(app) as (host, port):
            yield Harness(mock, gateway, sink, host, port)


def _on_mock(mock: MockUpstream, base_url: str) -> str:
    return mock.url + base_url if base_url.startswith("/") else base_url


def chat_body(stream: bool, *, model: str = "gpt-test", include_usage: bool | None = None) -> dict:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    return body


class RawResponse:
    def __init__(self, head: bytes, body: bytes, complete: bool) -> None:
        self.head = head
        self.body = body  # the raw body as it came on the wire (chunk framing included)
        self.complete = complete  # the chunked body ended with its last chunk
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                self.headers[k.strip().lower()] = v.strip()

    def payload(self) -> bytes:
        return (
            dechunk(self.body)
            if "chunked" in self.headers.get("transfer-encoding", "")
            else self.body
        )


def dechunk(raw: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return b"".join(out)
        out.append(raw[pos : pos + size])
        pos += size + 2


async def read_stream_to_end(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(status line, de-chunked body) of a chunked response read to its last chunk (10 s per
    read at most; a connection closed before the end fails the test)."""
    raw = bytearray()
    while not raw.endswith(b"\r\n0\r\n\r\n"):
        got = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert got, "the gateway closed the connection before the end of the body"
        raw += got
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], dechunk(payload)


def front_buffers(http_module: Any) -> list[int]:
    """What each live front-door connection (of ``http_module``) holds in its transport."""
    gc.collect()  # (earlier tests' connections may be cyclic garbage not yet collected)
    fronts = [o for o in gc.get_objects() if isinstance(o, http_module.HttpProtocol)]
    return [p.transport.get_write_buffer_size() for p in fronts if p.transport]


def _chunked_done(raw: bytes) -> bool:
    pos = 0
    try:
        while True:
            eol = raw.index(b"\r\n", pos)
            size = int(raw[pos:eol].split(b";")[0], 16)
            pos = eol + 2
            if size == 0:
                return raw.endswith(b"\r\n\r\n") and len(raw) >= pos + 2
            pos += size + 2
            if pos > len(raw):
                return False
    except ValueError:
        return False


async def raw_post(
    host: str,
    port: int,
    body: dict | bytes,
    *,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> RawResponse:
    """One POST over a raw socket; returns the head and the raw body bytes as received."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n{extra}\r\n"
            ).encode()
            + data
        )
        return await asyncio.wait_for(_read_response(reader), timeout)
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader) -> RawResponse:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await reader.read(65536)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    resp = RawResponse(head, rest, False)
    if "chunked" in resp.headers.get("transfer-encoding", ""):
        while not _chunked_done(rest):
            chunk = await reader.read(65536)
            if not chunk:
                break
            rest += chunk
    else:
        length = int(resp.headers.get("content-length", "-1"))
        while length < 0 or len(rest) < length:
            chunk = await reader.read(65536)
            if not chunk:
                break
            rest += chunk
    return RawResponse(head, rest, _chunked_done(rest))


async def warm_pool(h: Harness) -> None:
    """One relayed stream, so that the next request finds an idle pooled connection and takes the
    path without a task (``DEFERRED``); its record and recorded request are then forgotten."""
    resp = await raw_post(h.host, h.port, chat_body(True))
    assert resp.status == 200 and resp.complete
    assert [s["idle"] for s in h.gateway.pool.stats().values()] == [1]
    h.sink.clear()
    h.mock.requests.clear()


def no_awaited_path(h: Harness) -> None:
    """Make the awaited way to the upstream fail loudly: what follows must not use it."""

    async def awaited(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the request took the awaited path, not the pooled one")

    h.gateway.pool.open_raw = awaited  # type: ignore[method-assign]


async def disconnect_after(h: Harness, body: dict, *, read_bytes: int) -> float:
    """POST ``body`` to the gateway, wait until the mock got the request and ``read_bytes`` of
    the answer arrived, then abort the client connection; returns the loop time of the abort."""
    reader, writer = await asyncio.open_connection(h.host, h.port)
    data = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(data), data)
    )
    await h.mock.wait_requests(1)
    got = b""
    while len(got) < read_bytes:
        chunk = await reader.read(1024)
        assert chunk
        got += chunk
    writer.transport.abort()
    return asyncio.get_running_loop().time()
