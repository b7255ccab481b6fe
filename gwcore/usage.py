# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""The usage record of one request, the mappings from each dialect's usage object to it, and sinks.

It owns the meaning of the token fields (OpenAI semantics: ``prompt_tokens`` includes cached
tokens, ``completion_tokens`` includes reasoning tokens; ``None`` means "not reported", never 0) and
the sink interface the ledger stores implement. It never does I/O itself beyond a log line
(``LogSink``), never blocks the event loop, and is called once per request, never per chunk.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping
from time import time as _now
from typing import Any, Protocol, runtime_checkable

import orjson

__all__ = [
    "FanoutSink",
    "LogSink",
    "MemorySink",
    "PricedFanout",
    "Pricer",
    "SinkBase",
    "UsageRecord",
    "UsageSink",
    "new_record",
    "usage_from_anthropic",
    "usage_from_gemini",
    "usage_from_openai",
    "usage_from_responses",
]

TOKEN_FIELDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)

log = logging.getLogger("gwcore.usage")


# The fields of a usage record, in order.
FIELDS: tuple[str, ...] = (
    "request_id",
    "provider",
    "requested_model",
    "upstream_model",
    "route",  # "relay" | "translated" | "demo"
    "stream",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "ttfb_ms",
    "duration_ms",
    "created_at",
    "error",
    "aborted",
    "key_id",  # the API key that authenticated the request ("master", a key id)
    "cost",  # USD from the pricing table; None when a price or usage is unknown
)


class UsageRecord:
    """What the gateway remembers about one request.

    An extension type in the compiled module (``usage.pxd``: its fields are C slots, read and
    written as struct members by the compiled modules that cimport it); a plain class with
    ``__slots__`` in the twin. Equality, ``repr`` and ``to_dict`` go by ``FIELDS``."""

    __slots__ = FIELDS

    # Fields in ``__slots__`` order; created_at=None means now.
    def __init__(
        self,
        request_id: str,
        provider: str,
        requested_model: str,
        upstream_model: str,
        route: str,
        stream: bool,
        status: int = 0,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        total_tokens: int | None = None,
        cached_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        ttfb_ms: float | None = None,
        duration_ms: float | None = None,
        created_at: float | None = None,
        error: str | None = None,
        aborted: bool = False,
        key_id: str | None = None,
        cost: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.provider = provider
        self.requested_model = requested_model
        self.upstream_model = upstream_model
        self.route = route
        self.stream = stream
        self.status = status
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.total_tokens = total_tokens
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.ttfb_ms = ttfb_ms
        self.duration_ms = duration_ms
        self.created_at = _now() if created_at is None else created_at
        self.error = error
        self.aborted = aborted
        self.key_id = key_id
        self.cost = cost

    def set_tokens(self, tokens: Mapping[str, int | None]) -> None:
        """Take the token fields of a ``usage_from_*`` result (others are ignored)."""
        # Written out (TOKEN_FIELDS, one by one): a setattr by name per field costs a lookup.
        if "prompt_tokens" in tokens:
            self.prompt_tokens = tokens["prompt_tokens"]
        if "completion_tokens" in tokens:
            self.completion_tokens = tokens["completion_tokens"]
        if "total_tokens" in tokens:
            self.total_tokens = tokens["total_tokens"]
        if "cached_tokens" in tokens:
            self.cached_tokens = tokens["cached_tokens"]
        if "reasoning_tokens" in tokens:
            self.reasoning_tokens = tokens["reasoning_tokens"]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UsageRecord):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in FIELDS)

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"UsageRecord({inner})"


def new_record(
    request_id: str,
    provider: str,
    requested_model: str,
    upstream_model: str,
    route: str,
    stream: bool,
    key_id: str | None,
) -> UsageRecord:
    """``UsageRecord(request_id, ..., stream, key_id=key_id)``, the other fields at their
    defaults, made without a keyword call (compiled: a C call that fills the struct)."""
    rec = UsageRecord.__new__(UsageRecord)
    rec.request_id = request_id
    rec.provider = provider
    rec.requested_model = requested_model
    rec.upstream_model = upstream_model
    rec.route = route
    rec.stream = stream
    rec.status = 0
    rec.prompt_tokens = None
    rec.completion_tokens = None
    rec.total_tokens = None
    rec.cached_tokens = None
    rec.reasoning_tokens = None
    rec.ttfb_ms = None
    rec.duration_ms = None
    rec.created_at = _now()
    rec.error = None
    rec.aborted = False
    rec.key_id = key_id
    rec.cost = None
    return rec


