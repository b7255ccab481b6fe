# cython: annotation_typing=False
# (Compiled into gwcore.server._http: annotations document, they never become C-level type checks
# that this pure-Python twin would not make.)
"""HTTP/1.1 on one client connection: ``HttpProtocol`` (an asyncio Protocol around httptools) and
``ResponseChannel`` (the writer a handler drives), plus ``ServerState`` shared by the connections of
one worker.

Owns request framing and limits, keep-alive, pipelining (FIFO, one response at a time), timeouts
(coarse deadlines checked by one ticker per worker, never a timer per request), write flow control
and the rendering of every front-door error. Must never buffer without bound for a client (it stops
reading instead), never kill a response that is flowing, never show a client a traceback, and never
do Python work per byte on ``ResponseChannel.write_raw``: that is ``transport.write`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httptools

from gwcore._transports import DIRECT_TRANSPORTS
from gwcore.errors import GatewayError
from gwcore.server.app import (
    DEFERRED,
    App,
    ClientDisconnected,
    FlowTarget,
    Request,
    Response,
    error_response,
    internal_error,
    status_line,
)
from gwcore.server.config import ServerConfig
from gwcore.sse import RequestHeadMemo as _RequestHeadMemo
from gwcore.sse import bytes_tail as _bytes_tail
from gwcore.sse import quick_request_head as _quick_request_head

if TYPE_CHECKING:
    from gwcore.server.app import Handler

__all__ = ["ClientDisconnected", "FlowTarget", "HttpProtocol", "ResponseChannel", "ServerState"]

logger = logging.getLogger("gwcore.server")

_EAGER_TASKS = sys.version_info >= (3, 12)  # asyncio.Task(eager_start=True)
_TASK = "gwcore-handler"
_STATUS = {code: status_line(code) for code in range(100, 600)}
_STATUS_STR = {code: line.decode("latin-1") for code, line in _STATUS.items()}
_CONNECTION = {True: b"connection: keep-alive\r\n", False: b"connection: close\r\n"}
_CONNECTION_STR = {True: "connection: keep-alive\r\n", False: "connection: close\r\n"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_TERMINATOR = b"0\r\n\r\n"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH")}
_NO_BODY_STATUS = frozenset((204, 304))
_BIG_CHUNK = 16 * 1024  # write() frames smaller data by copying, larger by writelines
_LINGER = 2.0  # seconds a half-closed connection waits for the client's EOF


_NAMES: dict[bytes, str] = {}  # header name as received -> its lowercase text
_MAX_NAMES = 512


class _StopParsing(Exception):
    """Raised inside a parser callback to abandon the rest of the input."""


def _drop(data: bytes) -> None:
    """``write_raw`` for a HEAD request: the body is not sent."""


def header_lines(headers: list[tuple[str, str]] | None) -> str:
    """``name: value\\r\\n`` lines; a CR or LF inside a name or value is refused."""
    if not headers:
        return ""
    text = "".join([f"{name}: {value}\r\n" for name, value in headers])
    n = len(headers)
    if text.count("\n") != n or text.count("\r") != n:
        raise ValueError("CR or LF in a response header")
    return text


def encode_headers(headers: list[tuple[str, str]] | None) -> bytes:
    return header_lines(headers).encode("latin-1")


_CT_LINES: dict[str, str] = {"application/json": "content-type: application/json\r\n", "": ""}


def _content_type_line(content_type: str) -> str:
    line = header_lines([("content-type", content_type)])
    if len(_CT_LINES) < 64:
        _CT_LINES[content_type] = line
    return line


class ServerState:
    """What the connections of one worker share: the app, settings, clock, ids and the ticker."""

    def __init__(self, app: App, config: ServerConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.config = config
        self.loop = loop
        self.routes = app.routes
        self.connections: set[HttpProtocol] = set()
        limits, timeouts = config.limits, config.timeouts
        self.max_url = limits.max_url_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.max_headers = limits.max_headers
        self.max_body = limits.max_body_bytes
        # Bytes of an unfinished head kept before the precise per-header counting can see them.
        self.head_guard = limits.max_url_bytes + limits.max_header_bytes + 4 * limits.max_headers
        self.header_timeout = timeouts.header
        self.body_timeout = timeouts.body
        self.keep_alive_timeout = timeouts.keep_alive
        self.write_high = config.write_buffer_high
        self.write_low = config.write_buffer_low
        self.cors_any = "*" in config.cors_origins
        self.cors_origins = frozenset(config.cors_origins)
        self.access_log = config.access_log
        self.shutting_down = False
        self._server_line = header_lines([("server", config.server_name)])
        self._second = -1
        self.common = ""  # date + server lines, refreshed once a second
        self.common_bytes = b""
        self._refresh_date()
        # Deadlines are coarse: set from this clock (updated by the ticker), checked by the ticker.
        self.now = loop.time()
        self.next_id = 1  # the number of the next request id
        self.id_prefix = os.urandom(6).hex()
        self._tick_interval = max(0.05, min(1.0, timeouts.header / 4, timeouts.keep_alive / 4))
        self._tick_handle: asyncio.TimerHandle | None = None

    def new_request_id(self) -> str:
        """The prefix and the next number as at least 8 hex digits. Compiled, the number is a C
        integer and the f-string one join of the prefix and digits written in C (no format spec
        parsed, no int object: a format spec on a Python int costs about 2k instructions)."""
        n = self.next_id
        self.next_id = n + 1
        return f"{self.id_prefix}{n:08x}"

    def cors_allows(self, origin: str | None) -> bool:
        return origin is not None and (self.cors_any or origin in self.cors_origins)

    def start(self) -> None:
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)

    def stop(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    def _refresh_date(self) -> None:
        now = int(time.time())
        if now != self._second:
            self._second = now
            date = formatdate(now, usegmt=True)
            self.common = f"date: {date}\r\n{self._server_line}"
            self.common_bytes = self.common.encode("latin-1")

    def _tick(self) -> None:
        self._refresh_date()
        now = self.now = self.loop.time()
        for conn in list(self.connections):
            deadline = conn._deadline
            if deadline and now >= deadline:
                conn._deadline_passed()
        self._tick_handle = self.loop.call_later(self._tick_interval, self._tick)


class ResponseChannel:
    """The writer for one response. ``write_raw`` is the client ``transport.write`` itself (a no-op
    for HEAD): it frames nothing and checks nothing, so call it only between ``start()`` and
    ``end()`` with bytes already framed for ``chunked``. With an HTTP/1.0 client ``start()`` cannot
    use chunked framing: check ``chunked`` after ``start()``.

    ``drain()`` raises ``ClientDisconnected`` once the client is gone; ``on_disconnect`` callbacks
    run when the connection is lost before ``end()`` (also after ``abort()``).
    """

    def __init__(self, proto: HttpProtocol, request: Request) -> None:
        self._proto = proto
        self.request = request
        # Read back through the typed slots: struct members in the compiled build.
        self.write_raw: Callable[[bytes], object] = (
            _drop if self.request._head else self._proto._write
        )
        self.started = self.disconnected = False
        self.chunked = False  # the body is sent with chunked framing (known after start())
        self._ended = False  # end() was called
        self._done = False  # end() or abort() was called
        self._keep_alive = False
        self._status = 0
        self._flow_target: FlowTarget | None = None
        # on_disconnect's: None, the one callback (a relay has one), or a list of them
        self._callbacks: Callable[[], object] | list[Callable[[], object]] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._held: bytes | None = None  # a head start(hold=True) kept back, not yet written

    @property
    def transport(self) -> asyncio.Transport:
        return self._proto.transport  # type: ignore[return-value]

    def direct_fd(self) -> int:
        """The client's socket, which a relay pump may write to itself while nothing waits in the
        transport's buffer (``transport.get_write_buffer_size()`` says): uvloop's plain TCP and
        Unix transports only (not TLS, not the stdlib loop, whose write already sends at once),
        and not for a HEAD request (``write_raw`` drops its body). -1: write through the
        transport."""
        if self.request._head or self.disconnected:
            return -1
        return self._proto._direct_fd

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._proto._loop

    def start(
        self,
        status: int,
        headers: list[tuple[str, str]],
        *,
        chunked: bool = True,
        content_length: int | None = None,
        hold: bool = False,
    ) -> None:
        """Write the status line and headers in one write; the server adds its own headers.
        ``headers``: ``(name, value)`` pairs, or the lines ``header_lines()`` made of them once
        (a response head that repeats need not be rendered and checked each time).

        ``hold=True`` keeps the head back, to go out in one write with the first body bytes:
        ``write_held()`` (or ``write``, ``end``, ``abort``) sends it in front of them, and
        ``flush_head()`` alone. Until then ``write_raw`` must not be called."""
        if self.started:
            raise RuntimeError("response already started")
        proto = self._proto
        req = self.request
        keep_alive = req._keep_alive and not req._close and not proto._closing
        self.chunked = False
        if status < 200 or status == 204 or status == 304:  # _NO_BODY_STATUS
            framing = ""
        elif content_length is not None:
            framing = f"content-length: {int(content_length)}\r\n"
        elif chunked and req.http_version == "1.1":
            framing = "transfer-encoding: chunked\r\n"
            self.chunked = True
        else:  # the end of the body is the end of the connection
            framing = ""
            keep_alive = False
        lines = headers if type(headers) is str else header_lines(headers)
        statuses = _STATUS_STR
        connection = "connection: keep-alive\r\n" if keep_alive else "connection: close\r\n"
        head = (
            f"{statuses.get(status) or status_line(status).decode('latin-1')}"
            f"{proto._state.common}x-request-id: {req.request_id}\r\n{framing}"
            f"{connection}{proto._cors_lines(req)}{lines}\r\n"
        ).encode("latin-1")
        self.started = True
        self._status = status
        self._keep_alive = keep_alive
        if hold:
            self._held = head
        elif not self.disconnected:
            proto.transport.write(head)  # type: ignore[union-attr]

    def write_held(self, data: bytes) -> None:
        """``write_raw(data)``, with the head ``start(hold=True)`` kept back in front of it."""
        held = self._held
        if held is None:
            self.write_raw(data)
            return
        self._held = None
        if self.disconnected:
            return
        if self.request._head:
            self._proto.transport.write(held)  # type: ignore[union-attr]
        else:
            self._proto.transport.write(held + data)  # type: ignore[union-attr]

    def take_held(self) -> bytes | None:
        """The head ``start(hold=True)`` kept back, taken (counted as written from now on), for
        a caller that writes it to the client itself in front of its first bytes: None when no
        head is held (the bytes go alone); b"" when nothing is to be written at all (the client
        is gone; or a HEAD request, whose held head is written here: the caller's ``write_raw``
        would drop it)."""
        held = self._held
        if held is None:
            return b"" if self.disconnected or self.request._head else None
        self._held = None
        if self.disconnected:
            return b""
        if self.request._head:
            self._proto.transport.write(held)  # type: ignore[union-attr]
            return b""
        return held

    def flush_head(self) -> None:
        """Write the head ``start(hold=True)`` kept back, if it is still held."""
        held = self._held
        if held is not None:
            self._held = None
            if not self.disconnected:
                self._proto.transport.write(held)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        """Write ``data`` as one HTTP chunk (as is when not chunked); empty data is skipped."""
        if self._held is not None:
            self.flush_head()
        if not data or self.request._head or self._done or self.disconnected:
            return
        transport = self._proto.transport
        if not self.chunked:
            transport.write(data)  # type: ignore[union-attr]
        elif len(data) < _BIG_CHUNK:
            transport.write(b"%x\r\n%s\r\n" % (len(data), data))  # type: ignore[union-attr]
        else:
            transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))  # type: ignore[union-attr]

    def end(self, *, terminator_sent: bool = False) -> None:
        """The response is complete; the connection serves the next request or closes."""
        if self._done:
            return
        if not self.started:
            raise RuntimeError("end() before start()")
        if self._held is not None:
            self.flush_head()
        self._done = self._ended = True
        # No more disconnect callbacks or flow control: dropping them breaks the cycle through
        # the handler's objects (a relay holds this channel), so refcounting frees the request.
        self._callbacks = self._flow_target = None
        if (
            self.chunked
            and not terminator_sent
            and not self.request._head
            and not self.disconnected
        ):
            self._proto.transport.write(_TERMINATOR)  # type: ignore[union-attr]
        self._proto._response_done(self)

    def abort(self) -> None:
        """Close the client connection now: the response cannot be finished cleanly."""
        if self._done:
            return
        if self._held is not None:
            self.flush_head()  # the status the client was told, then the broken body
        self._done = True
        self._proto._abort()

    def send(self, response: Response) -> None:
        """Answer with a complete response, in one write, instead of ``start()``... ``end()`` (for
        a handler that returned ``DEFERRED``). Nothing happens once the response is over."""
        if self._done:
            return
        if self.started:
            raise RuntimeError("response already started")
        self._proto._send(self, response)

    def set_flow_target(self, target: FlowTarget | None) -> None:
        """``target.pause_reading()``/``resume_reading()`` follow the client's flow control."""
        self._flow_target = target
        if target is not None and self._proto._write_paused:
            target.pause_reading()

    async def drain(self) -> None:
        """Return once the client transport accepts writes again; raise if the client is gone."""
        if self.disconnected:
            raise ClientDisconnected("client disconnected")
        proto = self._proto
        if proto._write_paused:
            waiter = proto._drain_waiter
            if waiter is None:
                waiter = proto._drain_waiter = proto._loop.create_future()
            await waiter

    def cancel_handler(self) -> None:
        """Cancel the handler's task if it is still waiting (a no-op for a handler that ran
        inline or has returned)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    def on_disconnect(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` once if the connection is lost before ``end()``."""
        if self.disconnected:
            if not self._ended:
                self._proto._loop.call_soon(callback)
        elif self._callbacks is None:
            self._callbacks = callback  # no list for the one callback a request usually has
        elif type(self._callbacks) is list:
            self._callbacks.append(callback)
        else:
            self._callbacks = [self._callbacks, callback]

    def _lost(self) -> None:
        self.disconnected = True
        self._flow_target = None
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None and type(callbacks) is not list:
            callbacks = (callbacks,)
        for callback in callbacks or ():
            try:
                callback()
            except Exception:
                logger.exception(
                    "on_disconnect callback failed (request_id=%s)", self.request.request_id
                )


