"""The SQLite ledger: one file, WAL mode, written from a thread of its own.

It owns the SQLite connections and the schema migration on SQLite. ``sqlite3`` blocks, so nothing
here runs on the event loop: writes go to one writer thread (its own connection, ``BEGIN
IMMEDIATE`` + ``INSERT ... ON CONFLICT DO NOTHING`` per batch), reads to one reader thread (WAL
lets them run while a write is under way). Several processes may share the file:
``busy_timeout`` makes a writer wait for another's lock instead of failing at once; a batch that
still fails is retried by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from itertools import chain
from typing import Any, TypeVar

from gwcore.ledger.schema import COLUMNS, MIGRATIONS, rows_by_nulls
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

__all__ = ["SqliteStore"]

T = TypeVar("T")

# Many rows per statement: one sqlite3_step (one GIL release) per chunk instead of per row, about
# 40% less CPU per record than executemany. SQLite before 3.32 allows 999 parameters per statement.
_CHUNK = 100 if sqlite3.sqlite_version_info >= (3, 32, 0) else 50
_INSERTS: dict[tuple[int, int], str] = {}  # (NULL columns mask, rows) -> INSERT statement
# A row already stored (same key: a retried batch) is skipped. ``ON CONFLICT DO NOTHING`` skips
# only that; ``OR IGNORE`` (before SQLite 3.24) would also skip, silently, a row that breaks a NOT
# NULL constraint, where the writer must hear of it (see ``refuses``).
if sqlite3.sqlite_version_info >= (3, 24, 0):
    _OR_IGNORE, _ON_CONFLICT = "", " ON CONFLICT DO NOTHING"
else:  # pragma: no cover
    _OR_IGNORE, _ON_CONFLICT = "OR IGNORE ", ""


def _insert(mask: int, rows: int) -> str:
    """``INSERT`` of ``rows`` rows that name only the columns not in ``mask`` (the
    others are NULL): see ``rows_by_nulls``. Two per group of rows, each prepared once
    (sqlite3's statement cache): ``_CHUNK`` rows, and one for ``executemany`` of the rest. (One
    statement per size of a remainder would prepare anew for each new size.)"""
    sql = _INSERTS.get((mask, rows))
    if sql is None:
        if len(_INSERTS) >= 4096:
            _INSERTS.clear()
        names = [name for i, name in enumerate(COLUMNS) if not mask >> i & 1]
        one = f"({', '.join('?' for _ in names)})"
        sql = _INSERTS[mask, rows] = (
            f"INSERT {_OR_IGNORE}INTO usage_records ({', '.join(names)}) VALUES "
            + ", ".join([one] * rows)
            + _ON_CONFLICT
        )
    return sql


_REFUSALS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    OverflowError,
    ValueError,
    TypeError,
)


class _Thread:
    """One thread that runs blocking calls in order, for one connection. A call costs a queue put,
    and a ``call_soon_threadsafe`` back that settles the caller's future: none of the executor's
    bookkeeping (a ``concurrent.futures`` future, its lock and callbacks, a wrapping future), which
    came to most of a small batch's CPU."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def stop(self) -> None:
        """The thread ends after the calls already given."""
        self._jobs.put(None)

    def _main(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            loop, future, fn, args = job
            try:
                outcome = (_settle, future, fn(*args), None)
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome = (_settle, future, None, exc)
            job = None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(*outcome)
            outcome = None


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if not future.done():  # (a caller that gave up cancelled it)
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)


_QUERIES = Queries(lambda n: "?", "strftime('%Y-%m-%d', created_at, 'unixepoch')")


