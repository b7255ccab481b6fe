# cython: annotation_typing=False
# Cython compiles this file in place, and relay.pxd makes Dechunker, ExchangeResponse and
# RelayedResponse extension types.
# Annotations only document here: they never become C-level type checks. This file is also the
# pure-Python twin (see gwcore/_twins.py).
"""The relay: an upstream response in the client's dialect goes to the client as it arrives.

It owns one relayed response: it is the upstream connection's listener (``on_head``, ``on_data``,
``on_eof``, ``on_error``) and the client channel's flow target (``pause_reading``,
``resume_reading``), so flow control is crossed without a task or a queue. On the hot path (an
upstream chunked stream to an HTTP/1.1 client) each received ``bytes`` is fed to the scanner and the
very same object is written to the client: one scanner call and one ``transport.write`` per piece.

It never parses JSON per event, never re-frames a chunk unless an event is elided, never logs per
chunk, and never lets an upstream connection that a client abandoned go back to the pool. It writes
exactly one usage record per response, also for aborted ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from time import perf_counter
from typing import Any

import httptools
import orjson

from gwcore.errors import GatewayError
from gwcore.server.app import DEFERRED, error_response
from gwcore.server.protocol import header_lines
from gwcore.sse import RelayPump, ResponseHead, SSEError, StreamObserver, usage_counts
from gwcore.upstream import Origin, StaleConnection, UpstreamExchange, UpstreamPool, _name
from gwcore.usage import SinkBase, UsageRecord, UsageSink, usage_from_openai

__all__ = [
    "ExchangeResponse",
    "RelayedResponse",
    "broken_stream",
    "new_relay",
    "stream_headers",
    "upstream_error",
]

log = logging.getLogger("gwcore.relay")

# What each upstream error status becomes for the client (before the first byte).
_ERROR_TYPES = {
    401: "authentication_error",
    403: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
}

# Upstream response headers a client may see (everything else is the gateway's business).
_PASS_HEADERS = frozenset(
    {
        b"openai-processing-ms",
        b"openai-version",
        b"openai-organization",
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-limit-tokens",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-requests",
        b"x-ratelimit-reset-tokens",
        b"retry-after",
    }
)
_PASS_NAMES = tuple(sorted(_PASS_HEADERS))  # for ResponseHead.passed_lines

_WAITING, _RAW, _FRAMED, _BODY, _ERROR, _DONE = range(6)


def stream_headers(route: str) -> list[tuple[str, str]]:
    """The head of every streamed chat response (no compression of event streams, ever)."""
    return [
        ("content-type", "text/event-stream; charset=utf-8"),
        ("cache-control", "no-cache"),
        ("x-accel-buffering", "no"),
        ("x-gwcore-route", route),
    ]


# The head lines every relayed stream starts with, rendered and checked once.
_RELAY_STREAM_LINES = header_lines(stream_headers("relay"))
# An upstream header name as received -> "Name: " when it passes to the client, "" when not;
# bounded (names come from upstreams)
_PASS_PREFIXES: dict[bytes, str] = {}


def _passed_lines(headers: Any) -> str:
    """The client's head lines for the upstream headers that pass (``_PASS_HEADERS``), as
    ``header_lines`` renders them (``name: value`` in the upstream's case), "" for none. A
    provider sends two dozen headers with values that change per response (rate limits left,
    timings). A plain head (``ResponseHead``) renders them from the bytes it was read from;
    for a list of pairs each name's verdict comes from a cache, each passing value is checked and
    decoded once. Raises ``ValueError`` for a CR or LF in a value, as ``header_lines``."""
    if type(headers) is ResponseHead:
        return headers.passed_lines(_PASS_NAMES)
    prefixes = _PASS_PREFIXES
    out = None
    for pair in headers:
        name = pair[0]
        prefix = prefixes.get(name)
        if prefix is None:
            prefix = name.decode("latin-1") + ": " if _name(name)[0] in _PASS_HEADERS else ""
            if len(prefixes) >= 1024:
                prefixes.clear()
            prefixes[name] = prefix
        if prefix:
            value = pair[1]
            if b"\r" in value or b"\n" in value:
                raise ValueError("CR or LF in a response header")
            if out is None:
                out = []
            out.append(prefix)
            out.append(value.decode("latin-1"))
            out.append("\r\n")
    return "" if out is None else "".join(out)


def upstream_error(status: int, body: bytes) -> GatewayError:
    """An upstream error response as the client's error: the upstream's status and message."""
    message = code = param = None
    try:
        obj = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        obj = None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        param = err.get("param")
    elif isinstance(err, str):
        message = err
    elif isinstance(obj, dict) and isinstance(obj.get("message"), str):
        message = obj["message"]
    if not isinstance(message, str) or not message:
        text = body[:200].decode("utf-8", "replace").strip()
        message = f"upstream returned HTTP {status}" + (f": {text}" if text else "")
    etype = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    return GatewayError(
        status if 400 <= status <= 599 else 502,
        message,
        type=etype,
        code=code if isinstance(code, str) else None,
        param=param if isinstance(param, str) else None,
    )


def broken_stream(exc: Exception) -> GatewayError:
    return GatewayError(502, f"upstream sent a broken stream: {exc}", code="upstream_bad_response")


class Dechunker:
    """httptools walks a chunked body for the cold paths (errors, HTTP/1.0 clients, bodies)."""

    __slots__ = ("complete", "out", "parser")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)
        self.parser.feed_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    def feed(self, data: bytes) -> bytes:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise GatewayError(
                502, f"upstream sent broken chunked framing: {exc}", code="upstream_bad_response"
            ) from None
        out, self.out = self.out, []
        return b"".join(out)


class ExchangeResponse:
    """What every upstream listener that answers one client channel shares: the exchange, the
    usage record written exactly once, crossed flow control, and the handler's wait.

    ``ready`` resolves once the client's response has started (the handler may return), or fails
    with the ``GatewayError`` to answer with. A client leaving before then cancels the handler's
    wait (``channel.cancel_handler()``), which closes the upstream connection.

    ``start_exchange`` skips the wait when a pooled connection is idle: the request goes out at
    once, the handler returns ``DEFERRED`` (no task), and this object answers errors itself.
    """

    def __init__(
        self, channel: Any, record: UsageRecord, sink: UsageSink, started_at: float
    ) -> None:
        self._init_exchange(channel, record, sink, started_at)

    def _init_exchange(
        self, channel: Any, record: UsageRecord, sink: UsageSink, started_at: float
    ) -> None:
        self.channel = channel
        self.record = record
        self.sink = sink
        self.started_at = started_at
        self.exchange: UpstreamExchange | None = None
        # The handler's wait, made by ``exchange_with``: a request sent at once (``DEFERRED``)
        # has no waiting handler, and no future to make, resolve and free.
        self.ready: asyncio.Future[None] | None = None
        self._recorded = False
        self._deferred = False  # no handler waits: errors before the response are answered here
        self._resend: tuple | None = None  # (pool, origin, path, headers, body) while deferred
        self._retry: asyncio.Task[None] | None = None

    def start_exchange(
        self,
        pool: UpstreamPool,
        origin: Origin,
        path: str,
        headers: list,
        body: bytes,
        block: str = "",
    ) -> Any:
        """POST ``body`` upstream (``block``: header lines from ``upstream.header_block``). On an
        idle pooled connection it is sent now and the result is ``DEFERRED`` (the handler returns
        it; callbacks finish the response, no task). Otherwise the result is the coroutine of
        ``exchange_with``, for the handler's task to await."""
        try:
            exchange = pool.send_now(origin, "POST", path, headers, body, self, block)
        except GatewayError as exc:
            self.record_failure(exc.status, exc.message)
            raise
        if exchange is None:
            return self.exchange_with(pool, origin, path, headers, body, block)
        self.exchange = exchange  # already: a client leaving before the head closes it
        self._deferred = True
        self._resend = (pool, origin, path, headers, body, block)
        self.channel.on_disconnect(self.client_gone)
        return DEFERRED

    def on_head_failed(self, exc: BaseException) -> None:
        """(``DEFERRED`` only) the request failed before the response head."""
        if self._recorded:
            return
        resend, self._resend = self._resend, None
        if isinstance(exc, StaleConnection) and resend is not None:
            # The upstream had closed the pooled connection before answering: once, afresh.
            self.exchange = None
            self._retry = self.channel.loop.create_task(self._send_afresh(*resend))
            return
        if not isinstance(exc, GatewayError):
            log.error("relay failed (request_id=%s)", self.record.request_id, exc_info=exc)
            exc = GatewayError(500, "internal server error", type="server_error")
        self.record_failure(exc.status, exc.message)
        self._answer(exc)

    async def _send_afresh(
        self, pool: UpstreamPool, origin: Origin, path: str, headers: list, body: bytes, block: str
    ) -> None:
        try:
            await pool.open_raw(origin, "POST", path, headers, body, self, fresh=True, block=block)
        except asyncio.CancelledError:
            pass  # the client left (``client_gone`` recorded it); open_raw closed the connection
        except Exception as exc:
            self.on_head_failed(exc)
        finally:
            self._retry = None

    def _answer(self, exc: GatewayError) -> None:
        """The error for a client whose response has not started: raised to the waiting handler,
        or (``DEFERRED``) sent from here."""
        if not self._deferred:
            ready = self.ready
            if ready is not None and not ready.done():
                ready.set_exception(exc)
        elif self.channel.started:
            self.channel.abort()
        else:
            self.channel.send(error_response(exc))

    async def exchange_with(
        self,
        pool: UpstreamPool,
        origin: Origin,
        path: str,
        headers: list,
        body: bytes,
        block: str = "",
    ) -> None:
        """POST ``body`` upstream with this object as the listener; return once the client's
        response started. Raises the ``GatewayError`` to answer with; either way, and when the
        client leaves first (the wait is cancelled), exactly one usage record is written."""
        if self.ready is None:
            self.ready = self.channel.loop.create_future()
        self.channel.on_disconnect(self.client_gone)
        try:
            await pool.open_raw(origin, "POST", path, headers, body, self, block=block)
            await self.ready
        except GatewayError as exc:
            self.record_failure(exc.status, exc.message)
            raise
        except asyncio.CancelledError:  # the client went away before its response started
            self.record_failure(499, "client disconnected")
            raise

    def on_head_end(self) -> None:
        """The upstream read that carried the head is handed on: nothing held back here."""

    def client_gone(self) -> None:  # pragma: no cover - each listener says what "gone" means
        raise NotImplementedError

    def _head_arrived(self, exchange: UpstreamExchange, status: int) -> None:
        """Every ``on_head`` starts here: the exchange, the status, the time to the head."""
        self.exchange = exchange
        self.record.status = status
        self.record.ttfb_ms = (perf_counter() - self.started_at) * 1000.0

    # ---- the client channel's flow target

    def pause_reading(self) -> None:
        if self.exchange is not None:
            self.exchange.pause_reading()

    def resume_reading(self) -> None:
        if self.exchange is not None:
            self.exchange.resume_reading()

    # ---- endings

    def _release(self) -> None:
        if self.exchange is not None:
            self.exchange.release()

    def _close_upstream(self) -> None:
        if self.exchange is not None:
            self.exchange.close()

    def _client_left(self) -> None:
        """The client went away: stop waiting, close the upstream at once, note it."""
        ready = self.ready
        if ready is not None and not ready.done():
            self.channel.cancel_handler()  # connecting, or waiting for the head or a whole answer
        if self._retry is not None:
            self._retry.cancel()
        self._close_upstream()
        self.record.aborted = True
        self.record.error = self.record.error or "client disconnected"

    def _record_once(self, tokens: Mapping[str, int | None] | None) -> None:
        if self._recorded:
            return
        self._recorded = True
        rec = self.record
        rec.duration_ms = (perf_counter() - self.started_at) * 1000.0
        if tokens is not None:
            rec.set_tokens(tokens)
        sink = self.sink
        if isinstance(sink, SinkBase):
            base = sink  # compiled: typed, its record a C call (the gateway's pipeline is one)
            base.record(rec)
        else:
            sink.record(rec)

    def record_failure(self, status: int, message: str) -> None:
        """A request that ended before its response started still leaves exactly one record."""
        if self._recorded:
            return
        rec = self.record
        rec.status = rec.status or status
        rec.error = rec.error or message
        rec.aborted = status == 499
        self._record_once(None)


class RelayedResponse(ExchangeResponse):
    """Listener of one upstream exchange whose response is relayed to one client channel."""

    def __init__(
        self,
        channel: Any,
        record: UsageRecord,
        sink: UsageSink,
        stream: bool,
        elide_usage: bool,
        started_at: float,
    ) -> None:
        self._init_exchange(channel, record, sink, started_at)
        self._init_relay(stream, elide_usage)

    def _init_relay(self, stream: bool, elide_usage: bool) -> None:
        self.stream = stream
        self.elide_usage = elide_usage
        self.observer: StreamObserver | None = None
        self._mode = _WAITING
        self._dechunker: Dechunker | None = None
        # The body of a non-streamed or error response (made by on_head for those only)
        self._kept: list[bytes] | None = None
        self._feed = None
        self._write = None
        self._raw = False  # the upstream's chunk framing goes to the client as is

    # ---- upstream listener

    def on_head(
        self,
        exchange: UpstreamExchange,
        status: int,
        headers: list[tuple[bytes, bytes]],
        chunked: bool,
        content_length: int | None,
    ) -> None:
        self._head_arrived(exchange, status)
        if not 200 <= status < 300:
            self._mode = _ERROR
            self._kept = []
            if chunked:
                self._dechunker = Dechunker()
            return
        channel = self.channel
        passed = _passed_lines(headers)
        # The head is held back: it leaves in one write with the first body bytes of this read,
        # or alone at its end (``on_head_end``).
        if self.stream:
            lines = _RELAY_STREAM_LINES + passed if passed else _RELAY_STREAM_LINES
            channel.start(status, lines, chunked=True, content_length=None, hold=True)
            # positional: a keyword call builds and parses a dict
            self.observer = StreamObserver(chunked and channel.chunked, self.elide_usage)
            if chunked and channel.chunked:
                self._mode = _RAW
                self._raw = True
                # No bound write or feed kept: the pump writes and feeds; the rare rest (a piece
                # without the pump, the end's tail) calls the channel's write_held itself.
                # From the next piece on, the connection hands each piece to the pump (C): its
                # first write carries the held head (take_held), and each goes to the transport,
                # or to the client's socket itself while the transport holds nothing back
                # (direct_fd): the first too, so that the relay lane can take the next read.
                fd = channel.direct_fd()
                transport = channel.transport if fd >= 0 else None
                exchange.divert(
                    RelayPump(
                        self.observer,
                        channel.write_raw,
                        self,
                        channel,  # (not a bound method: the pump calls its take_held once)
                        fd,
                        transport,
                    )
                )
            else:
                self._mode = _FRAMED
                self._feed = self.observer.feed
                # Bound methods by getattr: the compiled module sees channel's methods as C
                # functions, not as objects.
                self._write = getattr(channel, "write")  # noqa: B009
        else:
            ctype = "application/json"
            if type(headers) is ResponseHead:
                value = headers.value_of(b"content-type")
                if value is not None:
                    ctype = value.decode("latin-1")
            else:
                for k, v in headers:
                    if _name(k)[0] == b"content-type":
                        ctype = v.decode("latin-1")
                        break
            passed += header_lines([("content-type", ctype), ("x-gwcore-route", "relay")])
            if chunked:
                channel.start(status, passed, chunked=True, content_length=None, hold=True)
            else:
                channel.start(
                    status, passed, chunked=False, content_length=content_length, hold=True
                )
            self._mode = _BODY
            self._kept = []
            self._raw = chunked == channel.chunked
            self._write = getattr(channel, "write_held" if self._raw else "write")
        if chunked and self._mode != _RAW:  # raw pass-through: the scanner walks the chunks
            self._dechunker = Dechunker()
        channel.set_flow_target(self)
        if self.ready is not None:
            self.ready.set_result(None)

    def on_data(self, data: bytes) -> None:
        if self._mode == _RAW:  # (a piece the connection did not hand to the pump)
            try:
                self.channel.write_held(self.observer.feed(data))
            except SSEError as exc:
                self.on_error(broken_stream(exc))
                return
            if self.observer.complete:
                self._finish()
            return
        self._on_data_slow(data)

    def pump_complete(self) -> None:
        if self._mode == _RAW:
            self._finish()

    def pump_failed(self, exc: Exception) -> None:
        self.on_error(broken_stream(exc))

    def _on_data_slow(self, data: bytes) -> None:
        mode = self._mode
        if mode != _FRAMED and mode != _BODY and mode != _ERROR:
            return  # the response already ended
        dechunker = self._dechunker
        try:
            payload = dechunker.feed(data) if dechunker is not None else data
            if mode == _FRAMED:
                self._write(self._feed(payload))
        except GatewayError as exc:
            self.on_error(exc)
            return
        except SSEError as exc:
            self.on_error(broken_stream(exc))
            return
        if mode == _BODY:
            self._kept.append(payload)
            self._write(data if self._raw else payload)
        elif mode == _ERROR:
            self._kept.append(payload)
        if dechunker is not None and dechunker.complete:
            self.on_eof()

    def on_eof(self) -> None:
        mode = self._mode
        if mode == _ERROR:
            self._mode = _DONE
            self._release()
            err = upstream_error(self.record.status, b"".join(self._kept))
            self.record.error = err.message
            self._write_record()
            self._answer(err)
            return
        self._finish()

    def on_error(self, exc: GatewayError) -> None:
        """The upstream failed after its head: a terminal error event, never a silent cut."""
        mode = self._mode
        self._mode = _DONE
        self._close_upstream()
        rec = self.record
        rec.error = exc.message
        rec.aborted = True
        if mode in (_ERROR, _WAITING):
            self._write_record()
            self._answer(exc)
            return
        channel = self.channel
        if self.stream and mode in (_RAW, _FRAMED) and self.observer.at_boundary:
            event = b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
            channel.write(event)
            channel.end()
        else:  # mid-chunk or non-streamed: only a broken connection tells the client the truth
            channel.abort()
        self._write_record()

    # ---- client side

    def client_gone(self) -> None:
        """The client went away: close the upstream connection at once, record what was seen."""
        if self._mode == _DONE:
            return
        self._mode = _DONE
        self._client_left()
        self._write_record()

    # ---- endings

    def on_head_end(self) -> None:
        self.channel.flush_head()

    def _finish(self) -> None:
        self._mode = _DONE
        self._release()
        channel = self.channel
        if self.observer is not None:
            tail = self.observer.close()  # anything an elision held back at the very end
            if tail:
                if self._raw:  # a stream's raw mode: no _write kept
                    channel.write_held(tail)
                else:
                    self._write(tail)
        # Raw chunked pass-through already forwarded the upstream's own last chunk.
        channel.end(terminator_sent=channel.chunked and self._raw)
        self._write_record()

    def _write_record(self) -> None:
        if self._recorded:
            return
        rec = self.record
        usage = None
        observer = self.observer
        if observer is not None:
            raw = observer.usage
            if raw is not None:
                counts = usage_counts(raw)  # a plain usage object, read in C (None: not plain)
                if counts is not None:
                    (
                        rec.prompt_tokens,
                        rec.completion_tokens,
                        rec.total_tokens,
                        rec.cached_tokens,
                        rec.reasoning_tokens,
                    ) = counts
                    self._record_once(None)
                    return
                try:
                    usage = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    usage = None
        elif self._mode == _DONE and self._kept and rec.status < 300:
            try:
                body = orjson.loads(b"".join(self._kept))
                usage = body.get("usage") if isinstance(body, dict) else None
            except orjson.JSONDecodeError:
                usage = None
        self._record_once(usage_from_openai(usage) if isinstance(usage, dict) else None)


def new_relay(
    channel: Any,
    record: UsageRecord,
    sink: UsageSink,
    stream: bool,
    elide_usage: bool,
    started_at: float,
) -> RelayedResponse:
    """``RelayedResponse(...)`` without the call of ``__init__`` (from the compiled gateway, a C
    call and a C allocation: no argument parsing, no ``super()``): the same initialisation."""
    relay = RelayedResponse.__new__(RelayedResponse)
    relay._init_exchange(channel, record, sink, started_at)
    relay._init_relay(stream, elide_usage)
    return relay