class HttpProtocol:  # an asyncio.Protocol; a compiled class cannot name it as a base
    """One client connection. Requests are parsed as bytes arrive and answered strictly in order."""

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._loop = state.loop
        self._routes = state.routes
        self._max_body = state.max_body
        self._max_url = state.max_url
        self._max_headers = state.max_headers
        self._max_header_bytes = state.max_header_bytes
        self._header_timeout = state.header_timeout
        self._keep_alive_timeout = state.keep_alive_timeout
        self._cors = bool(state.cors_origins)
        self._parser = httptools.HttpRequestParser(self)
        self._quick = True  # httptools has seen no byte of a request not yet whole (see below)
        self._head_memo = _RequestHeadMemo()  # this connection's last plain head, for the next
        self.transport: asyncio.Transport | None = None
        self._write: Callable[[bytes], object] | None = None  # transport.write, bound once
        self._direct_fd = -1  # the client socket, for writes past the transport (see direct_fd)
        self._client: tuple[str, int] | None = None
        # The request being parsed.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._nheaders = 0
        self._header_bytes = 0
        self._head_bytes = 0
        self._in_head = False
        self._req: Request | None = None  # head complete, body still arriving
        self._body: list[bytes] = []
        self._body_size = 0
        self._discard_body = False
        # Service.
        self._pending: deque[Request] = deque()  # parsed, waiting for their turn
        self._active: ResponseChannel | None = None
        self._dispatching = False
        self._stopped = False  # ignore all further input
        self._eof = False  # the client half-closed
        self._lingering = False  # we half-closed and wait for the client's EOF
        self._last_request = False  # a request without keep-alive was parsed: no more after it
        self._closing = False  # close once the active response is done
        self._write_paused = False
        self._read_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # on the state's coarse clock; 0 = none
        self._deadline_408 = False  # on expiry answer 408 (a request was under way) or just close

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        state = self._state
        self.transport = transport  # type: ignore[assignment]
        self._write = transport.write  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not TCP (a Unix socket)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if type(transport) in DIRECT_TRANSPORTS:
                self._direct_fd = sock.fileno()
        transport.set_write_buffer_limits(high=state.write_high, low=state.write_low)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = (peer[0], peer[1])
        state.connections.add(self)
        self._deadline = state.now + state.header_timeout
        if state.shutting_down:
            self._closing = True
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        self._stopped = self._closing = True
        self._deadline = 0.0
        self._pending.clear()
        self._parser = None  # it holds our callbacks: a cycle refcounting could not free
        channel = self._active
        if channel is not None:
            self._active = None
            if not channel._ended:
                channel._done = True
                channel._lost()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ClientDisconnected("client disconnected"))

    def eof_received(self) -> bool:
        self._stopped = self._eof = True
        if self._req is not None:  # a half-sent request will never complete
            self._pending.remove(self._req)
            self._req = None
        if self._active is None and not self._pending:
            return False  # close
        active = self._active
        if active is not None and (not active.started or active._callbacks):
            # As nginx does for proxied requests: a client that closes while its answer is being
            # prepared, or while a handler that listens for disconnects is streaming, has gone
            # (clients do not half-close HTTP), so upstream work stops at once.
            return False
        self._closing = True  # answer what arrived complete, then close
        return True

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._quick:
            if (
                self._req is None
                and not self._in_head
                and type(data) is bytes
                and self._quick_request(data)
            ):
                return
            self._quick = False  # httptools now holds state: it parses the rest of the connection
        self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade(data, exc.args[0] if exc.args else len(data))
        except httptools.HttpParserError as exc:
            if not self._stopped:
                self._reject(400, f"malformed HTTP request: {exc}")
        if self._in_head and self._head_bytes > self._state.head_guard and not self._stopped:
            self._reject(431, "request header fields too large")

    def pause_writing(self) -> None:
        self._write_paused = True
        channel = self._active
        if channel is not None and channel._flow_target is not None:
            channel._flow_target.pause_reading()
        self._set_reading(False)

    def resume_writing(self) -> None:
        self._write_paused = False
        channel = self._active
        if channel is not None and channel._flow_target is not None:
            channel._flow_target.resume_reading()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._dispatch_pending()

    def _quick_request(self, data: bytes) -> bool:
        """Serve ``data`` when it is exactly one plain request (``_quick_request_head``), with
        the callbacks httptools would make, called directly; False (nothing done) otherwise.
        Only while httptools has seen nothing of the connection, or whole requests only: once it
        has a part of one, it parses the rest of the connection.

        The parser hands over the finished header dict, what ``on_header`` would have built,
        with the count and bytes ``on_header`` would have counted (from zero: no head is under
        way here, and ``_head_done`` sets both back to zero). A head over the limits goes to
        httptools instead, whose ``on_header`` calls refuse it (431) exactly as they always
        have, with the headers read up to the limit (an ``x-request-id`` among them)."""
        quick = _quick_request_head(data, self._head_memo)
        if quick is None:
            return False
        end = quick[4]
        length = quick[3]
        if end + length != len(data):  # a part of the body, or more than one request
            return False
        if quick[6] > self._max_headers or quick[7] > self._max_header_bytes:
            return False
        try:
            self.on_url(quick[1])
            self._headers = quick[2]
            self._head_done(quick[0], quick[5], "1.1", length)
            if length:
                self.on_body(_bytes_tail(data, end))  # (one step: no slice object)
            self.on_message_complete()
        except _StopParsing:
            pass
        return True

    # -- httptools callbacks (no on_message_begin: on_url's first fragment starts a request) ---

    def on_url(self, url: bytes) -> None:
        if self._in_head:  # a later fragment
            url = self._url = self._url + url
        else:
            if self._last_request or self._closing:
                self._stopped = True
                raise _StopParsing
            self._in_head = True
            self._head_bytes = 0
            self._url = url
            self._deadline = self._state.now + self._header_timeout
            self._deadline_408 = True
        if len(url) > self._max_url:
            self._reject(414, "request URL too long")
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._nheaders += 1
        self._header_bytes += len(name) + len(value)
        if self._nheaders > self._max_headers or self._header_bytes > self._max_header_bytes:
            self._reject(431, "request header fields too large or too many")
            raise _StopParsing
        names = _NAMES  # a local: Cython calls .get without binding a method object per call
        key = names.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_NAMES) < _MAX_NAMES:  # the names clients send repeat: keep a bounded few
                _NAMES[name] = key
        headers = self._headers
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parser = self._parser
        keep_alive = parser.should_keep_alive()
        # HTTP/1.0 is keep-alive only with a Connection header: skip the costly version query.
        if keep_alive and "connection" not in self._headers:
            version = "1.1"
        else:
            version = parser.get_http_version()
        self._head_done(parser.get_method(), keep_alive, version, -1)

    def _head_done(self, raw_method: bytes, keep_alive: bool, version: str, length: int) -> None:
        """The head is read: queue its request. ``length`` is -1 when the headers tell the body
        (httptools), else the Content-Length the quick parser read (0 when it read none), which
        also tells that there is no Transfer-Encoding and no Expect (it refuses those)."""
        state = self._state
        headers = self._headers
        self._headers = {}
        self._nheaders = self._header_bytes = 0
        self._in_head = False
        known_methods = _METHODS
        method = known_methods.get(raw_method) or raw_method.decode("latin-1")
        url = self._url
        if url[0] != 47:  # not "/...": absolute-form or "*"
            url = self._origin_form(url)
        # 63 ("?") as an int, not `b"?" in url`: bytes.__contains__ first tries its argument as
        # an int and would build and drop a TypeError (about 1.8k instructions); compiled, this
        # is a memchr. find() (a method call: some 600 instructions) only when there is a "?".
        if 63 in url:
            mark = url.find(b"?")
            raw_path, query = url[:mark], url[mark + 1 :].decode("latin-1")
        else:
            raw_path, query = url, ""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        request_id = headers.get("x-request-id")
        if request_id is None or not _REQUEST_ID_OK(request_id):
            request_id = state.new_request_id()
        req = Request(method, path, query, headers, b"", request_id, self._client, version)
        if not keep_alive:
            req._keep_alive = False
            self._last_request = True
        self._req = req
        self._pending.append(req)
        routes = self._routes
        methods = routes.get(path)
        handler = methods.get(method) if methods is not None else None
        if handler is None:
            handler = self._route_miss(req, methods)
        req._handler = handler
        if length < 0:
            if "content-length" in headers or "transfer-encoding" in headers:
                self._expect_body(req, headers, -1)
        elif length:
            self._expect_body(req, headers, length)

    def on_body(self, body: bytes) -> None:
        if self._discard_body:
            return
        size = self._body_size + len(body)
        if size > self._max_body:
            self._reject(413, "request body too large")
            raise _StopParsing
        self._body_size = size
        self._body.append(body)
        self._deadline = self._state.now + self._state.body_timeout

    def on_message_complete(self) -> None:
        req = self._req
        if req is None:
            return
        self._req = None
        body = self._body
        if body:
            req.body = body[0] if len(body) == 1 else b"".join(body)
            self._body = []
        req._complete = True
        self._deadline = 0.0
        self._dispatch_pending()

    # -- request head details (off the hot path) -----------------------------------------------

    @staticmethod
    def _origin_form(url: bytes) -> bytes:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return url
        path = parsed.path or b"/"
        return path + b"?" + parsed.query if parsed.query else path

    def _route_miss(self, req: Request, methods: dict[str, Handler] | None) -> Handler | None:
        method, path = req.method, req.path
        if methods is None:
            req._error = error_response(GatewayError(404, f"no route for {path}", code="not_found"))
            return None
        if method == "HEAD" and "GET" in methods:
            req._head = True
            return methods["GET"]
        if method == "OPTIONS":
            return self._options
        req._error = error_response(
            GatewayError(405, f"method {method} not allowed for {path}"),
            [("allow", self._state.app.allow(path))],
        )
        return None

    def _expect_body(self, req: Request, headers: dict[str, str], length: int) -> None:
        """A body follows the head: check its declared size, answer ``Expect``, arm the timer.
        ``length``: as ``_head_done`` has it (here -1, or the quick parser's Content-Length > 0)."""
        self._body_size = 0
        self._discard_body = False
        if length < 0:
            value = headers.get("content-length")
            if value == "0" and "transfer-encoding" not in headers:
                self._deadline = 0.0
                return
            expect = (
                "expect" in headers
                and headers["expect"].lower() == "100-continue"
                and req.http_version == "1.1"
            )
            too_big = req._error is None and value is not None and int(value) > self._max_body
        else:  # no Expect: the quick parser refuses it
            expect = False
            too_big = req._error is None and length > self._max_body
        if too_big:
            req._error = error_response(GatewayError(413, "request body too large"))
            req._close = True
        if req._error is not None:
            if expect or req._close:
                # The client may or may not send the body now: the framing is lost.
                req._close = True
                self._stopped = True
                self._req = None
                req._complete = True
                self._dispatch_pending()
                raise _StopParsing
            self._discard_body = True
        self._deadline = self._state.now + self._state.body_timeout
        if expect:
            req._expect = True
            self._dispatch_pending()  # sends "100 Continue" when it is this request's turn

    # -- service --------------------------------------------------------------------------------

    def _dispatch_pending(self) -> None:
        """Serve queued requests in order, then set reading and the idle deadline to match."""
        if self._dispatching:
            return
        pending = self._pending
        self._dispatching = True
        try:
            while self._active is None and pending and not self._write_paused and not self._closing:
                req = pending[0]
                if not req._complete:
                    if req._expect:
                        req._expect = False
                        self.transport.write(_CONTINUE)  # type: ignore[union-attr]
                    break
                pending.popleft()
                self._serve(req)
        finally:
            self._dispatching = False
        if self._active is None and (not pending or self._closing):
            if self._closing:
                self._close_after_response()
                return
            if not self._in_head and self._req is None:
                self._deadline = self._state.now + self._keep_alive_timeout
                self._deadline_408 = False
        # Read unless a whole request waits behind another, or the client is not reading.
        reading = not (self._stopped or self._write_paused or (pending and pending[0]._complete))
        if reading is self._read_paused:
            self._set_reading(reading)

    def _set_reading(self, reading: bool) -> None:
        transport = self.transport
        if reading is not self._read_paused or transport is None or transport.is_closing():
            return  # already so, or moot
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()
        self._read_paused = not reading

    def _serve(self, req: Request) -> None:
        channel = ResponseChannel(self, req)
        self._active = channel
        if self._state.access_log:
            req._started_at = self._loop.time()
        if req._error is not None:
            self._send(channel, req._error)
            return
        try:
            result = req._handler(req, channel)  # type: ignore[misc]
        except Exception as exc:
            self._handler_failed(channel, exc)
            return
        if type(result) is Response and not channel.started:
            self._send(channel, result)  # the common case, inline
        elif result is DEFERRED:
            pass  # the handler's callbacks finish the response
        elif result is None or isinstance(result, Response):
            self._handler_returned(channel, result)
        elif _EAGER_TASKS:
            channel._task = asyncio.Task(
                self._run(channel, result),
                loop=self._loop,
                name=_TASK,
                eager_start=True,  # type: ignore[call-arg]
            )
        else:  # the handler's first step runs in its task, where current_task() is set
            # A fixed name: 3.11 would format "Task-<n>" for every request.
            channel._task = asyncio.Task(self._run(channel, result), loop=self._loop, name=_TASK)

    async def _run(self, channel: ResponseChannel, awaitable: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if not channel._done:
                channel.abort()
            raise
        except Exception as exc:
            self._handler_failed(channel, exc)
        else:
            if type(result) is Response and not channel.started:
                self._send(channel, result)
            else:
                self._handler_returned(channel, result)
        finally:
            channel._task = None

    def _handler_returned(self, channel: ResponseChannel, result: object) -> None:
        if channel._done or result is DEFERRED:
            return  # ended, aborted or the client is gone; or callbacks will finish it
        req = channel.request
        if isinstance(result, Response):
            if channel.started:
                logger.error(
                    "handler returned a Response after starting the channel (request_id=%s)",
                    req.request_id,
                )
                channel.abort()
            else:
                self._send(channel, result)
            return
        if result is not None:
            logger.error(
                "handler for %s %s returned %r, not a Response or None (request_id=%s)",
                req.method,
                req.path,
                type(result).__name__,
                req.request_id,
            )
        elif channel.started:
            return  # the handler drove the channel; end() or abort() completes the response
        else:
            logger.error(
                "handler for %s %s returned None without starting a response (request_id=%s)",
                req.method,
                req.path,
                req.request_id,
            )
        if channel.started:
            channel.abort()
        else:
            self._send(channel, internal_error())

    def _handler_failed(self, channel: ResponseChannel, exc: Exception) -> None:
        req = channel.request
        if channel.disconnected or isinstance(exc, ClientDisconnected):
            if not channel._done:
                channel.abort()
            return
        if isinstance(exc, GatewayError):
            response = error_response(exc)
        else:
            logger.error(
                "handler for %s %s failed (request_id=%s)",
                req.method,
                req.path,
                req.request_id,
                exc_info=exc,
            )
            response = internal_error()
        if channel._done:
            return
        if channel.started:
            channel.abort()
        else:
            self._send(channel, response)

    def _send(self, channel: ResponseChannel, response: Response) -> None:
        """Write a complete response in one write and finish the request."""
        if channel.disconnected:
            channel._done = True
            return
        req = channel.request
        status = response.status
        body = response.body
        keep_alive = req._keep_alive and not req._close and not self._closing
        content_type = _CT_LINES.get(response.content_type)
        try:
            if content_type is None:
                content_type = _content_type_line(response.content_type)
            extra = header_lines(response.headers) if response.headers else ""
            if self._cors:
                extra += self._cors_lines(req)
            if status < 200 or status in _NO_BODY_STATUS:
                length = ""
                body = b""
            else:
                length = f"content-length: {len(body)}\r\n"
            head = (
                f"{_STATUS_STR.get(status) or status_line(status).decode('latin-1')}"
                f"{self._state.common}{content_type}{length}x-request-id: {req.request_id}\r\n"
                f"{_CONNECTION_STR[keep_alive]}{extra}\r\n"
            ).encode("latin-1")
        except (ValueError, UnicodeEncodeError):
            logger.error("invalid response header (request_id=%s)", req.request_id)
            self._send(channel, internal_error())
            return
        channel.started = channel._done = channel._ended = True
        channel._callbacks = channel._flow_target = None  # as end() does
        channel._status = status
        channel._keep_alive = keep_alive
        transport = self.transport
        if not body or req._head:
            transport.write(head)  # type: ignore[union-attr]
        elif len(body) < _BIG_CHUNK:
            transport.write(head + body)  # type: ignore[union-attr]
        else:  # no copy of a large body
            transport.writelines((head, body))  # type: ignore[union-attr]
        if self._active is channel and self._dispatching and keep_alive and not self._closing:
            self._active = None  # the dispatch loop goes on with the next request
            if self._state.access_log:
                self._log_access(channel, "ok")
        else:
            self._response_done(channel)

    def _response_done(self, channel: ResponseChannel) -> None:
        if channel is not self._active:
            return
        self._active = None
        if self._state.access_log:
            self._log_access(channel, "ok")
        if not channel._keep_alive or self._closing:
            self._close_after_response()
        elif not self._dispatching:
            self._dispatch_pending()

    def _close_after_response(self) -> None:
        """Half-close, then drop input until the client's EOF (or a short linger): closing with
        unread input would reset the connection and could destroy the response in flight."""
        self._stopped = self._closing = True
        transport = self.transport
        if transport is None or transport.is_closing() or self._lingering:
            return
        if self._eof or not transport.can_write_eof():
            transport.close()
            return
        self._lingering = True
        transport.write_eof()
        self._set_reading(True)
        self._deadline = self._state.now + _LINGER
        self._deadline_408 = False

    def _abort(self) -> None:
        self._stopped = self._closing = True
        channel = self._active
        if channel is not None and self._state.access_log:
            self._log_access(channel, "aborted")
        if self.transport is not None:
            self.transport.abort()

    def _upgrade(self, data: bytes, offset: int) -> None:
        """llhttp stops after an Upgrade or CONNECT request: serve it as plain HTTP/1.1; after a
        CONNECT, what follows is not HTTP, so close once it is answered."""
        if self._parser.get_method() == b"CONNECT":
            self._stopped = self._closing = True
            if self._active is None and not self._pending and self.transport is not None:
                self.transport.close()
            return
        rest = data[offset:]
        if rest and not self._stopped:
            self.data_received(rest)

    def _reject(self, status: int, message: str) -> None:
        """Answer the request being read with an error (in its turn) and read nothing more."""
        self._stopped = True
        req = self._req
        if req is None:
            rid = self._headers.get("x-request-id") if self._in_head else None
            if rid is None or not _REQUEST_ID_OK(rid):
                rid = self._state.new_request_id()
            req = Request("", "", "", {}, b"", rid, self._client)
            self._pending.append(req)
        self._req = None
        req._error = error_response(GatewayError(status, message))
        req._close = True
        req._complete = True
        self._in_head = False
        self._deadline = 0.0
        self._dispatch_pending()

    def _deadline_passed(self) -> None:
        if self._active is not None or self.transport is None:
            return  # a response is under way: never cut it
        self._deadline = 0.0
        if self._deadline_408 and (self._in_head or self._req is not None):
            self._reject(408, "timed out reading the request")
        else:
            self._stopped = self._closing = True
            self.transport.close()

    def _cors_lines(self, req: Request) -> str:
        if not self._cors:
            return ""
        origin = req.headers.get("origin")
        if not self._state.cors_allows(origin):
            return ""
        return header_lines(
            [
                ("access-control-allow-origin", origin),  # type: ignore[list-item]
                ("access-control-expose-headers", "x-request-id"),
                ("vary", "origin"),
            ]
        )

    def _options(self, req: Request, channel: ResponseChannel) -> Response:
        """``OPTIONS`` on a known path: ``Allow``, and a CORS preflight answer when allowed."""
        allow = self._state.app.allow(req.path)
        headers = [("allow", allow)]
        if self._state.cors_allows(req.headers.get("origin")):
            headers.append(("access-control-allow-methods", allow))
            requested = req.headers.get("access-control-request-headers")
            if requested:
                headers.append(("access-control-allow-headers", requested))
            headers.append(("access-control-max-age", "600"))
        return Response(204, b"", headers, content_type="")

    def _log_access(self, channel: ResponseChannel, outcome: str) -> None:
        req = channel.request
        took = (self._loop.time() - req._started_at) * 1000.0
        client = f"{req.client[0]}:{req.client[1]}" if req.client else "-"
        logger.info(
            "request method=%s path=%s status=%d outcome=%s ms=%.2f request_id=%s client=%s",
            req.method or "-",
            req.path or "-",
            channel._status,
            outcome,
            took,
            req.request_id,
            client,
        )

    # -- shutdown -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful: close now when idle, else after the response in flight."""
        self._closing = True
        if self._active is None and not self._pending and self.transport is not None:
            self._stopped = True
            self.transport.close()

    def close_if_lingering(self) -> None:
        if self._lingering and self.transport is not None:
            self.transport.close()

    def force_close(self) -> None:
        channel = self._active
        if channel is not None and channel._task is not None:
            channel._task.cancel()
        if self.transport is not None:
            self.transport.abort()
