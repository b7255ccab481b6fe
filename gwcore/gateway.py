# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""The gateway's API handlers: ``/v1/chat/completions`` and ``/v1/models``, and what they share.

It owns one request's decisions: validate the body, resolve the model to a provider, rewrite the
request only when something must change (model name, ``stream_options.include_usage``), then relay
the response (``gwcore.relay``), translate it (``gwcore.translated``: Anthropic, Gemini) or answer
from the built-in demo model. It also owns the shared state of a worker: the provider registry, the
upstream pool and the usage sink.

It never imports the server: handlers take the front door's request and channel by duck typing.
It never forwards a client's credentials, and never asks an upstream for a compressed response.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from time import perf_counter
from typing import Any

import orjson

from gwcore.config import GatewayConfig, load_config
from gwcore.demo import demo_completion, demo_stream_events, demo_usage
from gwcore.errors import GatewayError
from gwcore.ledger import UsagePipeline
from gwcore.providers import CREDENTIAL_HEADERS, ProviderRegistry
from gwcore.relay import new_relay, stream_headers
from gwcore.sse import IMPLEMENTATION, chat_request_fields, with_member
from gwcore.translated import translated_completion
from gwcore.upstream import HOP_BY_HOP, UpstreamPool, header_block
from gwcore.usage import MemorySink, UsageRecord, UsageSink, new_record, usage_from_openai

__all__ = ["Gateway"]

log = logging.getLogger("gwcore.gateway")

# Client headers never forwarded upstream: framing, credentials, and what the gateway sets itself.
# (Hop-by-hop headers and the provider's own go too: see ``_forwarded``.)
_NOT_FORWARDED = CREDENTIAL_HEADERS | {
    "host",
    "content-length",
    "accept-encoding",
    "content-type",
    "accept",
    "cookie",
    "expect",
}