# A token count is a whole number from 0 to 18 digits (the compiled usage reader's own bound):
# anything else (negative, larger, a fraction, a bool) is not a count but a broken upstream's
# answer, kept out of records so that no store, price or metric has to take it (a 64-bit column
# refuses a 20-digit number, and the ledger would retry that batch for ever).
MAX_COUNT = 10**18


def _int(value: Any) -> int | None:
    if type(value) is int:  # the common case, first (type(): no attribute lookup when compiled)
        return value if 0 <= value < MAX_COUNT else None
    # bool is an int subclass; a provider sending true/false is not a count
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value) if 0 <= value < MAX_COUNT else None
    if isinstance(value, float) and value.is_integer() and 0 <= value < MAX_COUNT:
        return int(value)
    return None


def _get(obj: Any, key: str) -> Any:
    if type(obj) is dict:  # what orjson gives: skip the slow ABC check
        d = obj  # typed dict in the compiled module (usage.pxd): a C-level lookup
        return d.get(key)
    if obj is None:  # an absent details object: skip it too
        return None
    return obj.get(key) if isinstance(obj, Mapping) else None


def _tokens(
    prompt: int | None,
    completion: int | None,
    total: int | None,
    cached: int | None,
    reasoning: int | None,
) -> dict[str, int | None]:
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
    }


def usage_from_openai(usage: Mapping[str, Any] | None) -> dict[str, int | None]:
    """OpenAI chat ``usage`` (also Groq, xAI, OpenRouter, Azure, vLLM, Ollama) -> token fields."""
    return _tokens(
        _int(_get(usage, "prompt_tokens")),
        _int(_get(usage, "completion_tokens")),
        _int(_get(usage, "total_tokens")),
        _int(_get(_get(usage, "prompt_tokens_details"), "cached_tokens")),
        _int(_get(_get(usage, "completion_tokens_details"), "reasoning_tokens")),
    )


def usage_from_responses(usage: Mapping[str, Any] | None) -> dict[str, int | None]:
    """OpenAI Responses API ``usage`` (input/output tokens) -> token fields."""
    return _tokens(
        _int(_get(usage, "input_tokens")),
        _int(_get(usage, "output_tokens")),
        _int(_get(usage, "total_tokens")),
        _int(_get(_get(usage, "input_tokens_details"), "cached_tokens")),
        _int(_get(_get(usage, "output_tokens_details"), "reasoning_tokens")),
    )


def _anthropic_usage(obj: Any) -> Any:
    """Accept a usage dict, a message (``{"usage": ...}``) or a ``message_start`` event."""
    if not isinstance(obj, Mapping):
        return None
    if "message" in obj and isinstance(obj["message"], Mapping):
        obj = obj["message"]
    if "usage" in obj and isinstance(obj["usage"], Mapping):
        return obj["usage"]
    return obj


def usage_from_anthropic(
    start: Mapping[str, Any] | None, delta: Mapping[str, Any] | None = None
) -> dict[str, int | None]:
    """Anthropic usage -> token fields. ``start``: ``message_start``'s usage (or a whole
    non-streaming message); ``delta``: the last ``message_delta``'s usage. The delta's counts are
    cumulative and replace the start's (never summed). ``prompt_tokens`` adds cache reads and cache
    writes to ``input_tokens`` (which excludes them), so it means what OpenAI's does;
    ``cached_tokens`` is the cache reads."""
    s = _anthropic_usage(start)
    d = _anthropic_usage(delta)

    def pick(key: str) -> int | None:
        value = _int(_get(d, key))
        return value if value is not None else _int(_get(s, key))

    uncached = pick("input_tokens")
    cache_read = pick("cache_read_input_tokens")
    cache_write = pick("cache_creation_input_tokens")
    output = pick("output_tokens")
    prompt = None
    if uncached is not None or cache_read is not None or cache_write is not None:
        prompt = (uncached or 0) + (cache_read or 0) + (cache_write or 0)
    return _tokens(prompt, output, None, cache_read, None)


