"""The front door over real sockets on 127.0.0.1, served in-process (a thread with its own loop).

Raw sockets check the framing byte by byte; h11 and httpx check it independently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator

import h11
import httpx
import orjson
import pytest

from gwcore.errors import GatewayError
from gwcore.server import App, Limits, Response, ServerConfig, Timeouts, running_server
from gwcore.server.runner import new_event_loop

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("http_impl")]

# -- a test app ---------------------------------------------------------------------------------

PROBE: dict[str, object] = {}  # what handlers saw, for assertions


async def echo(request, channel):
    return Response(
        200,
        request.body,
        [("x-method", request.method), ("x-query", request.query)],
        content_type=request.headers.get("content-type", "application/octet-stream"),
    )


def echo_headers(request, channel):
    return Response.json({"headers": request.headers, "version": request.http_version})


async def stream(request, channel):
    """Chunks every 50 ms: ?n=<count>&ms=<interval>."""
    params = dict(p.split("=") for p in request.query.split("&") if p)
    n, ms = int(params.get("n", 3)), int(params.get("ms", 10))
    channel.start(200, [("content-type", "text/event-stream")])
    for i in range(n):
        channel.write(b"data: %d\n\n" % i)
        await asyncio.sleep(ms / 1000)
    channel.end()


async def relay_style(request, channel):
    """Starts, returns None, and finishes later from loop callbacks with pre-framed bytes."""
    channel.start(200, [("content-type", "text/plain")])
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, channel.write_raw, b"5\r\nhello\r\n")
    loop.call_later(0.10, channel.write_raw, b"6\r\n world\r\n0\r\n\r\n")
    loop.call_later(0.12, lambda: channel.end(terminator_sent=True))
    return None


async def endless(request, channel):
    """Writes 64 KiB chunks for as long as the client is there, waiting on drain()."""
    chunk = b"x" * 65536
    PROBE["endless_written"] = 0
    PROBE["endless_max_buffer"] = 0
    channel.start(200, [("content-type", "application/octet-stream")])
    transport = channel.transport
    while True:
        channel.write(chunk)
        PROBE["endless_written"] += len(chunk)
        PROBE["endless_max_buffer"] = max(
            PROBE["endless_max_buffer"], transport.get_write_buffer_size()
        )
        await channel.drain()


class FlowRecorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pause_reading(self) -> None:
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.events.append("resume")


async def flow(request, channel):
    """A relay-shaped producer: write_raw, pausing when the client transport says so."""
    recorder = FlowRecorder()
    PROBE["flow"] = recorder
    channel.start(200, [("content-type", "application/octet-stream")])
    channel.set_flow_target(recorder)
    chunk = b"10000\r\n" + b"y" * 65536 + b"\r\n"
    for _ in range(200):  # 12.5 MiB
        channel.write_raw(chunk)
        if recorder.events and recorder.events[-1] == "pause":
            await channel.drain()
    channel.write_raw(b"0\r\n\r\n")
    channel.end(terminator_sent=True)


def boom(request, channel):
    raise ValueError("secret internals")


async def gateway_error(request, channel):
    raise GatewayError(429, "slow down", code="rate_limited")


def no_response(request, channel):
    return None


def held_probe(request, channel):
    """A head kept back, then taken twice: the head to write in front of the first chunk, then
    nothing held (None: the second chunk goes alone)."""
    channel.start(200, [("content-type", "text/plain")], chunked=True, hold=True)
    first = channel.take_held()
    again = channel.take_held()
    PROBE["held"] = (first, again)
    for head, out in ((first, b"5\r\nhello\r\n"), (again, b"1\r\n!\r\n")):
        if head is None:
            channel.transport.write(out)
        elif head:
            channel.transport.write(head + out)
    channel.write_raw(b"0\r\n\r\n")
    channel.end(terminator_sent=True)


def size_probe(request, channel):
    PROBE.setdefault("pipeline_buffers", []).append(channel.transport.get_write_buffer_size())
    return Response(200, b"z" * 2048)


async def disconnect_probe(request, channel):
    """Three on_disconnect callbacks (one kept alone, then a list): each runs once, in order."""
    PROBE["disconnected"] = threading.Event()
    PROBE["disconnect_order"] = order = []
    channel.on_disconnect(lambda: order.append(1))
    channel.on_disconnect(lambda: order.append(2))
    channel.on_disconnect(PROBE["disconnected"].set)
    channel.start(200, [("content-type", "text/event-stream")])
    channel.write(b"data: first\n\n")
    with contextlib.suppress(ConnectionError):
        for _ in range(200):
            await asyncio.sleep(0.01)
            channel.write(b"data: more\n\n")
            await channel.drain()


async def suspends(request, channel):
    """Answers after suspending twice (a bare yield, then a timer). Its first step already runs
    in a task: libraries (asyncpg, asyncio.timeout) need current_task() from the start."""
    if asyncio.current_task() is None:
        return Response(500, b"no current task")
    await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    return Response(200, b"after " + request.query.encode())


async def fails_late(request, channel):
    await asyncio.sleep(0.01)
    raise ValueError("late secret")


async def waits_for_ever(request, channel):
    """Waits on a future nobody resolves; a client that leaves cancels the wait."""
    PROBE["cancelled"] = threading.Event()
    channel.on_disconnect(channel.cancel_handler)
    try:
        await asyncio.get_running_loop().create_future()
    except asyncio.CancelledError:
        PROBE["cancelled"].set()
        raise


def make_app() -> App:
    app = App()
    app.route("GET", "/suspends", suspends)
    app.route("GET", "/fails-late", fails_late)
    app.route("GET", "/waits", waits_for_ever)
    app.route("POST", "/echo", echo)
    app.route("PUT", "/echo", echo)
    app.route("GET", "/headers", echo_headers)
    app.route("GET", "/stream", stream)
    app.route("GET", "/relay", relay_style)
    app.route("GET", "/endless", endless)
    app.route("GET", "/flow", flow)
    app.route("GET", "/boom", boom)
    app.route("GET", "/gateway-error", gateway_error)
    app.route("GET", "/none", no_response)
    app.route("GET", "/size", size_probe)
    app.route("GET", "/held", held_probe)
    app.route("GET", "/disconnect", disconnect_probe)
    return app


@contextlib.contextmanager
def serve_in_thread(app: App | None = None, **config: object) -> Iterator[int]:
    """Run ``running_server`` on its own loop in a thread; yield the port."""
    config.setdefault("timeouts", Timeouts(drain=1.0))
    server_config = ServerConfig(host="127.0.0.1", port=0, **config)  # type: ignore[arg-type]
    app = app if app is not None else make_app()
    box: dict[str, object] = {}
    ready = threading.Event()

    def run() -> None:
        loop = new_event_loop()

        async def main() -> None:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop = asyncio.Event()
            async with running_server(app, "127.0.0.1", 0, config=server_config) as (_, port):
                box["port"] = port
                ready.set()
                await stop.wait()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10) and "port" in box, "server did not start"
    try:
        yield box["port"]  # type: ignore[misc]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)  # type: ignore[attr-defined]
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serve_in_thread() as p:
        yield p


# -- a raw client -------------------------------------------------------------------------------


class Resp:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.header_list = headers
        self.headers = {k: v for k, v in headers}
        self.body = body

    def json(self) -> object:
        return orjson.loads(self.body)


class Conn:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def read_until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            self._fill()
        out, _, self.buf = self.buf.partition(sep)
        return out + sep

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head_only: bool = False) -> Resp:
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        assert lines[0].startswith("HTTP/1.1 ")
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.lower(), value.strip()))
        hmap = dict(headers)
        if head_only or status < 200 or status in (204, 304):
            body = b""
        elif hmap.get("transfer-encoding") == "chunked":
            assert "content-length" not in hmap
            parts = []
            while True:
                size = int(self.read_until(b"\r\n")[:-2], 16)
                if size == 0:
                    assert self.read_exact(2) == b"\r\n"
                    break
                parts.append(self.read_exact(size))
                assert self.read_exact(2) == b"\r\n"
            body = b"".join(parts)
        elif "content-length" in hmap:
            body = self.read_exact(int(hmap["content-length"]))
        else:
            body = self.read_to_eof()
        return Resp(status, headers, body)

    def read_to_eof(self) -> bytes:
        while True:
            try:
                self._fill()
            except EOFError:
                out, self.buf = self.buf, b""
                return out

    def is_closed(self, within: float = 2.0) -> bool:
        """True if the server closes the connection (EOF or reset) within ``within`` seconds."""
        self.sock.settimeout(within)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def chunked(body: bytes, sizes: tuple[int, ...] = (3, 1, 7)) -> bytes:
    out, i, k = [], 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        out.append(b"%x\r\n%s\r\n" % (len(body[i : i + n]), body[i : i + n]))
        i, k = i + n, k + 1
    return b"".join(out) + b"0\r\n\r\n"


def error_of(resp: Resp) -> dict:
    doc = resp.json()
    assert set(doc) == {"error"}
    assert set(doc["error"]) == {"message", "type", "param", "code"}
    return doc["error"]


# -- basics -------------------------------------------------------------------------------------


def test_health_and_common_headers(port):
    c = Conn(port)
    c.send(get("/health"))
    r = c.response()
    assert r.status == 200
    assert r.json() == {"status": "ok"}
    assert r.headers["content-type"] == "application/json"
    assert r.headers["server"] == "gwcore"
    assert r.headers["date"].endswith("GMT")
    assert r.headers["connection"] == "keep-alive"
    assert re.fullmatch(r"[0-9a-f]{20}", r.headers["x-request-id"])


@pytest.mark.parametrize("n", [1, 15, 16, 0xFFFFFFF, 0x10000000, 0xFFFFFFFF, 2**32, 2**40 + 7])
def test_new_request_id_is_prefix_and_at_least_8_hex_digits(http_impl, n):
    """The prefix and at least 8 hex digits of the next number, on both builds (the compiled
    one formats a C integer)."""
    state = http_impl.ServerState(App(), ServerConfig(), asyncio.new_event_loop())
    try:
        state.next_id = n
        assert state.new_request_id() == f"{state.id_prefix}{n:08x}"
        assert state.new_request_id() == f"{state.id_prefix}{n + 1:08x}"
    finally:
        state.loop.close()


def test_keep_alive_reuse(port):
    c = Conn(port)
    ids = set()
    for i in range(5):
        c.send(post("/echo", b"body %d" % i))
        r = c.response()
        assert r.body == b"body %d" % i
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 5


def test_pipelining_three_requests_in_one_write(port):
    c = Conn(port)
    c.send(post("/echo", b"one") + get("/stream?n=3&ms=20") + post("/echo", b"three"))
    assert c.response().body == b"one"
    assert c.response().body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert c.response().body == b"three"


def test_next_pipelined_request_waits_for_end_called_from_callbacks(port):
    c = Conn(port)
    c.send(get("/relay") + post("/echo", b"after"))
    r = c.response()
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.body == b"hello world"
    assert c.response().body == b"after"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_body_split_at_every_byte(port, framing):
    body = b'{"model":"m","messages":[]}'
    if framing == "chunked":
        raw = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
            body
        )
    else:
        raw = post("/echo", body)
    c = Conn(port)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(1, len(raw)):
        c.send(raw[:i])
        time.sleep(0.0005)
        c.send(raw[i:])
        r = c.response()
        assert r.status == 200, i
        assert r.body == body, i


def test_query_percent_decoding_and_repeated_headers(port):
    c = Conn(port)
    c.send(get("/head%65rs?a=1&b=%20", "X-Twice: 1\r\nx-twice: 2\r\n"))
    r = c.response()
    assert r.status == 200
    doc = r.json()
    assert doc["headers"]["x-twice"] == "1, 2"
    assert doc["version"] == "1.1"
    c.send(b"PUT /echo?a=1&b=%20 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
    r = c.response()
    assert r.headers["x-method"] == "PUT"
    assert r.headers["x-query"] == "a=1&b=%20"


def test_head_sends_headers_only(port):
    c = Conn(port)
    c.send(b"HEAD /health HTTP/1.1\r\n\r\n")
    r = c.response(head_only=True)
    assert r.status == 200
    assert r.headers["content-length"] == "15"
    c.send(get("/health"))  # nothing but the head was sent: the next response parses cleanly
    assert c.response().json() == {"status": "ok"}
    c.send(b"HEAD /stream?n=2 HTTP/1.1\r\n\r\n")
    r = c.response(head_only=True)
    assert r.headers["transfer-encoding"] == "chunked"
    c.send(get("/health"))
    assert c.response().json() == {"status": "ok"}


def test_held_head_taken_by_the_writer(port):
    """``take_held``: the held head (once) for the first bytes, then None (the bytes alone); for
    HEAD the channel writes the head itself and hands back b"" (nothing to write)."""
    c = Conn(port)
    c.send(get("/held"))
    r = c.response()
    assert r.status == 200 and r.body == b"hello!"
    first, again = PROBE["held"]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n")
    assert again is None
    c.send(b"HEAD /held HTTP/1.1\r\n\r\n")
    r = c.response(head_only=True)
    assert r.status == 200 and r.headers["transfer-encoding"] == "chunked"
    assert PROBE["held"] == (b"", b"")
    c.send(get("/health"))  # nothing but the head was sent: the next response parses cleanly
    assert c.response().json() == {"status": "ok"}


def test_connection_close_and_http10(port):
    c = Conn(port)
    c.send(get("/health", "Connection: close\r\n"))
    r = c.response()
    assert r.headers["connection"] == "close"
    assert c.is_closed()

    c = Conn(port)
    c.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert c.response().headers["connection"] == "close"
    assert c.is_closed()

    c = Conn(port)
    c.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert c.response().headers["connection"] == "keep-alive"
    c.send(b"GET /stream?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    r = c.response()  # no chunked framing for HTTP/1.0: the body ends with the connection
    assert "transfer-encoding" not in r.headers
    assert r.body == b"data: 0\n\ndata: 1\n\n"


def test_expect_100_continue(port):
    c = Conn(port)
    c.send(
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n"
        b"Content-Type: text/plain\r\n\r\n"
    )
    assert c.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(b"hello")
    r = c.response()
    assert (r.status, r.body) == (200, b"hello")
    # Refused before the body: no 100, the final status, and the connection closes.
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 40000000\r\nExpect: 100-continue\r\n\r\n")
    r = c.response()
    assert r.status == 413
    assert c.is_closed()


# -- errors -------------------------------------------------------------------------------------


def test_404_and_405_with_allow(port):
    c = Conn(port)
    c.send(get("/nope"))
    r = c.response()
    assert r.status == 404
    assert error_of(r)["type"] == "not_found_error"
    c.send(post("/health", b"x"))  # the body is read and dropped: the connection stays usable
    r = c.response()
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD, OPTIONS"
    assert error_of(r)["type"] == "invalid_request_error"
    c.send(get("/health"))
    assert c.response().status == 200


def test_malformed_request_is_400_and_closes(port):
    c = Conn(port)
    c.send(b"GARBAGE\r\n\r\n")
    r = c.response()
    assert r.status == 400
    assert "malformed" in error_of(r)["message"]
    assert r.headers["connection"] == "close"
    assert c.is_closed()


def test_uri_too_long_414(port):
    c = Conn(port)
    c.send(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    r = c.response()
    assert r.status == 414
    error_of(r)
    assert c.is_closed()


@pytest.mark.parametrize(
    "extra",
    [
        "".join(f"X-H{i}: v\r\n" for i in range(101)),  # too many
        "X-Big: " + "b" * 70000 + "\r\n",  # one huge header (never completes in one callback)
        "".join(f"X-H{i}: {'c' * 1000}\r\n" for i in range(70)),  # too many bytes in total
    ],
    ids=["count", "one-huge", "total-size"],
)
def test_header_limits_431(port, extra):
    c = Conn(port)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        c.send(get("/health", extra))  # the server may answer before it has read it all
    r = c.response()
    assert r.status == 431
    error_of(r)


def test_just_under_the_header_limits_is_fine(port):
    c = Conn(port)
    c.send(get("/health", "".join(f"X-H{i}: v\r\n" for i in range(99))))
    assert c.response().status == 200


def test_header_limits_431_on_the_quick_path():
    """Small requests, each one whole in one read (the quick parser's path): over either header
    limit they are refused as httptools' callbacks refuse them (431, the x-request-id read before
    the limit echoed, the connection closed); at the limits they are served."""

    def fill(n: int, size: int) -> str:  # n headers of 4 + size bytes each
        return "".join(f"X-F{i}: {'v' * size}\r\n" for i in range(n))

    # With get()'s "Host: t" (5 bytes): 6 headers, 200 bytes.
    at_limits = fill(5, 35)
    with serve_in_thread(limits=Limits(max_headers=6, max_header_bytes=200)) as p:
        c = Conn(p)
        c.send(get("/headers", at_limits))
        r = c.response()
        assert r.status == 200
        assert len(r.json()["headers"]) == 6
        for extra in (
            fill(6, 1),  # 7 headers, 35 bytes
            fill(4, 35) + "X-F9: " + "v" * 36 + "\r\n",  # 6 headers, 201 bytes
            "X-Request-Id: rid-431\r\n" + fill(5, 1),  # 7 headers, the id first
            "X-Request-Id: rid-431\r\n" + fill(4, 41),  # 6 headers, 204 bytes, the id first
        ):
            c = Conn(p)
            c.send(get("/headers", extra))
            r = c.response()
            assert r.status == 431, extra
            assert "too large or too many" in error_of(r)["message"]
            if "rid-431" in extra:
                assert r.headers["x-request-id"] == "rid-431"
            assert c.is_closed()


class _Transport:
    """Just what a protocol serving small answers calls on its transport."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, lines: list[bytes]) -> None:
        self.out.extend(bytes(line) for line in lines)

    def is_closing(self) -> bool:
        return False


