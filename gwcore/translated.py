"""The translation path: a provider that speaks another dialect, answered in OpenAI chat.

It owns one translated response: ``translated_completion`` (the ``/v1/chat/completions`` handler
part for Anthropic and Gemini providers: translate the request, open the upstream exchange) and
``TranslatedResponse``, the upstream listener that feeds the body to the SSE parser and the
dialect's stream translator and writes each piece's translation to the client as soon as it is
made, or translates a whole answer at its end. Like the relay it is the client channel's flow
target (flow control crossed, no task, no queue), writes exactly one usage record per response,
turns an upstream failure after the first byte into a terminal error event, and closes the
upstream connection at once when the client goes away.

It never forwards a client's credentials or headers beyond the dialect's own short list, never
buffers a translated event, and never lets an abandoned upstream connection back into the pool.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gwcore.errors import GatewayError
from gwcore.relay import Dechunker, ExchangeResponse, broken_stream, stream_headers
from gwcore.sse import EventParser, SSEError
from gwcore.translate import Dialect, dialect
from gwcore.upstream import UpstreamExchange
from gwcore.usage import UsageRecord, UsageSink

__all__ = ["TranslatedResponse", "translated_completion"]

ROUTE = "translated"
# _DRAIN: the client's stream is complete; the upstream body is read to its end only to keep the
# connection reusable.
_WAITING, _STREAM, _DRAIN, _BODY, _ERROR, _DONE = range(6)


class TranslatedResponse(ExchangeResponse):
    """Listener of one upstream exchange whose answer is translated for one client channel.

    ``ready`` resolves once the client's response has started (streams) or was sent (whole
    answers), or fails with the ``GatewayError`` to answer with.
    """

    def __init__(
        self,
        channel: Any,
        record: UsageRecord,
        sink: UsageSink,
        translation: Dialect,
        *,
        model: str,
        stream: bool,
        include_usage: bool,
        started_at: float,
        fallback_id: str,
        created: int | None = None,
    ) -> None:
        super().__init__(channel, record, sink, started_at)
        self.translation = translation
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.fallback_id = fallback_id
        self.created = int(time.time()) if created is None else created
        self.translator: Any = None
        self._parser: EventParser | None = None
        self._dechunker: Dechunker | None = None
        self._kept: list[bytes] = []
        self._mode = _WAITING
        self._tokens: Mapping[str, int | None] | None = None

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
        elif self.stream:
            self.channel.start(200, stream_headers(ROUTE), chunked=True)
            self._parser = EventParser(chunked=chunked)
            self.translator = self.translation.stream_translator(
                self.model,
                created=self.created,
                include_usage=self.include_usage,
                fallback_id=self.fallback_id,
            )
            self._mode = _STREAM
            self.channel.set_flow_target(self)
            self.ready.set_result(None)
            return
        else:
            self._mode = _BODY
        if chunked:
            self._dechunker = Dechunker()

    def on_data(self, data: bytes) -> None:
        mode = self._mode
        if mode == _STREAM:
            parser = self._parser
            try:
                events = parser.feed(data)
            except SSEError as exc:
                self.on_error(broken_stream(exc))
                return
            translator = self.translator
            if events:
                out = translator.feed(events)
                if out:
                    self.channel.write(out)
            if translator.done:
                self._end_stream()
            elif parser.complete:
                self._finish_stream()
            return
        if mode == _DRAIN:
            try:
                self._parser.feed(data)
            except SSEError:
                self._mode = _DONE
                self._close_upstream()
                return
            if self._parser.complete:
                self._mode = _DONE
                self._release()
            return
        if mode not in (_BODY, _ERROR):
            return
        dechunker = self._dechunker
        if dechunker is None:
            self._kept.append(data)
            return
        try:
            self._kept.append(dechunker.feed(data))
        except GatewayError as exc:
            self.on_error(exc)
            return
        if dechunker.complete:
            self.on_eof()

    def on_eof(self) -> None:
        mode = self._mode
        if mode == _STREAM:
            self._finish_stream()
        elif mode == _DRAIN:
            self._mode = _DONE
            self._release()
        elif mode == _BODY:
            self._mode = _DONE
            self._release()
            try:
                body, self._tokens = self.translation.translate_response(
                    b"".join(self._kept),
                    self.model,
                    created=self.created,
                    fallback_id=self.fallback_id,
                )
            except GatewayError as exc:
                self.record.error = exc.message
                self._write_record()
                self.ready.set_exception(exc)
                return
            channel = self.channel
            channel.start(
                200,
                [("content-type", "application/json"), ("x-gwcore-route", ROUTE)],
                content_length=len(body),
            )
            channel.write(body)
            channel.end()
            self._write_record()
            if not self.ready.done():
                self.ready.set_result(None)
        elif mode == _ERROR:
            self._mode = _DONE
            self._release()
            err = self.translation.upstream_error(self.record.status, b"".join(self._kept))
            self.record.error = err.message
            self._write_record()
            if not self.ready.done():
                self.ready.set_exception(err)

    def on_error(self, exc: GatewayError) -> None:
        """The upstream failed after its head: a terminal error event, never a silent cut."""
        mode = self._mode
        if mode in (_DONE, _DRAIN):
            self._mode = _DONE
            self._close_upstream()
            return
        self._mode = _DONE
        self._close_upstream()
        rec = self.record
        rec.error = exc.message
        rec.aborted = True
        if mode == _STREAM:
            # The client has whole events only (each piece's translation is written whole), so
            # there is always a clean place for the error event.
            tail = self.translator.fail(exc)
            if tail:
                self.channel.write(tail)
            self.channel.end()
        self._write_record()
        if not self.ready.done():
            self.ready.set_exception(exc)

    # ---- client side

    def client_gone(self) -> None:
        """The client went away: close the upstream connection at once, record what was seen."""
        if self._mode in (_DONE, _DRAIN):
            return
        self._mode = _DONE
        self._client_left()
        self._write_record()

    # ---- endings

    def _finish_stream(self) -> None:
        """The upstream body ended: whatever the parser still holds, then the translator's end."""
        translator = self.translator
        if not translator.done:
            try:
                tail = translator.feed(self._parser.close())
            except SSEError as exc:
                tail = translator.fail(broken_stream(exc))
            tail += translator.close()
            if tail:
                self.channel.write(tail)
        self._end_stream(body_ended=True)

    def _end_stream(self, body_ended: bool = False) -> None:
        """The translated stream is complete (or failed): end the client's response now."""
        translator = self.translator
        if translator.error is not None:
            self.record.error = translator.error.message
            self.record.aborted = True
        if body_ended or self._parser.complete:
            self._mode = _DONE
            self._release()
        elif translator.error is not None:  # failed mid-body: the connection is not reusable
            self._mode = _DONE
            self._close_upstream()
        else:  # the answer is complete; read the upstream's last bytes, then pool the connection
            self._mode = _DRAIN
        self.channel.end()
        self._write_record()

    def _write_record(self) -> None:
        if self._recorded:
            return
        tokens = self._tokens
        if tokens is None and self.translator is not None:
            tokens = self.translator.tokens()
        self._record_once(tokens)