class Gateway:
    """One worker's gateway: configuration, providers, upstream pool, usage sink, handlers."""

    def __init__(
        self,
        config: GatewayConfig | None = None,
        *,
        sink: UsageSink | None = None,
        refresh_models: bool = True,
    ) -> None:
        self.config = config if config is not None else load_config(None, os.environ)
        self.registry: ProviderRegistry = self.config.build_registry()
        self.pool: UpstreamPool = self.config.build_pool()
        self.memory = MemorySink()
        # Priced records to memory, log, metrics and the ledger (configured from YAML + env).
        self.usage = (
            None
            if sink is not None
            else UsagePipeline.from_config(self.config, self.registry, self.memory)
        )
        self.sink: UsageSink = sink if sink is not None else self.usage
        self.refresh_models = refresh_models
        # provider -> what a chat completion needs of it, read once (``_Plan``); bounded
        self._plans: dict[Any, _Plan] = {}

    @classmethod
    def from_file(cls, path: str | None, environ: Mapping[str, str] | None = None) -> Gateway:
        return cls(load_config(path, os.environ if environ is None else environ))

    # ---- lifecycle (App hooks)

    async def startup(self) -> None:
        if self.registry.demo_only:
            log.warning(
                "NO PROVIDER IS CONFIGURED: serving the built-in demo model only. Set "
                "OPENAI_API_KEY (or another provider key, or --config) to route to real models."
            )
        else:
            names = ", ".join(f"{p.name} ({p.kind})" for p in self.registry)
            log.info("providers: %s", names)
            if self.refresh_models:
                await self.registry.refresh_models(self.pool)
                self.registry.start_refresher(self.pool)

    async def shutdown(self) -> None:
        await self.registry.stop_refresher()
        await self.pool.aclose()

    # ---- handlers

    def models(self, request: Any, channel: Any) -> None:
        """``GET /v1/models``: every provider's models as ``provider/model``; for a key with a
        model allow-list, only the models it may use."""
        data = self.registry.list_models()
        patterns = request.key_models
        if patterns is not None:
            data = [m for m in data if self.registry.allowed(patterns, m["id"])]
        _send_json(channel, orjson.dumps({"object": "list", "data": data}))

    def chat_completions(self, request: Any, channel: Any) -> Any:
        """``POST /v1/chat/completions``. Plain, not ``async``: a relayed request on an idle pooled
        connection goes out before this returns ``DEFERRED`` (no task); every other way returns a
        coroutine for the front door's task."""
        started = perf_counter()
        raw = request.body
        # A plain body's three members read in C with the whole body checked as JSON; orjson
        # builds the document only for the rest, and for what rewrites or translates it.
        fields = chat_request_fields(raw) if _READ_FIELDS else None
        if fields is None:
            body = _chat_body(raw)
            model = body["model"]
            stream = bool(body.get("stream", False))
        else:
            body = None
            model = fields[0]
            stream = fields[1]
        provider, upstream_model, rewritten = self.registry.resolve(model)
        plan = self._plans.get(provider)
        if plan is None:
            plan = self._plan(provider)
        if body is None and (rewritten or not plan.relay):
            body = _chat_body(raw)
        if plan.demo:
            return self._demo(request, channel, body, model, stream, started)
        if not plan.relay:
            return translated_completion(
                self.pool,
                self.sink,
                request,
                channel,
                body,
                provider,
                model,
                upstream_model,
                stream,
                started,
            )

        elide = splice = False
        if body is None:
            if stream and not fields[2]:  # no stream_options: ask for usage, hide the answer
                elide = splice = True
        elif stream:
            options = body.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise GatewayError(400, "stream_options must be an object", param="stream_options")
            if not (options and options.get("include_usage") is True):
                # Ask for usage anyway (the ledger needs it) and hide the answer from the client.
                elide = True
                if "stream_options" in body:  # null, or an object without include_usage
                    body["stream_options"] = {**(options or {}), "include_usage": True}
                else:
                    splice = True
        if rewritten:
            body["model"] = upstream_model
            if splice:
                body["stream_options"] = {"include_usage": True}
            payload = orjson.dumps(body)
        elif splice:  # the common case: the client's bytes and one member more, not re-encoded
            payload = with_member(raw, _INCLUDE_USAGE)
        elif elide:
            payload = orjson.dumps(body)
        else:
            payload = raw

        record = new_record(
            request.request_id,
            plan.name,
            model,
            upstream_model,
            "relay",
            stream,
            request.key_id,
        )
        relay = new_relay(channel, record, self.sink, stream, elide, started)
        try:
            block, headers = _client_head(
                plan.stream_block if stream else plan.plain_block,
                request.headers,
                plan.dropped,
                request.client,
            )
        except GatewayError as exc:  # a header upstream.header_block refuses
            relay.record_failure(exc.status, exc.message)
            raise
        headers.append(("x-request-id", request.request_id))
        return relay.start_exchange(self.pool, plan.origin, plan.path, headers, payload, block)

    def _plan(self, provider: Any) -> _Plan:
        plan = _Plan(provider)  # (a header the provider's block refuses raises, kept nowhere)
        plans = self._plans
        if len(plans) >= _PLANS_KEPT:  # registries replaced at run time leave theirs behind
            plans.clear()
        plans[provider] = plan
        return plan

    async def _demo(
        self, request: Any, channel: Any, body: dict, model: str, stream: bool, started: float
    ) -> Any:
        record = UsageRecord(
            request_id=request.request_id,
            provider="demo",
            requested_model=model,
            upstream_model=model,
            route="demo",
            stream=stream,
            status=200,
            key_id=request.key_id,
        )
        record.set_tokens(usage_from_openai(demo_usage(body)))
        try:
            if not stream:
                _send_json(channel, demo_completion(body, model), [("x-gwcore-route", "demo")])
                return None
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            channel.start(200, stream_headers("demo"), chunked=True)
            for i, event in enumerate(demo_stream_events(body, model, include_usage)):
                if i == 1:
                    record.ttfb_ms = (perf_counter() - started) * 1000.0
                channel.write(event)
                await channel.drain()
                await asyncio.sleep(0)  # one event per loop turn: a stream, not a blob
            channel.end()
        except BaseException:
            record.aborted = True
            record.error = "client disconnected"
            raise
        finally:
            record.duration_ms = (perf_counter() - started) * 1000.0
            self.sink.record(record)
        return None


# (a provider's block, the client's forwarded pairs whose values repeat...) -> the block with
# their checked lines after it; bounded
_CLIENT_LINES: dict[tuple, str] = {}
# Forwarded header names seen with more than _VALUES_KEPT values (trace ids, request ids): never
# part of a _CLIENT_LINES key (nearly every request would be a new key); bounded. A name whose
# value differs per client (user-agent, an SDK's version) has a few values: it stays in the key,
# and each client's combination is an entry.
_VOLATILE: set[str] = set()
_VALUES_KEPT = 32
_SEEN_VALUES: dict[str, set[str]] = {}  # forwarded name -> the values seen (on misses); bounded


# Per client connection (the request's ``client``, the one object the front door hands every
# request of a connection; an equal one of a later connection is not it): the header shape of
# its last request whose forwarded headers all went into a block, (client, dropped, block,
# items, lines): ``items`` the request's headers as the flat [name, value, ...] of the very
# objects the front door handed out (``_ANY_VALUE`` for a value not forwarded: a credential, the
# body's length), ``lines`` the block made. An SDK sends the same header objects request after
# request on its connection (the front door's caches of names and short values): comparing
# them by identity costs a few hundred instructions, where forwarding them anew walks a lookup
# per header and a key of all of them. A connection's first request leaves only a mark (a
# client that sends one request per connection pays a dict insert, not a shape); bounded.
_SHAPE_OF: dict = {}
_SHAPES_KEPT = 8192  # connections (a few hundred bytes each); past that, start over
_ANY_VALUE = object()