def test_quick_path_serves_heads_up_to_the_header_limits(http_impl):
    """The quick path itself (no socket): a head at the limits is served by it with the header
    dict on_header would have built (and the counts left at zero); one over a limit is left to
    httptools, untouched."""
    seen = []

    def record(request, channel):
        seen.append(request.headers)
        return Response(200, b"ok")

    app = App()
    app.route("GET", "/h", record)
    config = ServerConfig(limits=Limits(max_headers=6, max_header_bytes=200))
    loop = asyncio.new_event_loop()
    try:
        state = http_impl.ServerState(app, config, loop)

        def served(extra: str) -> bool:
            proto = http_impl.HttpProtocol(state)
            transport = _Transport()
            proto.connection_made(transport)
            taken = proto._quick_request(get("/h", extra))
            assert (proto._nheaders, proto._header_bytes, proto._headers) == (0, 0, {})
            assert bool(transport.out) is taken
            if taken:
                assert transport.out[0].startswith(b"HTTP/1.1 200 OK\r\n")
            return taken

        # With get()'s "Host: t" (5 bytes).
        assert served("X-A: 1\r\nx-a: 22\r\nX-B: " + "v" * 169 + "\r\nx-c:\r\nX-d: \r\n")
        assert list(seen.pop().items()) == [
            ("host", "t"),
            ("x-a", "1, 22"),
            ("x-b", "v" * 169),
            ("x-c", ""),
            ("x-d", ""),
        ]
        assert served("".join(f"X-F{i}: {'v' * 35}\r\n" for i in range(5)))  # 6, 200 bytes
        assert not served("".join(f"X-F{i}: v\r\n" for i in range(6)))  # 7 headers
        assert not served(
            "".join(f"X-F{i}: {'v' * 35}\r\n" for i in range(4)) + "X-F: " + "v" * 37 + "\r\n"
        )  # 201 bytes
        assert len(seen) == 1
    finally:
        loop.close()


