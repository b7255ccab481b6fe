# cython: annotation_typing=False
# Cython compiles this file in place, and upstream.pxd makes UpstreamConnection, UpstreamExchange
# and _HeadParser extension types.
# Annotations only document here: they never become C-level type checks. This file is also the
# pure-Python twin (see gwcore/_twins.py).
"""Pooled HTTP/1.1 client to providers, on asyncio Protocols and httptools' response parser.

It owns the upstream sockets: connecting (TCP_NODELAY, TLS with the system trust store), writing a
request in one write, finding the response head, the connect / header / idle / keep-alive timers,
the per-origin pool and its bound, and the one retry of a stale pooled connection.

It never parses, copies or re-frames a relayed body: from the first byte after the response
head, every ``bytes`` that ``data_received`` gets goes to the listener as is (only the piece that
also held the end of the head is sliced). For a chunked body the listener (its scanner) decides
where the body ends; the connection only counts a Content-Length. It never logs per chunk and never
retries once a response byte arrived.

Listener protocol (see ``UpstreamListener``), all called from the event loop, in this order:
``on_head(conn, status, headers, chunked, content_length)`` where ``conn`` is the request's
``UpstreamExchange`` (the same object ``open_raw`` returns), then ``on_data(data)`` zero or more
times, then at most one of ``on_eof()`` (the connection itself saw the body end: Content-Length
reached, a bodiless response, or a close-delimited body's clean EOF) or ``on_error(GatewayError)``
(502 closed mid-response, 504 idle timeout). The listener ends every exchange with
``conn.release()`` (back to the pool when reusable) or ``conn.close()`` (dropped at once); after
either, it hears nothing and further calls on ``conn`` are no-ops. ``on_head`` may already call
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import AnyStr, NamedTuple, Protocol
from urllib.parse import urlsplit

import httptools

from gwcore._transports import DIRECT_TRANSPORTS
from gwcore.errors import GatewayError
from gwcore.sse import RelayPump as _Pump
from gwcore.sse import ResponseHead
from gwcore.sse import bytes_tail as _bytes_tail
from gwcore.sse import head_end as _head_end
from gwcore.sse import printable_ascii as _printable_ascii
from gwcore.sse import request_bytes as _request_bytes
from gwcore.sse import response_head as _response_head
from gwcore.sse import send_direct as _send_direct

__all__ = [
    "HOP_BY_HOP",
    "Origin",
    "StaleConnection",
    "UpstreamConnection",
    "UpstreamExchange",
    "UpstreamListener",
    "UpstreamPool",
    "UpstreamResponse",
    "build_request",
    "header_block",
    "parse_base_url",
    "strip_hop_by_hop",
]

log = logging.getLogger("gwcore.upstream")

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)  # plus every "proxy-*" header and every header the Connection header names
_HOP_BY_HOP_BYTES = frozenset(h.encode() for h in HOP_BY_HOP)
_POOL_SET = frozenset({"host", "content-length"})  # the pool writes these itself
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

MAX_HEAD = 64 * 1024  # a response head larger than this is not an HTTP response we relay
WRITE_HIGH = 256 * 1024
WRITE_LOW = 64 * 1024

# Connection states.
_CONNECTING = 0
_IDLE = 1  # in the pool
_ACTIVE = 2  # taken from the pool, request not written yet
_HEAD = 3  # request written, waiting for the response head
_STREAM = 4  # raw body, end unknown to us (chunked: the listener decides; or until close)
_LENGTH = 5  # raw body, Content-Length counted here
_DONE = 6  # body complete as far as the connection knows; waiting for release()
_CLOSED = 7


# --------------------------------------------------------------------------------------- origins


class Origin(NamedTuple):
    """Where connections go: scheme, host and port. Pools are keyed by it (a tuple: its hash and
    equality are the tuple's, in C; a frozen dataclass's were interpreted Python, per request)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Origin:
        return parse_base_url(url)[0]

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_base_url(url: str) -> tuple[Origin, str]:
    """``http://127.0.0.1:9000/v1`` -> (Origin('http', '127.0.0.1', 9000), '/v1').

    The path loses its trailing slash ("" for none). Raises ``ValueError`` for anything but an
    absolute http(s) URL without query, fragment or credentials.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"base URL must start with http:// or https://: {url!r}")
    if not parts.hostname:
        raise ValueError(f"base URL has no host: {url!r}")
    if parts.username or parts.password:
        raise ValueError("base URL must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"base URL must not have a query or fragment: {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"base URL has an invalid port: {url!r}") from exc
    if port is None:
        port = 443 if scheme == "https" else 80
    return Origin(scheme, parts.hostname, port), parts.path.rstrip("/")


# --------------------------------------------------------------------------------------- headers


_NAMES: dict = {}  # name (str or bytes) -> (lowercase, hop-by-hop?, Connection?); see _name


def _name(name: AnyStr) -> tuple:
    """(lowercase, hop-by-hop, is Connection) for a header name, from a bounded cache: names
    repeat."""
    names = _NAMES  # a local: Cython calls .get without binding a method object per call
    known = names.get(name)
    if known is None:
        low = name.lower()
        if isinstance(low, bytes):
            hop = low in _HOP_BY_HOP_BYTES or low.startswith(b"proxy-")
            known = (low, hop, low == b"connection")
        else:
            hop = low in HOP_BY_HOP or low.startswith("proxy-")
            known = (low, hop, low == "connection")
        if len(_NAMES) >= 1024:  # names come from clients and upstreams: start over
            _NAMES.clear()
        _NAMES[name] = known
    return known


def strip_hop_by_hop(headers: Sequence[tuple[AnyStr, AnyStr]]) -> list[tuple[AnyStr, AnyStr]]:
    """Drop hop-by-hop headers (RFC 9110 7.6.1): the fixed set, ``Proxy-*``, and those that
    ``Connection`` names. Works on ``str`` pairs (requests) and ``bytes`` pairs (response heads)."""
    out = []
    nominated = None
    for pair in headers:
        low, hop, connection = _name(pair[0])
        if hop:
            if connection:
                if nominated is None:
                    nominated = set()
                comma = "," if isinstance(low, str) else b","
                for token in pair[1].split(comma):  # a loop: no closure in a compiled cpdef
                    nominated.add(token.strip().lower())
            continue
        out.append(pair)
    if nominated:
        out = [pair for pair in out if _name(pair[0])[0] not in nominated]
    return out


def _bad_char(text: str) -> bool:
    return "\r" in text or "\n" in text or "\0" in text


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch  # RFC 9110 field-name
# Not in an RFC 9110 field-value (HTAB, SP, VCHAR, obs-text): CR, LF, NUL, the other controls,
# DEL, and anything beyond latin-1.
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]").search
_LINES: dict[tuple[str, str], str] = {}  # (name, value) -> its checked header line; bounded
_HOST_LINES: dict[Origin, str] = {}
_TOKEN_NAMES: set[str] = set()  # names that passed _TOKEN; bounded
# (origin, method, path, block), all of exact types -> _head_start's result; bounded
_STARTS: dict[tuple, tuple[str, bool]] = {}
# An end-to-end header name (exact str) a checked line was written for -> "Name: ", or "" for
# the headers the pool writes itself; bounded
_FIELDS: dict[str, str] = {}


def _header_line(name: str, value: str) -> str:
    """``name: value\\r\\n``, checked: a token name and an RFC 9110 field value (no controls but
    HTAB, latin-1 only); "" for the headers the pool writes itself."""
    if name not in _TOKEN_NAMES:
        if not _TOKEN(name):
            raise GatewayError(400, f"invalid character in header {name!r}")
        if len(_TOKEN_NAMES) < 1024:  # names repeat; values (request ids) do not
            _TOKEN_NAMES.add(name)
    # Printable ASCII is valid at once (two C scans); the regex decides the rest (HTAB, latin-1).
    if not (value.isascii() and value.isprintable()) and _BAD_VALUE(value):
        raise GatewayError(400, f"invalid character in header {name!r}")
    return "" if _name(name)[0] in _POOL_SET else f"{name}: {value}\r\n"


def header_block(headers: Sequence[tuple[str, str]]) -> str:
    """Header lines checked once, as ``build_request`` checks its ``headers`` (hop-by-hop ones
    dropped, names and values validated), for ``build_request(..., block=...)``: the headers
    every request to one provider carries are rendered once, not per request."""
    return "".join([_header_line(name, value) for name, value in strip_hop_by_hop(headers)])


def build_request(
    origin: Origin,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    block: str = "",
) -> bytes:
    """The request bytes: head (Host, ``block`` (from ``header_block`` only), the caller's
    end-to-end headers, Content-Length, ``Connection: keep-alive``) and body, for one write."""
    if type(origin) is Origin and type(method) is str and type(path) is str and type(block) is str:
        # The checked start of the head, per target (a dict of exact types: equal keys render
        # the same start); the checks and errors are _head_start's.
        key = (origin, method, path, block)
        starts = _STARTS
        known = starts.get(key)
        if known is None:
            known = _head_start(origin, method, path, block)
            if len(starts) >= 256:
                starts.clear()
            starts[key] = known
        start = known[0]
        framed = known[1]
    else:
        start = _head_start(origin, method, path, block)[0]
        framed = method not in _NO_BODY_METHODS
    lines = [start]
    if type(headers) is not list and type(headers) is not tuple:
        _header_lines(headers, lines)  # (an iterator is read once)
        return _finish(lines, body, framed)
    # The common case, no per-pair cache and no stripped copy: exact str pairs whose names are
    # known end-to-end (hop-by-hop ones are never in _FIELDS, so stripping would keep them all)
    # and whose values are printable ASCII. Anything else: the whole list the careful way.
    fields = _FIELDS
    for pair in headers:
        if type(pair) is not tuple or len(pair) != 2:
            break
        name = pair[0]
        value = pair[1]
        if type(name) is not str or type(value) is not str:
            break
        field = fields.get(name)
        if field is None:
            break
        text = value
        if not _printable_ascii(text):
            break
        if field:  # "" for the headers the pool writes itself
            lines.append(field)
            lines.append(text)
            lines.append("\r\n")
    else:
        return _finish(lines, body, framed)
    lines = [start]
    _header_lines(headers, lines)
    return _finish(lines, body, framed)


def _head_start(origin: Origin, method: str, path: str, block: str) -> tuple:
    """(the request line, Host line and ``block``; whether an empty body is still framed), with
    the request target checked."""
    if not path.startswith("/") or _bad_char(path) or " " in path or _bad_char(method):
        raise GatewayError(500, f"invalid upstream request target {path!r}")
    hosts = _HOST_LINES
    host = hosts.get(origin)
    if host is None:
        host = f"Host: {origin.host_header}\r\n"
        if len(_HOST_LINES) < 256:
            _HOST_LINES[origin] = host
    return "".join([f"{method} {path} HTTP/1.1\r\n", host, block]), method not in _NO_BODY_METHODS


def _header_lines(headers: Sequence[tuple[str, str]], lines: list) -> None:
    """The caller's end-to-end header lines, appended to ``lines``: hop-by-hop ones dropped, each
    line checked once (cached). Names that passed go to _FIELDS, for build_request's fast loop."""
    cache = _LINES
    fields = _FIELDS
    for pair in strip_hop_by_hop(headers):
        line = cache.get(pair)
        if line is None:
            line = _header_line(pair[0], pair[1])
            if len(cache) >= 4096:  # values come from clients (request ids): start over
                cache.clear()
            cache[pair] = line
        lines.append(line)
        name = pair[0]
        if type(name) is str and name not in fields and len(fields) < 1024:
            fields[name] = "" if _name(name)[0] in _POOL_SET else f"{name}: "
    # (A name is only ever learnt from a line _header_line wrote or checked: a token, not
    # hop-by-hop, since strip_hop_by_hop dropped those.)


