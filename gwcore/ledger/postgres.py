"""The PostgreSQL ledger: asyncpg with a small connection pool, for many workers and hosts.

It owns the pool and the schema migration on PostgreSQL (under an advisory lock, so that workers
starting together migrate once). A batch is one statement (``INSERT ... SELECT FROM unnest(...)
ON CONFLICT DO NOTHING``): one round trip whatever its size, and a retried batch is a no-op. A
server that goes away surfaces as an exception from ``write``; the caller retries, and the pool
reconnects on the next use.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gwcore.ledger.schema import COLUMNS, MIGRATIONS, PG_ARRAY_TYPES
from gwcore.ledger.store import (
    KEY_COLUMNS,
    ApiKey,
    Queries,
    UsageFilter,
    day_rows,
    model_rows,
    page,
    totals,
)

__all__ = ["PostgresStore", "redact_url"]

# PostgreSQL's text holds no NUL character: one in a record's text (a client's model name, an
# upstream's error message) would fail the whole batch, which the writer retries for ever. It is
# stored as U+FFFD instead. (SQLite stores it as it is.)
_TEXT_COLUMNS = tuple(i for i, kind in enumerate(PG_ARRAY_TYPES) if kind == "text[]")


def _without_nul(column: list) -> list:
    """``column`` (str or None values), with each NUL character as U+FFFD: itself when it has
    none (one join and one search in C per column, not a loop per value)."""
    if "\x00" not in "\x01".join(filter(None, column)):
        return column
    return [v.replace("\x00", "\ufffd") if v else v for v in column]


_INSERT = (
    f"INSERT INTO usage_records ({', '.join(COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{t}" for i, t in enumerate(PG_ARRAY_TYPES, 1))
    + ") ON CONFLICT DO NOTHING"
)
_QUERIES = Queries(
    lambda n: f"${n}",
    "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
)
_MIGRATION_LOCK = 0x67776C6564676572  # "gwledger": one advisory lock id for gwcore migrations


def redact_url(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class PostgresStore:
    kind = "postgres"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.display_url = redact_url(url)
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._pool: Any = None

    async def open(self) -> None:
        import asyncpg

        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.timeout,
                command_timeout=self.timeout,
                max_inactive_connection_lifetime=60.0,
            )
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS gwcore_schema (version INTEGER NOT NULL)"
                )
                current = await con.fetchval("SELECT MAX(version) FROM gwcore_schema") or 0
                for version, statements in MIGRATIONS:
                    if version > current:
                        for sql in statements["postgres"]:
                            await con.execute(sql)
                        await con.execute(
                            "INSERT INTO gwcore_schema (version) VALUES ($1)", version
                        )
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL ledger is not open")
        return self._pool

    # ---- writes

    async def write(self, rows: list[tuple]) -> None:
        columns = [list(c) for c in zip(*rows, strict=True)]
        for i in _TEXT_COLUMNS:
            columns[i] = _without_nul(columns[i])
        await self.pool.execute(_INSERT, *columns, timeout=self.timeout)

    def refuses(self, exc: BaseException) -> bool:
        # asyncpg encodes the arguments here (a value its type cannot take: DataError); the server
        # checks them (SQLSTATE class 22, data exception: DataError; class 23, a constraint:
        # IntegrityConstraintViolationError). Connection errors, timeouts, a server shutting down
        # or out of space are its state: retried.
        import asyncpg

        return isinstance(
            exc,
            (
                asyncpg.DataError,
                asyncpg.IntegrityConstraintViolationError,
                OverflowError,
                ValueError,
                TypeError,
            ),
        )

    # ---- reads

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT MAX(version) FROM gwcore_schema") or 0)

    async def summary(self, f: UsageFilter) -> dict[str, Any]:
        sql, params = _QUERIES.summary(f)
        return totals(tuple(await self.pool.fetchrow(sql, *params)))

    async def daily(self, f: UsageFilter) -> list[dict[str, Any]]:
        sql, params = _QUERIES.daily(f)
        return day_rows([tuple(r) for r in await self.pool.fetch(sql, *params)])

    async def models(self, f: UsageFilter) -> list[dict[str, Any]]:
        sql, params = _QUERIES.models(f)
        return model_rows([tuple(r) for r in await self.pool.fetch(sql, *params)])

    async def log(
        self, f: UsageFilter, limit: int, cursor: tuple[float, str] | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        sql, params = _QUERIES.log(f, limit, cursor)
        return page([tuple(r) for r in await self.pool.fetch(sql, *params)], limit)

    # ---- keys

    async def insert_key(self, key: ApiKey) -> None:
        await self.pool.execute(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            *key.row(),
        )

    async def keys(self) -> list[ApiKey]:
        rows = await self.pool.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [ApiKey.from_row(tuple(r)) for r in rows]

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self.pool.fetchrow(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", key_hash
        )
        return ApiKey.from_row(tuple(row)) if row is not None else None

    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None:
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 "
            f"RETURNING {KEY_COLUMNS}",
            at,
            key_id,
        )
        return ApiKey.from_row(tuple(row)) if row is not None else None