class _ClosingTransport(_Transport):
    """A ``_Transport`` a protocol may also close."""

    closed = False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_quick_path_bodies_up_to_the_body_limit(http_impl):
    """Whole requests with a body, each in one read (the quick path: its parser read the
    Content-Length): bodies up to the limit reach the handler, one after another on one
    connection (a 100 Continue never goes out); one byte over the limit is refused with 413
    and the connection closes, as from httptools."""
    bodies = []

    def echo(request, channel):
        bodies.append(request.body)
        return Response(200, b"ok")

    app = App()
    app.route("POST", "/e", echo)
    loop = asyncio.new_event_loop()
    try:
        state = http_impl.ServerState(app, ServerConfig(limits=Limits(max_body_bytes=10)), loop)
        proto = http_impl.HttpProtocol(state)
        transport = _ClosingTransport()
        proto.connection_made(transport)
        sent = [b"x" * 10, b"y" * 3, b"", b"z" * 10]
        for body in sent:
            assert proto._quick_request(post("/e", body))
        assert bodies == sent
        assert len(transport.out) == len(sent)
        assert all(out.startswith(b"HTTP/1.1 200 OK\r\n") for out in transport.out)
        assert not transport.closed
        assert proto._quick_request(post("/e", b"w" * 11))
        assert bodies == sent
        assert transport.out[-1].startswith(b"HTTP/1.1 413 ")
        assert b"connection: close\r\n" in transport.out[-1]
        assert transport.closed
    finally:
        loop.close()