async def translated_completion(
    pool: Any,
    sink: UsageSink,
    request: Any,
    channel: Any,
    body: dict,
    provider: Any,
    model: str,
    upstream_model: str,
    stream: bool,
    started: float,
) -> None:
    """``/v1/chat/completions`` for a provider reached through translation."""
    translation = dialect(provider.dialect)
    if translation is None:
        raise GatewayError(
            501,
            f"provider {provider.name!r} speaks {provider.dialect}, which gwcore cannot translate",
            type="invalid_request_error",
            code="dialect_not_supported",
        )
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise GatewayError(400, "stream_options must be an object", param="stream_options")
        include_usage = stream and options.get("include_usage") is True
    payload = translation.build_request(body, upstream_model, stream)

    record = UsageRecord(
        request_id=request.request_id,
        provider=provider.name,
        requested_model=model,
        upstream_model=upstream_model,
        route=ROUTE,
        stream=stream,
        key_id=getattr(request, "key_id", None),
    )
    forwarded = [
        (name, value)
        for name, value in request.headers.items()
        if name in translation.forward_headers
    ]
    headers = provider.request_headers(forwarded)
    headers += [
        ("content-type", "application/json"),
        ("accept", "text/event-stream" if stream else "application/json"),
        ("accept-encoding", "identity"),
        ("x-request-id", request.request_id),
    ]
    resp = TranslatedResponse(
        channel,
        record,
        sink,
        translation,
        model=model,
        stream=stream,
        include_usage=include_usage,
        started_at=started,
        fallback_id="chatcmpl-" + request.request_id,
    )
    await resp.exchange_with(
        pool,
        provider.origin,
        provider.path(translation.endpoint(upstream_model, stream)),
        headers,
        payload,
    )