def _finish(lines: list, body: bytes, framed: bool) -> bytes:
    # Every piece was checked: the request line here, each header line once (cached), the Host
    # line from a parsed URL. No CR, LF or NUL but the line ends, all latin-1. The head and the
    # body in one allocation (where compiled).
    return _request_bytes(lines, body if type(body) is bytes else bytes(body), framed)


# -------------------------------------------------------------------------------------- listener


class UpstreamListener(Protocol):
    """What ``open_raw`` reports to. Called on the event loop; must not block. ``headers`` of
    ``on_head`` is a sequence of ``(name, value)`` bytes pairs: a ``ResponseHead`` (read in
    place, with ``value_of`` and ``passed_lines``) for a plain head, else a list."""

    def on_head(
        self,
        conn: UpstreamExchange,
        status: int,
        headers: Sequence[tuple[bytes, bytes]],
        chunked: bool,
        content_length: int | None,
    ) -> None: ...

    def on_data(self, data: bytes) -> None: ...

    # The piece that completed the head has been handed on (what followed the head went to
    # ``on_data`` or the diverted protocol first): anything held back for it goes out now.
    def on_head_end(self) -> None: ...

    def on_eof(self) -> None: ...

    def on_error(self, exc: GatewayError) -> None: ...

    # Only for ``UpstreamPool.send_now`` (nobody awaits the head): the request failed before a
    # response head; ``StaleConnection`` means it may be sent again on a fresh connection.
    def on_head_failed(self, exc: BaseException) -> None: ...