class SqliteStore:
    kind = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 5.0) -> None:
        self.path = path
        self.display_url = f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self._writer: _Thread | None = None
        self._reader: _Thread | None = None
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None

    # ---- plumbing

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=True
        )
        con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return con

    async def _in(self, thread: _Thread | None, fn: Callable[..., T], *args) -> T:
        if thread is None:
            raise RuntimeError("the SQLite ledger is not open")
        return await thread.run(fn, *args)

    async def _write_op(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in(self._writer, fn, *args)

    async def _read_op(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._in(self._reader, fn, *args)

    # ---- lifecycle

    async def open(self) -> None:
        if self._writer is None:
            self._writer = _Thread("gwcore-ledger-writer")
            self._reader = _Thread("gwcore-ledger-reader")
        await self._write_op(self._open_writer)
        await self._read_op(self._open_reader)

    def _open_writer(self) -> None:
        if self._wcon is None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            con = self._connect()
            try:
                con.execute("PRAGMA journal_mode = WAL")
                # Usage is money: every committed batch survives a power loss too. One fsync per
                # batch, in this thread.
                con.execute("PRAGMA synchronous = FULL")
                self._migrate(con)
            except BaseException:
                con.close()
                raise
            self._wcon = con

    def _open_reader(self) -> None:
        if self._rcon is None:
            self._rcon = self._connect()
            self._rcon.execute("PRAGMA query_only = ON")

    def _migrate(self, con: sqlite3.Connection) -> None:
        con.execute("BEGIN IMMEDIATE")  # one process migrates; the others wait, then see it done
        try:
            con.execute("CREATE TABLE IF NOT EXISTS gwcore_schema (version INTEGER NOT NULL)")
            row = con.execute("SELECT MAX(version) FROM gwcore_schema").fetchone()
            current = row[0] or 0
            for version, statements in MIGRATIONS:
                if version > current:
                    for sql in statements["sqlite"]:
                        con.execute(sql)
                    con.execute("INSERT INTO gwcore_schema (version) VALUES (?)", (version,))
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        for thread, attr in ((self._writer, "_wcon"), (self._reader, "_rcon")):
            if thread is None:
                continue
            try:
                await self._in(thread, self._close_connection, attr)
            finally:
                thread.stop()
        self._writer = self._reader = None

    def _close_connection(self, attr: str) -> None:
        con = getattr(self, attr)
        if con is not None:
            setattr(self, attr, None)
            con.close()

    # ---- writes

    async def write(self, rows: list[tuple]) -> None:
        await self._write_op(self._write, rows)

    def _write(self, rows: list[tuple]) -> None:
        con = self._wcon
        if con is None:
            raise RuntimeError("the SQLite ledger is not open")
        con.execute("BEGIN IMMEDIATE")
        try:
            for mask, group in rows_by_nulls(rows).items():
                full = len(group) - len(group) % _CHUNK
                for i in range(0, full, _CHUNK):
                    values = list(chain.from_iterable(group[i : i + _CHUNK]))
                    con.execute(_insert(mask, _CHUNK), values)
                if full < len(group):
                    con.executemany(_insert(mask, 1), group[full:])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def refuses(self, exc: BaseException) -> bool:
        # sqlite3 binds in this process (a number too large: OverflowError; text that is not
        # UTF-8: UnicodeEncodeError; a type it does not bind: ProgrammingError or, before 3.11,
        # InterfaceError); SQLite checks constraints (IntegrityError). OperationalError is the
        # database's state (locked, busy, read-only, disk full, I/O): retried.
        return isinstance(exc, _REFUSALS)

    def _execute_write(self, sql: str, params: tuple) -> None:
        con = self._wcon
        if con is None:
            raise RuntimeError("the SQLite ledger is not open")
        con.execute(sql, params)

    # ---- reads

    def _fetchall(self, sql: str, params: list[Any] | tuple) -> list[tuple]:
        con = self._rcon
        if con is None:
            raise RuntimeError("the SQLite ledger is not open")
        return con.execute(sql, params).fetchall()

    async def schema_version(self) -> int:
        rows = await self._read_op(self._fetchall, "SELECT MAX(version) FROM gwcore_schema", ())
        return int(rows[0][0] or 0)

    async def summary(self, f: UsageFilter) -> dict[str, Any]:
        sql, params = _QUERIES.summary(f)
        rows = await self._read_op(self._fetchall, sql, params)
        return totals(rows[0])

    async def daily(self, f: UsageFilter) -> list[dict[str, Any]]:
        sql, params = _QUERIES.daily(f)
        return day_rows(await self._read_op(self._fetchall, sql, params))

    async def models(self, f: UsageFilter) -> list[dict[str, Any]]:
        sql, params = _QUERIES.models(f)
        return model_rows(await self._read_op(self._fetchall, sql, params))

    async def log(
        self, f: UsageFilter, limit: int, cursor: tuple[float, str] | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        sql, params = _QUERIES.log(f, limit, cursor)
        return page(await self._read_op(self._fetchall, sql, params), limit)

    # ---- keys

    async def insert_key(self, key: ApiKey) -> None:
        await self._write_op(
            self._execute_write,
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            key.row(),
        )

    async def keys(self) -> list[ApiKey]:
        rows = await self._read_op(
            self._fetchall, f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id", ()
        )
        return [ApiKey.from_row(r) for r in rows]

    async def key_by_hash(self, key_hash: str) -> ApiKey | None:
        rows = await self._read_op(
            self._fetchall, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", (key_hash,)
        )
        return ApiKey.from_row(rows[0]) if rows else None

    async def revoke_key(self, key_id: str, at: float) -> ApiKey | None:
        await self._write_op(
            self._execute_write,
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (at, key_id),
        )
        # The reader may lag the writer by nothing: the UPDATE committed (autocommit) before this.
        rows = await self._read_op(
            self._fetchall, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
        )
        return ApiKey.from_row(rows[0]) if rows else None


def sqlite_path(url: str) -> str:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db`` or a plain path -> a file path."""
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        path = path[1:] if path.startswith("/") else path
    else:
        path = url
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ValueError(f"the SQLite ledger needs a file path, not {url!r}")
    return path