@pytest.mark.parametrize("status", [200, 204, 304, 101])
def test_streamed_head_framing_and_connection_lines(http_impl, status):
    """``start()``'s head, byte for byte: chunked framing only for a status with a body, the
    Connection line as the request asked (keep-alive, then close)."""

    def stream(request, channel):
        channel.start(status, [("x-a", "1")])
        channel.end()

    app = App()
    app.route("GET", "/s", stream)
    loop = asyncio.new_event_loop()
    try:
        state = http_impl.ServerState(app, ServerConfig(), loop)
        proto = http_impl.HttpProtocol(state)
        transport = _ClosingTransport()
        proto.connection_made(transport)
        proto.data_received(get("/s", "X-Request-Id: r1\r\n"))
        proto.data_received(get("/s", "X-Request-Id: r2\r\nConnection: close\r\n"))
        no_body = status < 200 or status in (204, 304)
        framing = "" if no_body else "transfer-encoding: chunked\r\n"
        line = http_impl._STATUS_STR[status]
        heads = [
            f"{line}{state.common}x-request-id: r1\r\n{framing}connection: keep-alive\r\n"
            "x-a: 1\r\n\r\n",
            f"{line}{state.common}x-request-id: r2\r\n{framing}connection: close\r\nx-a: 1\r\n\r\n",
        ]
        terminator = [b"0\r\n\r\n"] if framing else []
        expected = [heads[0].encode(), *terminator, heads[1].encode(), *terminator]
        assert transport.out == expected
        assert transport.closed
    finally:
        loop.close()


