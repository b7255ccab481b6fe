"""What both ledger backends share: the store interface, the admin queries as SQL, API keys.

It owns the text of every query the admin API asks (built once here, with the backend's
placeholder style), and the normalisation of their results into plain dicts, so that SQLite and
PostgreSQL give identical answers. It never executes anything: ``sqlite.py`` and ``postgres.py`` do.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gwcore.ledger.schema import COLUMNS

__all__ = [
    "ApiKey",
    "LedgerStore",
    "Queries",
    "UsageFilter",
    "decode_cursor",
    "encode_cursor",
]

_TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
)


@dataclass(slots=True)
class ApiKey:
    """A managed API key as stored: never the key itself, only its SHA-256 (hex)."""

    id: str
    key_hash: str
    prefix: str  # the first characters of the key, to recognise it in a list
    name: str | None = None
    models: list[str] | None = None  # allowed models; None: any
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    revoked_at: float | None = None

    def status(self, now: float | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at:
            return "expired"
        return "active"

    def public(self, now: float | None = None) -> dict[str, Any]:
        """The key as the admin API shows it (no hash)."""
        return {
            "id": self.id,
            "object": "api_key",
            "name": self.name,
            "prefix": self.prefix,
            "models": self.models,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "status": self.status(now),
        }

    def row(self) -> tuple:
        models = None if self.models is None else json.dumps(self.models)
        return (
            self.id,
            self.name,
            self.key_hash,
            self.prefix,
            models,
            self.created_at,
            self.expires_at,
            self.revoked_at,
        )

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> ApiKey:
        id_, name, key_hash, prefix, models, created_at, expires_at, revoked_at = row
        return cls(
            id=id_,
            name=name,
            key_hash=key_hash,
            prefix=prefix,
            models=None if models is None else json.loads(models),
            created_at=created_at,
            expires_at=expires_at,
            revoked_at=revoked_at,
        )


KEY_COLUMNS = "id, name, key_hash, prefix, models, created_at, expires_at, revoked_at"


@dataclass(slots=True)
class UsageFilter:
    """Which records an admin query covers. ``since`` inclusive, ``until`` exclusive (epoch s)."""

    since: float | None = None
    until: float | None = None
    provider: str | None = None
    model: str | None = None  # the requested or the upstream model name
    key_id: str | None = None


def encode_cursor(created_at: float, request_id: str) -> str:
    raw = json.dumps([created_at, request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """Raises ValueError for anything ``encode_cursor`` did not make."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, request_id = json.loads(raw)
    except Exception:
        raise ValueError("invalid cursor") from None
    if not isinstance(created_at, (int, float)) or not isinstance(request_id, str):
        raise ValueError("invalid cursor")
    return float(created_at), request_id


class Queries:
    """The admin queries in one backend's SQL. ``ph(n)`` is the n-th (1-based) placeholder."""

    def __init__(self, ph: Callable[[int], str], day_expr: str) -> None:
        self.ph = ph
        self.day_expr = day_expr
        cols = ", ".join(COLUMNS)
        self.select_log = f"SELECT {cols} FROM usage_records"
        self.aggregates = (
            "COUNT(*), "
            "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN aborted THEN 1 ELSE 0 END), "
            + ", ".join(f"COALESCE(SUM({t}), 0)" for t in _TOKENS)
            + ", COALESCE(SUM(cost_nanousd), 0), "
            "SUM(CASE WHEN cost_nanousd IS NULL THEN 1 ELSE 0 END)"
        )

    def where(self, f: UsageFilter, params: list[Any] | None = None) -> tuple[str, list[Any]]:
        params = [] if params is None else params
        clauses: list[str] = []

        def add(expr: str, *values: Any) -> None:
            marks = []
            for value in values:
                params.append(value)
                marks.append(self.ph(len(params)))
            clauses.append(expr.format(*marks))

        if f.since is not None:
            add("created_at >= {}", f.since)
        if f.until is not None:
            add("created_at < {}", f.until)
        if f.provider is not None:
            add("provider = {}", f.provider)
        if f.model is not None:
            add("(upstream_model = {} OR requested_model = {})", f.model, f.model)
        if f.key_id is not None:
            add("key_id = {}", f.key_id)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def summary(self, f: UsageFilter) -> tuple[str, list[Any]]:
        where, params = self.where(f)
        return f"SELECT {self.aggregates} FROM usage_records{where}", params

    def daily(self, f: UsageFilter) -> tuple[str, list[Any]]:
        where, params = self.where(f)
        day = self.day_expr
        return (
            f"SELECT {day}, {self.aggregates} FROM usage_records{where} GROUP BY {day} ORDER BY 1",
            params,
        )

    def models(self, f: UsageFilter) -> tuple[str, list[Any]]:
        where, params = self.where(f)
        return (
            f"SELECT provider, upstream_model, {self.aggregates} FROM usage_records{where} "
            "GROUP BY provider, upstream_model",
            params,
        )

    def log(
        self, f: UsageFilter, limit: int, cursor: tuple[float, str] | None
    ) -> tuple[str, list[Any]]:
        where, params = self.where(f)
        if cursor is not None:
            params += [cursor[0], cursor[0], cursor[1]]
            n = len(params)
            keyset = (
                f"(created_at < {self.ph(n - 2)} OR "
                f"(created_at = {self.ph(n - 1)} AND request_id < {self.ph(n)}))"
            )
            where = f"{where} AND {keyset}" if where else f" WHERE {keyset}"
        params.append(limit + 1)  # one more: is there a next page?
        return (
            f"{self.select_log}{where} ORDER BY created_at DESC, request_id DESC "
            f"LIMIT {self.ph(len(params))}",
            params,
        )