class StaleConnection(Exception):
    """A pooled connection the upstream had closed before it sent a byte of the response."""


class _HeadParser:
    """httptools callbacks for one response head (the body never goes through it)."""

    __slots__ = ("complete", "headers")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _http_version(head: bytes) -> str:
    """The version of a response head httptools parsed, as its ``get_http_version()`` gives it
    (``"1.1"``): the three bytes after the protocol name (``HTTP/``; llhttp also takes ``RTSP/``
    and ``ICE/``, after any empty lines), whose digits llhttp checked. ``get_http_version()``
    builds it with ``str.format``: about 3,600 instructions a response."""
    at = head.find(b"/") + 1
    return head[at : at + 3].decode("latin-1")


def _bad_head(detail: str) -> GatewayError:
    return GatewayError(
        502, f"invalid response from upstream: {detail}", code="upstream_bad_response"
    )


# -------------------------------------------------------------------------------------- exchange


class UpstreamExchange:
    """One request/response on a pooled connection: what ``open_raw`` returns and ``on_head`` gets.

    The listener ends it with ``release()`` (the connection goes back to the pool when keep-alive
    and complete, else it is closed) or ``close()`` (dropped at once, never pooled). Every method is
    a no-op once the exchange ended, so a late call (say, a client disconnect after the release)
    can never touch the connection's next exchange.
    """

    __slots__ = ("_conn", "_end", "reused")

    def __init__(self, conn: UpstreamConnection) -> None:
        self._conn = conn
        self._end = 0  # 0 running, 1 released to the pool, 2 closed
        self.reused = conn.reused  # ran on a pooled connection that had served before

    @property
    def origin(self) -> Origin:
        return self._conn.origin

    @property
    def ended(self) -> bool:
        return self._end != 0

    @property
    def closed(self) -> bool:
        """The connection was dropped during or at the end of this exchange."""
        return self._end == 2 or (self._end == 0 and self._conn.closed)

    @property
    def complete(self) -> bool:
        """The connection itself saw the body end (Content-Length reached, bodiless response)."""
        return self._end == 0 and self._conn.complete

    def release(self) -> None:
        if self._end == 0:
            conn = self._conn
            conn.release()
            self._end = 2 if conn._state == _CLOSED else 1

    def close(self) -> None:
        if self._end == 0:
            self._end = 2
            self._conn.close()

    def divert(self, protocol: asyncio.BaseProtocol) -> None:
        """Hand the rest of the body to ``protocol`` (a ``RelayPump``): each piece goes straight
        to its ``data_received``, before any state check of ours. It must count ``pieces`` (the
        idle timer reads them); connection events stay with the connection. ``release()``/
        ``close()`` end the diversion. (The transport keeps its protocol: uvloop's
        ``set_protocol`` restarts reading, one ``epoll_ctl`` each way per request.)"""
        if self._end == 0:
            self._conn._divert(protocol)

    @property
    def connection(self) -> UpstreamConnection:
        return self._conn

    def pause_reading(self) -> None:
        if self._end == 0:
            self._conn.pause_reading()

    def resume_reading(self) -> None:
        if self._end == 0:
            self._conn.resume_reading()