def test_repeated_headers_reach_the_handler_joined():
    """A repeated name, in several cases, reaches the handler lowercase with its values joined
    in order, the same from the quick parser (one read) as from httptools (the head in two
    reads)."""
    extra = (
        "X-Twice: 1\r\nAccept: a\r\nx-twice: 1\r\nX-TWICE:\r\naccept: b, c\r\n"
        "HOST: again\r\nx-Once: \xe9\r\n"
    )
    raw = get("/headers", extra).decode().encode("latin-1")
    expected = {
        "host": "t, again",
        "x-twice": "1, 1, ",
        "accept": "a, b, c",
        "x-once": "\xe9",
    }
    seen = []
    with serve_in_thread() as p:
        for pieces in ([raw], [raw[:30], raw[30:]]):
            c = Conn(p)
            for piece in pieces:
                c.send(piece)
                time.sleep(0.05)
            r = c.response()
            assert r.status == 200
            headers = r.json()["headers"]
            assert headers == expected
            seen.append(list(headers))
    assert seen[0] == seen[1] == list(expected)  # in the order of their first lines


def test_body_limit_413_by_content_length(port):
    c = Conn(port)
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 33554433\r\n\r\n")  # no body sent
    r = c.response()
    assert r.status == 413
    assert error_of(r)["message"] == "request body too large"
    assert c.is_closed()


