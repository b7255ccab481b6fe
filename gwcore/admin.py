"""The admin API (master key only): usage from the ledger, and managed API keys.

It owns the admin routes, their query parameters and their JSON answers::

    GET    /admin/api/v1/usage/summary     totals
    GET    /admin/api/v1/usage/daily       totals per UTC day
    GET    /admin/api/v1/usage/models      totals per provider and upstream model
    GET    /admin/api/v1/usage/log         the records, newest first, paginated (cursor)
    POST   /admin/api/v1/keys              create a key (its secret is in this answer only)
    GET    /admin/api/v1/keys              list the keys (never their secrets)
    DELETE /admin/api/v1/keys?id=KEY_ID    revoke a key (the router matches exact paths only)

Usage filters (all optional): ``since``/``until`` (epoch seconds or ISO 8601; a date or a time
without a zone is UTC; ``until`` is exclusive), ``provider``, ``model`` (requested or upstream
name), ``key_id``; ``/usage/log`` also takes ``limit`` (1-1000, default 100) and ``cursor`` (the
``next_cursor`` of the previous page). Answers come from the ledger: what is still queued in a
worker's memory (at most ``flush_interval`` old) is not in them yet.

It never shows a key's hash, and a key's secret only once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import parse_qs

import orjson

from gwcore.auth import KeyAuth
from gwcore.errors import GatewayError
from gwcore.ledger.store import LedgerStore, UsageFilter, decode_cursor

__all__ = ["PREFIX", "AdminAPI"]

PREFIX = "/admin/api/v1"
_MAX_LIMIT = 1000


def _bad(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, message, code="invalid_parameter", param=param)


def parse_time(value: str, param: str) -> float:
    """Epoch seconds, or an ISO 8601 date / date-time (no zone: UTC) -> epoch seconds."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise _bad(f"{param} must be a finite number of seconds", param)
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            dt = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
        else:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
    except ValueError:
        raise _bad(
            f"{param} must be epoch seconds or an ISO 8601 date/time, not {value!r}", param
        ) from None
    return dt.timestamp()