def _client_head(
    block: str, headers: Mapping[str, str], dropped: frozenset[str], client: object = None
) -> tuple:
    """(``block`` with the lines of the client's forwarded headers after it, a new list of the
    pairs left for ``build_request``): ``_client_lines(block, _forwarded(headers, dropped))``,
    ``(block, [])`` when nothing is forwarded, and for the very header objects of the last
    request of the same ``client`` connection (``_known_shape``) the block made for it. Raises
    ``GatewayError`` as ``_client_lines``."""
    shapes = _SHAPE_OF
    try:
        shape = shapes.get(client)
    except TypeError:  # (a handler's own client, unhashable: no shape kept)
        client = shape = None
    seen = False
    if shape is not None and shape[0] is client:
        seen = True
        if (
            shape[1] is dropped
            and shape[2] is block
            and type(headers) is dict
            and _same_items(headers, shape[3])
        ):
            return shape[4], []
    forwarded = _forwarded(headers, dropped)
    if forwarded:
        lines, rest = _client_lines(block, forwarded)
    else:
        lines, rest = block, forwarded
    if not rest:  # (pairs left per request, a trace id: nothing a later request could reuse)
        if len(shapes) >= _SHAPES_KEPT:
            shapes.clear()
        items = _shape_items(headers, dropped) if seen else None
        if items is None:
            shapes[client] = (client, None, None, None, None)  # a mark: seen once
        else:
            shapes[client] = (client, dropped, block, items, lines)
    return lines, rest


def _known_shape(
    headers: Mapping[str, str], dropped: frozenset[str], block: str, client: object = None
) -> str | None:
    """The block ``_client_head`` keeps for the last request of ``client`` when this request's
    header objects are that one's, or None (no side effect: for tests)."""
    shape = _SHAPE_OF.get(client)
    if shape is None or shape[0] is not client or shape[1] is not dropped or shape[2] is not block:
        return None
    return shape[4] if type(headers) is dict and _same_items(headers, shape[3]) else None


def _same_items(headers: dict[str, str], items: tuple) -> bool:
    """``headers`` are the very objects of ``items`` (``_shape_items``), in order."""
    if len(items) != 2 * len(headers):
        return False
    k = 0
    for name, value in headers.items():
        if name is not items[k]:
            return False
        want = items[k + 1]
        if want is not _ANY_VALUE and value is not want:
            return False
        k += 2
    return True


def _shape_items(headers: Mapping[str, str], dropped: frozenset[str]) -> tuple | None:
    """The headers as ``_same_items`` compares them: each name, and each value that counts (a
    forwarded one, or the client's ``Connection``, which names what is not forwarded); None when
    they are not a dict or a verdict is missing (the verdicts were cleared meanwhile)."""
    verdicts = _VERDICTS.get(dropped)
    if type(headers) is not dict or verdicts is None:
        return None
    items = []
    for name, value in headers.items():
        low = verdicts.get(name)
        if low is None:
            return None
        items.append(name)
        if low or (len(name) == 10 and name.lower() == "connection"):
            items.append(value)
        else:
            items.append(_ANY_VALUE)
    return tuple(items)


def _client_lines(block: str, forwarded: list) -> tuple:
    """(``block`` with the checked lines of the client's forwarded headers after it, the pairs
    left for ``build_request``), of ``_forwarded``'s flat list: a client sends the same headers
    request after request (an SDK's name, version, platform...), so their lines are checked and
    rendered once per combination, not once per request (the key: the block and the flat list,
    whose strings the front door hands out the same, hashes made, request after request). A name
    seen with many values (``_VOLATILE``: a trace id, a new value nearly every request) stays
    out: its pairs are returned, in order, for ``build_request`` to check. Raises
    ``GatewayError`` for a header ``header_block`` refuses (as ``build_request`` would)."""
    volatile = _VOLATILE
    rest = []
    stable = forwarded
    if volatile:
        stable = []
        for k in range(0, len(forwarded), 2):
            name = forwarded[k]
            if name in volatile:
                rest.append((name, forwarded[k + 1]))
            else:
                stable.append(name)
                stable.append(forwarded[k + 1])
        if not stable:
            return block, rest
    key = (block, *stable)
    cache = _CLIENT_LINES
    known = cache.get(key)
    if known is None:
        seen = _SEEN_VALUES
        changed = False
        pairs = []
        for k in range(0, len(stable), 2):
            name = stable[k]
            value = stable[k + 1]
            pairs.append((name, value))
            values = seen.get(name)
            if values is None:
                if len(seen) >= 1024:  # names come from clients: start over
                    seen.clear()
                values = seen[name] = set()
            if len(values) <= _VALUES_KEPT and value not in values:  # (kept: at most one more)
                values.add(value)
                if len(values) > _VALUES_KEPT and len(volatile) < 256:
                    volatile.add(name)
                    changed = True
        if changed:  # again, without the names just found volatile
            return _client_lines(block, forwarded)
        known = block + header_block(pairs)
        if len(cache) >= 1024:  # combinations come from clients: start over
            cache.clear()
        cache[key] = known
    return known, rest