def test_body_limit_413_while_reading_chunked():
    with serve_in_thread(limits=Limits(max_body_bytes=1000)) as p:
        c = Conn(p)
        c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"a" * 999))
        assert c.response().status == 200
        c.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.send(chunked(b"a" * 2000, sizes=(400,)))
        r = c.response()
        assert r.status == 413
        assert c.is_closed()


def test_handler_exception_is_500_without_traceback_and_logged(port, caplog):
    c = Conn(port)
    with caplog.at_level(logging.ERROR, logger="gwcore.server"):
        c.send(get("/boom", "X-Request-Id: trace-me-42\r\n"))
        r = c.response()
        time.sleep(0.05)
    assert r.status == 500
    assert error_of(r) == {
        "message": "internal server error",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert b"secret" not in r.body and b"Traceback" not in r.body
    records = [rec for rec in caplog.records if "trace-me-42" in rec.getMessage()]
    assert records and records[0].exc_info and records[0].exc_info[0] is ValueError
    c.send(get("/health"))  # the connection survives a failed handler
    assert c.response().status == 200


def test_gateway_error_rendering(port):
    c = Conn(port)
    c.send(get("/gateway-error"))
    r = c.response()
    assert r.status == 429
    assert error_of(r) == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limited",
    }


def test_async_handlers_that_suspend_fail_late_or_are_cancelled(port):
    c = Conn(port)
    c.send(get("/suspends?a") + get("/fails-late") + get("/suspends?b"))  # pipelined
    first, failed, second = c.response(), c.response(), c.response()
    assert (first.status, first.body) == (200, b"after a")
    assert failed.status == 500 and b"late secret" not in failed.body
    assert (second.status, second.body) == (200, b"after b")
    c.send(get("/waits"))
    time.sleep(0.05)
    c.close()  # the client leaves while the handler waits: on_disconnect cancels it
    assert PROBE["cancelled"].wait(3)  # type: ignore[attr-defined]
    c = Conn(port)
    c.send(get("/health"))
    assert c.response().status == 200