class AdminAPI:
    """The admin handlers over one ledger store and the worker's ``KeyAuth``."""

    def __init__(
        self,
        store: LedgerStore | None,
        auth: KeyAuth,
        *,
        pricing_as_of: str | None = None,
        flush: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.pricing_as_of = pricing_as_of
        self.flush = flush  # writes this worker's queued records first (fresher answers)

    def routes(self) -> list[tuple[str, str, Any]]:
        """(method, path, handler) for the front door's route table."""
        return [
            ("GET", f"{PREFIX}/usage/summary", _handler(self.usage_summary)),
            ("GET", f"{PREFIX}/usage/daily", _handler(self.usage_daily)),
            ("GET", f"{PREFIX}/usage/models", _handler(self.usage_models)),
            ("GET", f"{PREFIX}/usage/log", _handler(self.usage_log)),
            ("POST", f"{PREFIX}/keys", _handler(self.create_key)),
            ("GET", f"{PREFIX}/keys", _handler(self.list_keys)),
            ("DELETE", f"{PREFIX}/keys", _handler(self.revoke_key)),
        ]

    # ---- helpers

    def _store(self) -> LedgerStore:
        if self.store is None:
            raise GatewayError(
                503,
                "The usage ledger is off (GWCORE_LEDGER=off): nothing to answer from.",
                type="server_error",
                code="ledger_off",
            )
        return self.store

    async def _begin(self, request: Any) -> tuple[LedgerStore, dict[str, list[str]]]:
        self.auth.require_master(request.headers)
        store = self._store()
        if self.flush is not None:  # this worker's queue first (bounded: the database may be away)
            await self.flush(1.0)
        return store, parse_qs(request.query, keep_blank_values=True)

    @staticmethod
    def _one(query: dict[str, list[str]], name: str) -> str | None:
        values = query.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise _bad(f"{name} given more than once", name)
        return values[0]

    def _filter(self, query: dict[str, list[str]]) -> UsageFilter:
        f = UsageFilter()
        since = self._one(query, "since")
        until = self._one(query, "until")
        f.since = parse_time(since, "since") if since else None
        f.until = parse_time(until, "until") if until else None
        f.provider = self._one(query, "provider") or None
        f.model = self._one(query, "model") or None
        f.key_id = self._one(query, "key_id") or self._one(query, "key") or None
        return f

    @staticmethod
    def _echo(f: UsageFilter) -> dict[str, Any]:
        return {
            "since": f.since,
            "until": f.until,
            "provider": f.provider,
            "model": f.model,
            "key_id": f.key_id,
        }

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except GatewayError:
            raise
        except Exception as exc:
            raise GatewayError(
                503,
                f"The usage ledger cannot answer right now ({type(exc).__name__}).",
                type="server_error",
                code="ledger_unavailable",
            ) from None

    # ---- usage

    async def usage_summary(self, request: Any) -> _Json:
        store, query = await self._begin(request)
        f = self._filter(query)
        totals = await self._call(store.summary(f))
        return _json(
            {
                "object": "usage.summary",
                "filters": self._echo(f),
                **totals,
                "pricing_as_of": self.pricing_as_of,
            }
        )

    async def usage_daily(self, request: Any) -> _Json:
        store, query = await self._begin(request)
        f = self._filter(query)
        days = await self._call(store.daily(f))
        return _json({"object": "list", "filters": self._echo(f), "data": days})

    async def usage_models(self, request: Any) -> _Json:
        store, query = await self._begin(request)
        f = self._filter(query)
        models = await self._call(store.models(f))
        return _json({"object": "list", "filters": self._echo(f), "data": models})

    async def usage_log(self, request: Any) -> _Json:
        store, query = await self._begin(request)
        f = self._filter(query)
        raw_limit = self._one(query, "limit")
        try:
            limit = int(raw_limit) if raw_limit else 100
        except ValueError:
            raise _bad("limit must be an integer", "limit") from None
        if not 1 <= limit <= _MAX_LIMIT:
            raise _bad(f"limit must be between 1 and {_MAX_LIMIT}", "limit")
        raw_cursor = self._one(query, "cursor")
        try:
            cursor = decode_cursor(raw_cursor) if raw_cursor else None
        except ValueError:
            raise _bad("invalid cursor", "cursor") from None
        entries, next_cursor = await self._call(store.log(f, limit, cursor))
        return _json(
            {
                "object": "list",
                "filters": self._echo(f),
                "data": entries,
                "has_more": next_cursor is not None,
                "next_cursor": next_cursor,
            }
        )

    # ---- keys

    async def create_key(self, request: Any) -> _Json:
        self.auth.require_master(request.headers)
        self._store()
        try:
            body = orjson.loads(request.body) if request.body else {}
        except orjson.JSONDecodeError as exc:
            raise _bad(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _bad("the request body must be a JSON object")
        unknown = sorted(set(body) - {"name", "models", "expires_at", "expires_in"})
        if unknown:
            raise _bad(f"unknown field {unknown[0]!r}", unknown[0])
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise _bad("name must be a string (at most 200 characters)", "name")
        models = body.get("models")
        if models is not None and (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m for m in models)
        ):
            raise _bad("models must be a non-empty list of model names (or null: any)", "models")
        expires_at = None
        if body.get("expires_at") is not None and body.get("expires_in") is not None:
            raise _bad("give expires_at or expires_in, not both", "expires_in")
        if body.get("expires_at") is not None:
            value = body["expires_at"]
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise _bad("expires_at must be epoch seconds or an ISO 8601 time", "expires_at")
            expires_at = parse_time(str(value), "expires_at")
        elif body.get("expires_in") is not None:
            value = body["expires_in"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise _bad("expires_in must be a positive number of seconds", "expires_in")
            expires_at = time.time() + float(value)
        key, secret = await self._call(self.auth.create_key(name, models, expires_at))
        return _json({**key.public(), "key": secret}, status=201)

    async def list_keys(self, request: Any) -> _Json:
        self.auth.require_master(request.headers)
        store = self._store()
        keys = await self._call(store.keys())
        now = time.time()
        data = [k.public(now) for k in sorted(keys, key=lambda k: (k.created_at, k.id))]
        return _json({"object": "list", "data": data})

    async def revoke_key(self, request: Any) -> _Json:
        self.auth.require_master(request.headers)
        self._store()
        key_id = self._one(parse_qs(request.query, keep_blank_values=True), "id")
        if not key_id:
            raise _bad("give the key to revoke as ?id=KEY_ID", "id")
        key = await self._call(self.auth.revoke_key(key_id))
        if key is None:
            raise GatewayError(404, f"no API key with id {key_id!r}", code="key_not_found")
        return _json(key.public())


def _handler(answer: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    async def handle(request: Any, channel: Any) -> None:
        (await answer(request)).send(channel)

    handle.__name__ = answer.__name__
    return handle


class _Json:
    """A JSON answer, sent by ``send`` through the front door's channel (duck-typed: the core
    never imports the server)."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def send(self, channel: Any) -> None:
        channel.start(
            self.status, [("content-type", "application/json")], content_length=len(self.body)
        )
        channel.write_raw(self.body)
        channel.end()


def _json(obj: Any, status: int = 200) -> _Json:
    return _Json(status, orjson.dumps(obj))