_PLANS_KEPT = 256


class _Plan:
    """What a chat completion needs of its provider, read once per provider object (its
    attributes are a dataclass's: a lookup each, seven per request): its name, whether the relay
    serves it (OpenAI chat, not the demo), and for the relay its origin, its chat completions
    path, the client header names not forwarded to it, and the header lines every relayed
    request to it carries (rendered and checked once by ``upstream.header_block``), streamed and
    not."""

    __slots__ = (
        "demo",
        "dropped",
        "name",
        "origin",
        "path",
        "plain_block",
        "relay",
        "stream_block",
    )

    def __init__(self, provider: Any) -> None:
        self.name = provider.name
        self.demo = provider.kind == "demo"
        self.relay = not self.demo and provider.dialect == "openai_chat"
        self.origin = provider.origin
        if self.relay:
            self.path = provider.path("/chat/completions")
            self.dropped = _NOT_FORWARDED | HOP_BY_HOP | provider.withheld
            self.stream_block = _relay_block(provider, True)
            self.plain_block = _relay_block(provider, False)
        else:
            self.path = self.stream_block = self.plain_block = ""
            self.dropped = frozenset()


def _relay_block(provider: Any, stream: bool) -> str:
    """The headers of every relayed request to ``provider``: its own (credentials, extras), then
    what the gateway asks for (JSON in, an event stream or JSON out, no compression)."""
    return header_block(
        [
            *provider.headers(),
            ("content-type", "application/json"),
            ("accept", "text/event-stream" if stream else "application/json"),
            ("accept-encoding", "identity"),
        ]
    )


def _send_json(channel: Any, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
    channel.start(
        200, [("content-type", "application/json"), *(headers or ())], content_length=len(body)
    )
    channel.write_raw(body)
    channel.end()


# chat_request_fields only where it is compiled: the twin (its spec) walks the bytes in Python,
# about ten times orjson's time (bench/bench_chat_fields.py).
_READ_FIELDS = IMPLEMENTATION == "cython"
_INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


def _chat_body(raw: bytes) -> dict:
    """The chat request body, read with orjson and checked: the errors a client gets."""
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(
            400, "you must provide a model parameter", code="missing_model", param="model"
        )
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise GatewayError(
            400, "messages must be a non-empty array", code="invalid_messages", param="messages"
        )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise GatewayError(400, "stream must be a boolean", param="stream")
    return body


def _json_object(raw: bytes) -> dict:
    if not raw:
        raise GatewayError(400, "the request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the request body must be a JSON object")
    return body


# Per set of dropped names: a client's header name (exact str) -> the lowercase name it is forwarded
# under, or "" when it is not forwarded. Names repeat, and the front door's are the same objects
# each time (their hashes made once): one lookup where lowering, hashing and two tests were.
# Bounded.
_VERDICTS: dict = {}


def _forwarded(headers: Mapping[str, str], dropped: frozenset[str]) -> list[str]:
    """The client's end-to-end headers, in one pass, as one flat list ``[name, value, name,
    value...]`` (names lowercase): none named in ``dropped`` (what the gateway sets itself,
    credentials, the fixed hop-by-hop set, the provider's own headers), no ``Proxy-*``, and none
    the client's ``Connection`` names (the upstream request never carries that ``Connection``
    header, so it is resolved here). Flat: ``_client_lines`` makes its key of it as it is."""
    sets = _VERDICTS
    verdicts = sets.get(dropped)
    if verdicts is None:
        if len(sets) >= 64:
            sets.clear()
        verdicts = sets[dropped] = {}
    out = []
    nominated = None
    # a dict, as the front door makes them: walked in C in the compiled build (typed in the .pxd)
    items = headers if type(headers) is dict else dict(headers)
    for name, value in items.items():
        low = verdicts.get(name)
        if low is None:
            low = name.lower()  # the front door's names are lowercase already; a handler's may not
            if low in dropped or low.startswith("proxy-"):
                low = ""
            if len(verdicts) >= 1024:  # names come from clients: start over
                verdicts.clear()
            verdicts[name] = low
        if not low:
            if len(name) == 10 and name.lower() == "connection":
                nominated = {token.strip().lower() for token in value.split(",")}
            continue
        out.append(low)
        out.append(value)
    if nominated:
        kept = []
        for k in range(0, len(out), 2):
            if out[k] not in nominated:
                kept.append(out[k])
                kept.append(out[k + 1])
        out = kept
    return out