def test_handler_returning_nothing_is_500(port):
    c = Conn(port)
    c.send(get("/none"))
    assert c.response().status == 500


def test_large_response_body_and_access_log(caplog):
    app = App()
    big = bytes(range(256)) * 4096  # 1 MiB

    def large(request, channel):
        return Response(200, big, content_type="application/octet-stream")

    app.route("GET", "/large", large)
    with (
        caplog.at_level(logging.INFO, logger="gwcore.server"),
        serve_in_thread(app, access_log=True) as p,
    ):
        c = Conn(p)
        c.send(get("/large", "X-Request-Id: access-1\r\n"))
        assert c.response().body == big
        time.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if "request_id=access-1" in r.getMessage()]
    assert len(lines) == 1
    assert "method=GET path=/large status=200" in lines[0]


# -- request ids and CORS -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("req_abc-123.x:y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("bad id", False),
        ("bad\u00e9", False),
    ],
)
def test_request_id_echo_or_new(port, sent, echoed):
    c = Conn(port)
    c.send(get("/health", f"X-Request-Id: {sent}\r\n").decode().encode("utf-8"))
    rid = c.response().headers["x-request-id"]
    assert (rid == sent) is echoed
    assert re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", rid)


def test_cors_off_by_default(port):
    c = Conn(port)
    c.send(get("/health", "Origin: https://app.example\r\n"))
    assert "access-control-allow-origin" not in c.response().headers
    c.send(
        b"OPTIONS /echo HTTP/1.1\r\nOrigin: https://app.example\r\n"
        b"Access-Control-Request-Method: POST\r\n\r\n"
    )
    r = c.response()
    assert r.status == 204
    assert "access-control-allow-origin" not in r.headers
    assert r.headers["allow"] == "OPTIONS, POST, PUT"