# ------------------------------------------------------------------------------------ connection


class UpstreamConnection:
    """One keep-alive connection to an origin, owned by ``UpstreamPool``. Listeners never hold it:
    they hold the ``UpstreamExchange`` of their request."""

    __slots__ = (
        "_counted",
        "_deadline",
        "_diverted",
        "_exchange",
        "_fd",
        "_head_buf",
        "_head_fut",
        "_keep_alive",
        "_laned",
        "_listener",
        "_loop",
        "_method",
        "_paused",
        "_pool",
        "_remaining",
        "_rx",
        "_rx_seen",
        "_silent",
        "_state",
        "_transport",
        "_until_close",
        "got_bytes",
        "origin",
        "requests",
        "reused",
    )

    def __init__(self, pool: UpstreamPool, origin: Origin, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.origin = origin
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._fd = -1  # the socket, for writes that leave now (uvloop's plain transports only)
        self._state = _CONNECTING
        self._listener: UpstreamListener | None = None
        self._exchange: UpstreamExchange | None = None
        self._head_buf = b""
        self._head_fut: asyncio.Future | None = None
        # When the pool's ticker next looks at this connection (0: never): the header deadline
        # while waiting for a head, the next idle check in a body, the keep-alive expiry in the
        # pool. One ticker per pool instead of timers per request.
        self._deadline = 0.0
        self._keep_alive = False
        self._until_close = False
        self._method = "GET"
        self._paused = False
        self._remaining = 0
        self._rx = 0
        self._rx_seen = 0
        self._silent = 0
        self._counted = False
        self._diverted: asyncio.BaseProtocol | None = None  # a RelayPump reading for us
        self._laned = False  # ... through its lane: the transport's reads are the pump's
        self.got_bytes = False  # a byte of the current response arrived
        self.reused = False  # served a request before (came from the pool)
        self.requests = 0

    # ---- for the exchange and the pool

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def complete(self) -> bool:
        """The connection itself saw the body end (Content-Length reached, bodiless response)."""
        return self._state == _DONE

    def release(self) -> None:
        """End of the exchange: back to the pool if keep-alive and the body is complete, else close.
        For a chunked body the listener's word that it saw the last chunk is trusted."""
        state = self._state
        if state in (_CLOSED, _IDLE):
            return
        if not self._keep_alive or not (
            state == _DONE or (state == _STREAM and not self._until_close)
        ):
            self.close()
            return
        self._listener = None
        self._undivert()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        self._pool._put_idle(self)

    def close(self) -> None:
        """Drop the connection at once (abort, no flush); it never returns to the pool."""
        if self._state == _CLOSED:
            return
        self._state = _CLOSED
        self._listener = None
        self._unlane(False)
        self._diverted = None
        self._pool._forget(self)
        if self._transport is not None:
            self._transport.abort()

    def _divert(self, protocol: asyncio.BaseProtocol) -> None:
        if self._state in (_STREAM, _LENGTH) and self._transport is not None:
            self._diverted = protocol
            if not self._paused:
                # The compiled pump may read the transport itself from here on (its lane).
                if type(protocol) is _Pump:
                    pump = protocol  # compiled: typed (upstream.pxd), a C call
                    self._laned = pump.lane_start(self._transport)
                else:  # a twin's pump (tests): the same API
                    self._laned = protocol.lane_start(self._transport)  # type: ignore[attr-defined]

    def _undivert(self) -> None:
        diverted = self._diverted
        if diverted is not None:
            self._unlane(not self._paused)
            self._rx += diverted.pieces  # type: ignore[attr-defined]
            self._diverted = None

    def _unlane(self, resume: bool) -> None:
        """The pump's lane (if any) hands the transport's reads back (``resume``: resumed)."""
        if self._laned:
            self._laned = False
            pump = self._diverted  # (compiled: typed, a C call; only the compiled pump lanes)
            pump.lane_stop(resume)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if not self._paused and self._state != _CLOSED and self._transport is not None:
            self._paused = True
            if not (self._laned and self._diverted.lane_pause()):  # type: ignore[union-attr]
                self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self._state != _CLOSED:
            self._paused = False
            if not (self._laned and self._diverted.lane_resume()):  # type: ignore[union-attr]
                self._transport.resume_reading()

    # ---- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if type(transport) in DIRECT_TRANSPORTS:
                self._fd = sock.fileno()
        with contextlib.suppress(AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        diverted = self._diverted
        if diverted is not None:  # the relay's hot path: the pump scans and writes
            if type(diverted) is _Pump:
                pump = diverted  # compiled: typed (upstream.pxd), so this is a C call
                pump.data_received(data)
            else:  # another pump (a test's twin in a compiled build)
                diverted.data_received(data)
            return
        if self._state == _STREAM:  # one compare, one count, one call
            self._rx += 1
            self._listener.on_data(data)
            return
        self._data_slow(data)

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self._fd = -1  # (the number may soon be another socket's)
        self._unlane(False)
        state = self._state
        listener = self._listener
        self._state = _CLOSED
        self._listener = None
        self._pool._forget(self)
        if state == _HEAD:
            if self.reused and not self.got_bytes:
                self._head_failed(StaleConnection(), listener)
            else:
                self._head_failed(
                    GatewayError(
                        502,
                        "upstream closed the connection before sending a response",
                        code="upstream_closed",
                    ),
                    listener,
                )
        elif state == _STREAM and self._until_close and exc is None:
            listener.on_eof()
        elif state in (_STREAM, _LENGTH):
            listener.on_error(
                GatewayError(
                    502, "upstream closed the connection mid-response", code="upstream_closed"
                )
            )
        # The pump, its relay and the exchange hold this connection: no cycle left behind.
        self._diverted = None
        self._exchange = None

    def pause_writing(self) -> None:  # requests are written once; nothing to hold back
        pass

    def resume_writing(self) -> None:
        pass

    # ---- internals

    def _take(self) -> bool:
        """Pool -> caller. False when the connection died while idle."""
        if self._state != _IDLE or self._transport is None or self._transport.is_closing():
            self.close()
            return False
        self._state = _ACTIVE
        return True

    def _send(
        self, data: bytes, listener: UpstreamListener, method: str, await_head: bool = True
    ) -> asyncio.Future | None:
        """Write the request. With ``await_head`` the head's outcome is a future; without, a
        failure before the head goes to ``listener.on_head_failed`` (and success is ``on_head``)."""
        self._state = _HEAD
        self._listener = listener
        # UpstreamExchange(self), without the call of __init__ (in the compiled build, a C
        # allocation): the same three fields.
        exchange = UpstreamExchange.__new__(UpstreamExchange)
        exchange._conn = self
        exchange._end = 0
        exchange.reused = self.reused
        self._exchange = exchange
        self._method = method
        self._head_buf = b""
        self.got_bytes = False
        self._keep_alive = False
        self._until_close = False
        self._rx = self._rx_seen = self._silent = 0
        self.requests += 1
        fut = self._head_fut = self._loop.create_future() if await_head else None
        transport = self._transport
        fd = self._fd
        # uvloop defers a write to the end of the loop's turn: the request leaves now instead,
        # through the socket itself, when nothing waits in the transport (which then writes
        # whatever the socket did not take, in order).
        if fd >= 0 and not transport.get_write_buffer_size() and not transport.is_closing():
            sent = _send_direct(fd, data)
            if sent != len(data):
                transport.write(data if sent <= 0 else data[sent:])
        else:
            transport.write(data)
        pool = self._pool
        timeout = pool.header_timeout
        self._deadline = 0.0 if timeout is None else self._loop.time() + timeout
        pool._watch(self)
        return fut

    def _data_slow(self, data: bytes) -> None:
        state = self._state
        if state == _LENGTH:
            self._rx += 1
            remaining = self._remaining - len(data)
            if remaining > 0:
                self._remaining = remaining
                self._listener.on_data(data)
                return
            if remaining < 0:  # bytes beyond the body: the connection cannot be trusted again
                data = data[: self._remaining]
                self._keep_alive = False
            self._remaining = 0
            self._state = _DONE
            listener = self._listener
            listener.on_data(data)
            if self._state == _DONE and self._listener is listener:
                listener.on_eof()
        elif state == _HEAD:
            self._on_head_bytes(data)
        elif state == _DONE:
            self._keep_alive = False  # unexpected bytes after the body
        elif state in (_IDLE, _ACTIVE):
            self.close()  # an idle connection must be silent

    def _on_head_bytes(self, data: bytes) -> None:
        self.got_bytes = True
        prev = self._head_buf
        buf = prev + data if prev else data
        end = _head_end(buf, len(prev) - 3)  # (SIMD where compiled: a head is a kilobyte)
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail_head(_bad_head("response head too large"))
            else:
                self._head_buf = buf
            return
        self._head_buf = b""
        end += 4
        head = _response_head(buf, end)
        if head is not None:
            status = head.status
            version = head.version
            headers = head
        else:  # not a plain head: httptools decides
            parser_cb = _HeadParser()
            parser = httptools.HttpResponseParser(parser_cb)
            try:
                parser.feed_data(buf[:end])
                status = parser.get_status_code()
            except httptools.HttpParserError as exc:
                self._fail_head(_bad_head(str(exc) or exc.__class__.__name__))
                return
            if not parser_cb.complete:
                self._fail_head(_bad_head("incomplete response head"))
                return
            version = _http_version(buf)
            headers = parser_cb.headers
        if 100 <= status < 200:
            if status == 101:
                self._fail_head(_bad_head("unexpected protocol switch"))
                return
            if len(buf) > end:  # an interim response (103 Early Hints): the real one follows
                self._on_head_bytes(buf[end:])
            return
        self._on_head(status, version, headers, buf, end)

    def _on_head(
        self,
        status: int,
        version: str,
        headers: ResponseHead | list[tuple[bytes, bytes]],
        buf: bytes,
        end: int,
    ) -> None:
        chunked = False
        length: int | None = None
        te = None
        conn_tokens = b""
        if type(headers) is ResponseHead:  # a plain head: its framing was read with it
            length = headers.content_length
            if headers.chunked:
                te = b"chunked"
            conn_tokens = headers.connection
            fields = ()
        else:
            fields = headers
        for name, value in fields:
            size = len(name)
            if size != 14 and size != 17 and size != 10:
                continue  # not one of the three names read here
            low = _name(name)[0]  # lowercase, from the bounded cache: names repeat
            if low == b"content-length":
                value = value.strip()
                if not value.isdigit() or (length is not None and length != int(value)):
                    self._fail_head(_bad_head("invalid Content-Length"))
                    return
                length = int(value)
            elif low == b"transfer-encoding":
                te = value if value == b"chunked" else value.lower()
            elif low == b"connection":
                conn_tokens += b"," + value.lower()
        if conn_tokens:
            tokens = {t.strip() for t in conn_tokens.split(b",")}
            keep_alive = (b"keep-alive" in tokens) if version == "1.0" else (b"close" not in tokens)
        else:
            keep_alive = version != "1.0"
        if self._method == "HEAD" or status == 204 or status == 304:
            length = 0
        elif te is not None:
            chunked = te == b"chunked" or te.rstrip().endswith(b"chunked")
            if length is not None:  # both framings: honour chunked, never reuse (smuggling guard)
                keep_alive = False
            length = None
            if not chunked:
                keep_alive = False
        elif length is None:
            keep_alive = False  # body ends when the upstream closes
        self._keep_alive = keep_alive
        self._until_close = not chunked and length is None
        if length == 0:
            self._state = _DONE
            if len(buf) > end:
                self._keep_alive = False  # bytes after a bodiless response
        else:
            self._state = _STREAM if length is None else _LENGTH
        self._remaining = length or 0
        listener = self._listener
        fut = self._head_fut
        self._head_fut = None
        try:
            listener.on_head(self._exchange, status, headers, chunked, length)
        except BaseException as exc:
            self.close()
            if fut is None:
                listener.on_head_failed(exc)
            elif not fut.done():
                fut.set_exception(exc)
            return
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._listener is not listener or self._state == _CLOSED:
            return  # released or closed inside on_head
        if length == 0:
            listener.on_eof()
            return
        if len(buf) > end:
            # The body's first bytes before the idle deadline is set: they may carry the first
            # event, which reaches the client the sooner. (Nothing ticks in between.)
            self.data_received(_bytes_tail(buf, end))  # (one step: no slice object)
        if self._listener is listener and self._state != _CLOSED:  # (not released meanwhile)
            self._start_idle_timer()
        listener.on_head_end()

    def _fail_head(self, exc: GatewayError) -> None:
        listener = self._listener
        self.close()
        self._head_failed(exc, listener)

    def _head_failed(self, exc: BaseException, listener: UpstreamListener | None) -> None:
        """The request failed before its response head: to whoever waits for the head."""
        fut = self._head_fut
        self._head_fut = None
        if fut is not None:
            if not fut.done():
                fut.set_exception(exc)
        elif listener is not None:
            listener.on_head_failed(exc)

    def _tick(self, now: float) -> None:
        """The pool's ticker: a deadline passed (header timeout, idle check, keep-alive end)."""
        state = self._state
        if state == _HEAD:
            self._on_header_timeout()
        elif state in (_STREAM, _LENGTH):
            self._idle_check(now)
        elif state == _IDLE:
            self.close()
        else:
            self._deadline = 0.0

    def _on_header_timeout(self) -> None:
        if self._state == _HEAD:
            t = self._pool.header_timeout
            self._fail_head(
                GatewayError(
                    504, f"upstream sent no response within {t:g}s", code="upstream_timeout"
                )
            )

    def _start_idle_timer(self) -> None:
        timeout = self._pool.idle_timeout
        # A counter checked four times per timeout instead of a timer reset per chunk.
        self._deadline = 0.0 if timeout is None else self._loop.time() + timeout / 4

    def _idle_check(self, now: float) -> None:
        diverted = self._diverted
        rx = self._rx if diverted is None else self._rx + diverted.pieces  # type: ignore[attr-defined]
        if rx != self._rx_seen or self._paused:  # a pause is our client's, not the upstream's
            self._rx_seen = rx
            self._silent = 0
        else:
            self._silent += 1
            if self._silent >= 4:
                listener = self._listener
                self.close()
                t = self._pool.idle_timeout
                listener.on_error(
                    GatewayError(
                        504,
                        f"upstream sent nothing for {t:g}s mid-response",
                        code="upstream_timeout",
                    )
                )
                return
        self._deadline = now + self._pool.idle_timeout / 4


# ---------------------------------------------------------------------------------- buffered mode


@dataclass(slots=True)
class UpstreamResponse:
    """A whole upstream response (buffered mode): status, head headers, de-chunked body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


class _Dechunker:
    """httptools callbacks that collect a chunked body (fed after a synthetic head)."""

    __slots__ = ("complete", "parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False

    def on_body(self, body: bytes) -> None:
        self.parts.append(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.complete = True


_SYNTHETIC_CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class _BufferingListener:
    """Collects a whole response on top of the raw path; releases the connection when done."""

    __slots__ = (
        "_dechunker",
        "_max_body",
        "_parser",
        "_parts",
        "_size",
        "conn",
        "fut",
        "headers",
        "status",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, max_body: int) -> None:
        self.fut: asyncio.Future[UpstreamResponse] = loop.create_future()
        self.conn: UpstreamExchange | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._max_body = max_body
        self._dechunker: _Dechunker | None = None
        self._parser = None

    def on_head(
        self,
        conn: UpstreamExchange,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunked: bool,
        content_length: int | None,
    ) -> None:
        self.conn, self.status = conn, status
        self.headers = headers if type(headers) is list else list(headers)
        if content_length is not None and content_length > self._max_body:
            self._fail(
                GatewayError(502, "upstream response too large", code="upstream_bad_response")
            )
        elif chunked:
            self._dechunker = _Dechunker()
            self._parser = httptools.HttpResponseParser(self._dechunker)
            self._parser.feed_data(_SYNTHETIC_CHUNKED_HEAD)

    def on_data(self, data: bytes) -> None:
        dechunker = self._dechunker
        if dechunker is None:
            self._parts.append(data)
            self._size += len(data)
            if self._size > self._max_body:
                self._fail(
                    GatewayError(502, "upstream response too large", code="upstream_bad_response")
                )
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(_bad_head("invalid chunked body"))
            return
        if dechunker.size > self._max_body:
            self._fail(
                GatewayError(502, "upstream response too large", code="upstream_bad_response")
            )
        elif dechunker.complete:
            self._parts = dechunker.parts
            self.on_eof()

    def on_head_end(self) -> None:
        pass

    def on_eof(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.release()
        if not self.fut.done():
            self.fut.set_result(UpstreamResponse(self.status, self.headers, b"".join(self._parts)))

    def on_error(self, exc: GatewayError) -> None:
        if not self.fut.done():
            self.fut.set_exception(exc)

    def _fail(self, exc: GatewayError) -> None:
        if self.conn is not None:
            self.conn.close()
        self.on_error(exc)


# ------------------------------------------------------------------------------------------- pool


class _OriginPool:
    __slots__ = ("connecting", "idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: list[UpstreamConnection] = []  # LIFO: the most recently used is the least stale
        self.open = 0  # connections open or being opened (the bounded number)
        self.connecting = 0
        self.waiters: deque[asyncio.Future] = deque()


def _wake(op: _OriginPool) -> None:
    """A connection of ``op`` is free: the first task still waiting for one takes its turn."""
    while op.waiters:
        fut = op.waiters.popleft()
        if not fut.done():
            fut.set_result(None)
            return


def _take_idle(op: _OriginPool) -> UpstreamConnection | None:
    """The newest idle connection of ``op`` still alive (the dead ones are dropped), or None."""
    idle = op.idle
    while idle:
        conn = idle.pop()
        if conn._take():
            return conn
    return None


class UpstreamPool:
    """Keep-alive connections per origin, at most ``max_per_origin`` open at a time.

    Failures before the response head raise ``GatewayError`` from ``open_raw``/``request``:
    502 ``upstream_unreachable`` (refused, DNS, TLS), 502 ``upstream_closed`` (closed before the
    head), 502 ``upstream_bad_response`` (not HTTP), 504 ``upstream_timeout`` (connect, pool wait,
    header timeout). Timeouts are seconds; ``None`` disables header and idle timeouts.
    """

    def __init__(
        self,
        *,
        max_per_origin: int = 256,
        connect_timeout: float = 10.0,
        header_timeout: float | None = 60.0,
        idle_timeout: float | None = 120.0,
        keepalive_idle: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        max_buffered_body: int = 64 * 1024 * 1024,
    ) -> None:
        if max_per_origin < 1:
            raise ValueError("max_per_origin must be at least 1")
        self.max_per_origin = max_per_origin
        self.connect_timeout = connect_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.keepalive_idle = keepalive_idle
        self.max_buffered_body = max_buffered_body
        self._ssl_context = ssl_context
        self._origins: dict[Origin, _OriginPool] = {}
        self._closed = False
        # One ticker for every deadline of every connection (see UpstreamConnection._deadline).
        self._watched: set[UpstreamConnection] = set()
        self._tick_handle: asyncio.TimerHandle | None = None
        periods = [t / 4 for t in (header_timeout, idle_timeout, keepalive_idle) if t]
        self._tick_every = min(1.0, min(periods, default=1.0))

    # ---- public

    async def open_raw(
        self,
        origin: Origin,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        listener: UpstreamListener,
        *,
        fresh: bool = False,
        block: str = "",
    ) -> UpstreamExchange:
        """Send the request; return once the response head reached ``listener.on_head`` (which
        already got the exchange). The body then flows to the listener as raw bytes. ``fresh``:
        never on a pooled connection (the retry after ``StaleConnection``). ``block``: header
        lines from ``header_block``, written before ``headers``."""
        data = build_request(origin, method, path, headers, body, block)
        while True:
            conn = None if fresh else self._idle(origin)
            if conn is None:
                conn = await self._acquire(origin, fresh)
            try:
                await conn._send(data, listener, method)
            except StaleConnection:  # never from a fresh connection: it served nothing before
                # The upstream had closed this pooled connection before answering: once, afresh.
                log.debug("pooled connection to %s was stale; retrying on a fresh one", origin)
                fresh = True
                continue
            except BaseException:
                conn.close()
                raise
            return conn._exchange

    def send_now(
        self,
        origin: Origin,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        listener: UpstreamListener,
        block: str = "",
    ) -> UpstreamExchange | None:
        """Send the request at once on an idle pooled connection, without a coroutine; None when
        none is idle (then use ``open_raw``). Nobody awaits the head: ``listener.on_head`` or
        ``listener.on_head_failed`` follows (``StaleConnection``: send it again with
        ``open_raw(..., fresh=True)``). Raises ``GatewayError`` for a request it cannot build."""
        op = self._origins.get(origin)
        if op is None or not op.idle:
            return None  # before building: open_raw builds the request itself
        data = build_request(origin, method, path, headers, body, block)
        conn = self._idle(origin)
        if conn is None:
            return None
        conn._send(data, listener, method, await_head=False)
        return conn._exchange

    async def request(
        self,
        origin: Origin,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """The whole response, body de-chunked. ``timeout`` bounds the whole exchange (504)."""
        if timeout is None:
            return await self._request(origin, method, path, headers, body)
        try:
            return await asyncio.wait_for(
                self._request(origin, method, path, headers, body), timeout
            )
        except asyncio.TimeoutError:
            raise GatewayError(
                504, f"upstream did not answer within {timeout:g}s", code="upstream_timeout"
            ) from None

    def stats(self) -> dict[str, dict[str, int]]:
        """Per origin: open (incl. connecting), idle, in_use, connecting, waiting."""
        return {
            str(origin): {
                "open": op.open,
                "idle": len(op.idle),
                "in_use": op.open - len(op.idle) - op.connecting,
                "connecting": op.connecting,
                "waiting": len(op.waiters),
            }
            for origin, op in self._origins.items()
        }

    async def aclose(self) -> None:
        """Close idle connections; connections in use close when released. No new requests."""
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for op in self._origins.values():
            for conn in list(op.idle):
                conn.close()
            while op.waiters:
                fut = op.waiters.popleft()
                if not fut.done():
                    fut.set_result(None)

    # ---- internals

    async def _request(
        self,
        origin: Origin,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> UpstreamResponse:
        listener = _BufferingListener(asyncio.get_running_loop(), self.max_buffered_body)
        conn = await self.open_raw(origin, method, path, headers, body, listener)
        try:
            return await listener.fut
        except BaseException:
            conn.close()
            raise

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _idle(self, origin: Origin) -> UpstreamConnection | None:
        """A pooled connection, taken without a coroutine (the common case), or None."""
        op = self._origins.get(origin)
        if op is None or self._closed:
            return None
        return _take_idle(op)

    async def _acquire(self, origin: Origin, fresh: bool) -> UpstreamConnection:
        if self._closed:
            raise GatewayError(503, "the gateway is shutting down", code="shutting_down")
        op = self._origins.get(origin)
        if op is None:
            op = self._origins[origin] = _OriginPool()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            if not fresh:
                conn = _take_idle(op)
                if conn is not None:
                    return conn
            if op.open < self.max_per_origin:
                break
            if fresh and op.idle:
                op.idle[0].close()  # make room for the fresh one: the oldest idle goes
                continue
            remaining = deadline - loop.time()
            fut = loop.create_future()
            op.waiters.append(fut)
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(fut, remaining)
            except asyncio.TimeoutError:
                raise GatewayError(
                    504,
                    f"no connection to the upstream {origin} became free within "
                    f"{self.connect_timeout:g}s",
                    code="upstream_timeout",
                ) from None
            except BaseException:
                if fut.done() and not fut.cancelled():
                    _wake(op)  # we were woken but leave: pass the turn on
                raise
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    op.waiters.remove(fut)
            if self._closed:
                raise GatewayError(503, "the gateway is shutting down", code="shutting_down")
        op.open += 1
        op.connecting += 1
        try:
            conn = await self._connect(origin, loop, deadline)
        except BaseException:
            op.open -= 1
            _wake(op)
            raise
        finally:
            op.connecting -= 1
        return conn

    async def _connect(
        self, origin: Origin, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> UpstreamConnection:
        ctx = self._ssl() if origin.tls else None
        timeout = max(deadline - loop.time(), 0.001)
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: UpstreamConnection(self, origin, loop),
                    origin.host,
                    origin.port,
                    ssl=ctx,
                    server_hostname=origin.host if ctx is not None else None,
                    ssl_handshake_timeout=self.connect_timeout if ctx is not None else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise GatewayError(
                504,
                f"connecting to the upstream {origin} timed out after {self.connect_timeout:g}s",
                code="upstream_timeout",
            ) from None
        except ssl.SSLError as exc:
            raise GatewayError(
                502,
                f"TLS with the upstream {origin} failed: {exc.reason or exc}",
                code="upstream_unreachable",
            ) from None
        except OSError as exc:
            raise GatewayError(
                502,
                f"cannot connect to the upstream {origin}: {exc.strerror or exc}",
                code="upstream_unreachable",
            ) from None
        if conn._state == _CLOSED:
            raise GatewayError(
                502,
                f"the upstream {origin} closed the connection at once",
                code="upstream_unreachable",
            )
        conn._counted = True
        conn._state = _ACTIVE
        return conn

    def _put_idle(self, conn: UpstreamConnection) -> None:
        if self._closed:
            conn.close()
            return
        op = self._origins[conn.origin]
        conn._state = _IDLE
        conn.reused = True
        conn._deadline = conn._loop.time() + self.keepalive_idle
        op.idle.append(conn)
        _wake(op)

    def _watch(self, conn: UpstreamConnection) -> None:
        """From its first request on, the ticker looks after ``conn`` until it closes."""
        if conn not in self._watched:
            self._watched.add(conn)
            if self._tick_handle is None and not self._closed:
                self._tick_handle = conn._loop.call_later(self._tick_every, self._on_tick)

    def _on_tick(self) -> None:
        self._tick_handle = None
        if not self._watched:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._watched):
            if 0.0 < conn._deadline <= now:
                conn._tick(now)
        if self._watched and not self._closed:
            self._tick_handle = loop.call_later(self._tick_every, self._on_tick)

    def _forget(self, conn: UpstreamConnection) -> None:
        self._watched.discard(conn)
        op = self._origins.get(conn.origin)
        if op is None:
            return
        with contextlib.suppress(ValueError):
            op.idle.remove(conn)
        if conn._counted:
            conn._counted = False
            op.open -= 1
            _wake(op)