def usage_from_gemini(usage_metadata: Mapping[str, Any] | None) -> dict[str, int | None]:
    """Gemini ``usageMetadata`` -> token fields. Thinking tokens (``thoughtsTokenCount``) are not in
    ``candidatesTokenCount``; they are added to ``completion_tokens`` and reported as reasoning."""
    m = usage_metadata
    prompt = _int(_get(m, "promptTokenCount"))
    tool_prompt = _int(_get(m, "toolUsePromptTokenCount"))
    if tool_prompt is not None:
        prompt = (prompt or 0) + tool_prompt
    candidates = _int(_get(m, "candidatesTokenCount"))
    thoughts = _int(_get(m, "thoughtsTokenCount"))
    completion = None
    if candidates is not None or thoughts is not None:
        completion = (candidates or 0) + (thoughts or 0)
    return _tokens(
        prompt,
        completion,
        _int(_get(m, "totalTokenCount")),
        _int(_get(m, "cachedContentTokenCount")),
        thoughts,
    )


# ------------------------------------------------------------------------------------------ sinks


@runtime_checkable
class UsageSink(Protocol):
    """Where records go. ``record`` must return at once (queue, don't wait on I/O)."""

    def record(self, rec: UsageRecord) -> None: ...


class SinkBase:
    """A base for sinks of this package (``MemorySink``, ``FanoutSink``, ``GatewayMetrics``):
    compiled, a fanout calls their ``record`` as a C method (an override in a Python subclass
    still wins), any other sink by its Python method."""

    __slots__ = ()

    def record(self, rec: UsageRecord) -> None:
        raise NotImplementedError


class Pricer:
    """A base for what prices records for a ``PricedFanout`` (``gwcore.pricing.PriceTable``):
    compiled, the fanout calls its ``cost`` as a C method; any other pricing object (with a
    ``cost(rec, kind)``) by its Python method."""

    __slots__ = ()

    def cost(self, rec: UsageRecord, kind: str | None = None) -> float | None:
        raise NotImplementedError


class MemorySink(SinkBase):
    """The last ``maxlen`` records in memory (tests, the admin view)."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._records: deque[UsageRecord] = deque(maxlen=maxlen)
        self._append = self._records.append  # bound once: not looked up by name per record

    def record(self, rec: UsageRecord) -> None:
        self._append(rec)

    @property
    def records(self) -> list[UsageRecord]:
        return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def clear(self) -> None:
        self._records.clear()


class LogSink:
    """One JSON line per record on the ``gwcore.usage`` logger (or the one given)."""

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self.logger = logger or log
        self.level = level

    def record(self, rec: UsageRecord) -> None:
        if self.logger.isEnabledFor(self.level):
            fields = rec.to_dict()
            self.logger.log(self.level, orjson.dumps(fields).decode())


class FanoutSink(SinkBase):
    """Every record to every sink; one failing sink is logged and does not stop the others."""

    def __init__(self, sinks: Iterable[UsageSink]) -> None:
        self.sinks = list(sinks)

    def record(self, rec: UsageRecord) -> None:
        for sink in self.sinks:
            try:
                if isinstance(sink, SinkBase):
                    base = sink  # compiled: typed, its record a C call
                    base.record(rec)
                else:
                    sink.record(rec)
            except Exception:
                log.exception("usage sink %r failed", sink)


class PricedFanout(FanoutSink):
    """A ``FanoutSink`` that prices each record first (``pricing.cost(rec, kind)``, unless it has a
    cost); a failing price is logged and stops nothing. The gateway's pipeline
    (``gwcore.ledger.UsagePipeline``) is one: it lives here to be compiled with the record."""

    def __init__(
        self, pricing: Any, sinks: Iterable[UsageSink], kinds: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(sinks)
        self.pricing = pricing
        self.kinds = dict(kinds or {})  # provider name -> provider kind, for the price lookup

    def record(self, rec: UsageRecord) -> None:
        if type(rec) is UsageRecord:
            r = rec  # compiled: typed, its fields read and written as struct members
            if r.cost is None:
                try:
                    pricing = self.pricing
                    if isinstance(pricing, Pricer):
                        pricer = pricing  # compiled: typed, its cost a C call
                        r.cost = pricer.cost(r, self.kinds.get(r.provider))
                    else:
                        r.cost = pricing.cost(r, self.kinds.get(r.provider))
                except Exception:
                    log.exception("pricing failed for %s", r.upstream_model)
        elif rec.cost is None:  # any other object with the record's fields
            try:
                rec.cost = self.pricing.cost(rec, self.kinds.get(rec.provider))
            except Exception:
                log.exception("pricing failed for %s", rec.upstream_model)
        FanoutSink.record(self, rec)