def test_cors_on_for_configured_origins():
    with serve_in_thread(cors_origins=("https://app.example",)) as p:
        c = Conn(p)
        c.send(get("/health", "Origin: https://app.example\r\n"))
        r = c.response()
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert r.headers["vary"] == "origin"
        c.send(get("/health", "Origin: https://evil.example\r\n"))
        assert "access-control-allow-origin" not in c.response().headers
        c.send(
            b"OPTIONS /echo HTTP/1.1\r\nOrigin: https://app.example\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
        r = c.response()
        assert r.status == 204
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert r.headers["access-control-allow-methods"] == "OPTIONS, POST, PUT"
        assert r.headers["access-control-allow-headers"] == "authorization, content-type"


# -- timeouts -----------------------------------------------------------------------------------


def test_slowloris_gets_408_and_close():
    with serve_in_thread(timeouts=Timeouts(header=0.4, keep_alive=5, drain=1)) as p:
        c = Conn(p)
        started = time.monotonic()
        c.send(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        with contextlib.suppress(OSError):
            for _ in range(10):  # a header byte now and then
                time.sleep(0.1)
                c.send(b"X")
        r = c.response()
        assert r.status == 408
        assert error_of(r)["type"] == "timeout_error"
        assert c.is_closed()
        assert time.monotonic() - started < 2.0


def test_idle_keep_alive_is_closed_but_a_flowing_stream_is_not():
    with serve_in_thread(timeouts=Timeouts(header=0.3, body=0.3, keep_alive=0.3, drain=1)) as p:
        c = Conn(p)
        c.send(get("/stream?n=12&ms=100"))  # 1.2 s, four times every timeout
        assert c.response().body.count(b"data:") == 12
        c.send(get("/health"))
        assert c.response().status == 200
        started = time.monotonic()
        assert c.is_closed(within=3)
        assert 0.15 < time.monotonic() - started < 1.5


# -- disconnects and flow control ---------------------------------------------------------------


def test_client_closing_mid_request_and_mid_stream(port):
    c = Conn(port)
    c.send(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part")
    c.close()
    c = Conn(port)
    c.send(b"GET /heal")
    c.close()
    c = Conn(port)
    c.send(get("/disconnect"))
    c.read_until(b"data: first\n\n")
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()  # reset
    assert PROBE["disconnected"].wait(3)  # type: ignore[attr-defined]
    assert PROBE["disconnect_order"] == [1, 2]
    c = Conn(port)
    c.send(get("/health"))
    assert c.response().status == 200


def test_client_that_never_reads_an_endless_stream_is_bounded():
    high = 256 * 1024
    with serve_in_thread(write_buffer_high=high, write_buffer_low=64 * 1024) as p:
        c = Conn(p)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(get("/endless"))
        time.sleep(1.0)
        written = PROBE["endless_written"]
        time.sleep(0.5)
        assert PROBE["endless_written"] == written  # the producer waits on drain()
        assert PROBE["endless_max_buffer"] <= high + 65536
        c.close()


def test_flow_target_is_paused_and_resumed(port):
    c = Conn(port)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.send(get("/flow"))
    time.sleep(0.5)  # not reading: the client transport fills and pauses the target
    recorder = PROBE["flow"]
    assert recorder.events and recorder.events[0] == "pause"  # type: ignore[attr-defined]
    r = c.response()
    assert len(r.body) == 200 * 65536
    assert "resume" in recorder.events  # type: ignore[attr-defined]


def test_pipelining_client_that_never_reads_is_bounded():
    high = 64 * 1024
    with serve_in_thread(write_buffer_high=high, write_buffer_low=16 * 1024) as p:
        PROBE["pipeline_buffers"] = []
        c = Conn(p, timeout=0.2)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        burst = get("/size") * 200
        sent = 0
        with contextlib.suppress(TimeoutError, BlockingIOError):
            for _ in range(2000):  # stops when the server stops reading and buffers fill
                c.sock.sendall(burst)
                sent += 200
        served = len(PROBE["pipeline_buffers"])
        assert served < sent  # the server stopped reading
        assert max(PROBE["pipeline_buffers"]) <= high + 4096
        c.close()


# -- independent clients ------------------------------------------------------------------------


def test_h11_validates_framing(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h11.Connection(h11.CLIENT)

    def roundtrip(method: str, target: str, body: bytes = b"") -> tuple[h11.Response, bytes]:
        headers = [("host", "t")]
        if body:
            headers.append(("content-length", str(len(body))))
        sock.sendall(conn.send(h11.Request(method=method, target=target, headers=headers)))
        if body:
            sock.sendall(conn.send(h11.Data(data=body)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        response, data = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                conn.start_next_cycle()
                return response, data  # type: ignore[return-value]

    response, data = roundtrip("GET", "/health")
    assert response.status_code == 200 and orjson.loads(data) == {"status": "ok"}
    response, data = roundtrip("POST", "/echo", b'{"a":1}')
    assert data == b'{"a":1}'
    response, data = roundtrip("GET", "/stream?n=5&ms=1")
    assert (b"transfer-encoding", b"chunked") in response.headers
    assert data == b"".join(b"data: %d\n\n" % i for i in range(5))
    response, data = roundtrip("GET", "/relay")
    assert data == b"hello world"
    response, data = roundtrip("GET", "/nope")
    assert response.status_code == 404
    sock.close()


def test_httpx_client(port):
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.get("/health").json() == {"status": "ok"}
        r = client.post("/echo", json={"x": 1})
        assert r.json() == {"x": 1}
        with client.stream("GET", "/stream?n=4&ms=5") as r:
            chunks = b"".join(r.iter_raw())
        assert chunks == b"".join(b"data: %d\n\n" % i for i in range(4))
        r = client.get("/health", headers={"x-request-id": "from-httpx"})
        assert r.headers["x-request-id"] == "from-httpx"