def totals(row: Sequence[Any]) -> dict[str, Any]:
    """One aggregate row (``Queries.aggregates`` order) -> the admin API's numbers."""
    requests, errors, aborted, *tokens = row[:8]
    cost, unpriced = row[8], row[9]
    out: dict[str, Any] = {
        "requests": int(requests or 0),
        "errors": int(errors or 0),
        "aborted": int(aborted or 0),
    }
    for name, value in zip(_TOKENS, tokens, strict=True):
        out[name] = int(value or 0)
    out["cost_usd"] = int(cost or 0) / 1e9
    out["unpriced_requests"] = int(unpriced or 0)
    return out


def log_entry(row: Sequence[Any]) -> dict[str, Any]:
    entry = dict(zip(COLUMNS, row, strict=True))
    cost = entry.pop("cost_nanousd")
    entry["cost_usd"] = None if cost is None else int(cost) / 1e9
    entry["stream"] = bool(entry["stream"])
    entry["aborted"] = bool(entry["aborted"])
    return entry


def sort_models(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # In Python, not SQL: collations differ between backends, this order does not.
    return sorted(rows, key=lambda r: (-r["cost_usd"], -r["requests"], r["provider"], r["model"]))


class LedgerStore(Protocol):
    """A ledger backend. ``open`` connects and migrates (and may be retried after a failure);
    ``write`` is idempotent (a row already stored is skipped)."""

    kind: str
    display_url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write(self, rows: list[tuple]) -> None: ...
    def refuses(self, exc: BaseException) -> bool:
        """True when ``exc``, raised by ``write``, says the database refuses a row's values (a
        type, a range or a constraint they break: the same rows fail again), False when it says
        the database is unavailable (gone, locked, full, timed out: a retry may succeed)."""
        ...

    async def schema_version(self) -> int: ...
    async def summary(self, f: UsageFilter) -> dict[str, Any]: ...
    async def daily(self, f: UsageFilter) -> list[dict[str, Any]]: ...
    async def models(self, f: UsageFilter) -> list[dict[str, Any]]: ...
    async def log(
        self, f: UsageFilter, limit: int, cursor: tuple[float, str] | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...
    async def insert_key(self, key: ApiKey) -> None: ...
    async def keys(self) -> list[ApiKey]: ...
    async def key_by_hash(self, key_hash: str) -> ApiKey | None: ...
    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None: ...


def page(rows: list[Sequence[Any]], limit: int) -> tuple[list[dict[str, Any]], str | None]:
    """Rows of ``Queries.log`` (limit + 1 asked) -> (entries, next cursor or None)."""
    more = len(rows) > limit
    entries = [log_entry(r) for r in rows[:limit]]
    cursor = None
    if more and entries:
        last = entries[-1]
        cursor = encode_cursor(last["created_at"], last["request_id"])
    return entries, cursor


def day_rows(rows: list[Sequence[Any]]) -> list[dict[str, Any]]:
    return [{"date": str(r[0]), **totals(r[1:])} for r in rows]


def model_rows(rows: list[Sequence[Any]]) -> list[dict[str, Any]]:
    return sort_models([{"provider": r[0], "model": r[1], **totals(r[2:])} for r in rows])
