# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""``UsageLedger``: the usage sink that stores every record, and its background writer.

It owns the path from ``record(rec)`` (on the event loop, once per request) to the database: a
bounded in-memory queue, one writer task per worker that takes batches (every ``batch_size``
records or ``flush_interval`` seconds, whichever comes first), converts them to rows and hands
them to the store (whose blocking work happens off the loop), retrying a failed batch with backoff.

``record`` never blocks, never fails and never does I/O: when the queue is full (the database is
down or too slow for too long) the record is dropped, counted and logged loudly. At shutdown
(``stop``, after the front door drained) the queue is flushed; whatever the database still refuses
when the shutdown deadline passes is written to a spill file that the next start imports, so a
database outage across a restart loses nothing either.

A database that is unavailable and one that refuses a row are told apart (``store.refuses``): the
first is retried, the second never succeeds, and retrying it would hold every later record back
for good. A refused batch is halved until the rows the database refuses are found; the others are
stored, and each refused one is stored with the values no column holds replaced (``storable_row``)
or, if the database refuses that too, set aside in a ``gwcore-ledger-refused-*.jsonl`` file (not
imported: the operator's to look at), counted and logged either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import time
from collections import deque
from typing import Any

from gwcore.ledger.schema import COLUMNS, record_row, storable_row
from gwcore.ledger.store import LedgerStore
from gwcore.usage import UsageRecord

__all__ = ["UsageLedger"]

log = logging.getLogger("gwcore.ledger")

_SPILL_PREFIX = "gwcore-ledger-spill-"
_REFUSED_PREFIX = "gwcore-ledger-refused-"
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0
_DROP_LOG_EVERY = 5.0  # seconds between two "queue full" errors


class _NoMetrics:
    def ledger_queue(self, depth: int) -> None: ...
    def ledger_dropped_records(self, n: int = 1) -> None: ...
    def ledger_written_records(self, n: int) -> None: ...
    def ledger_write_failed(self) -> None: ...
    def ledger_refused_records(self, outcome: str, n: int = 1) -> None: ...


class UsageLedger:
    """Usage records -> the store, in batches, off the request path."""

    def __init__(
        self,
        store: LedgerStore,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        max_queue: int = 100_000,
        shutdown_timeout: float = 10.0,
        spill_dir: str | None = None,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.shutdown_timeout = shutdown_timeout
        self.spill_dir = spill_dir
        self.metrics = metrics if metrics is not None else _NoMetrics()
        self.opened = False
        self.written = 0  # records the store accepted (including duplicates it skipped)
        self.dropped = 0  # records lost to a full queue
        self.failures = 0  # failed write attempts
        self.repaired = 0  # refused records stored with values replaced
        self.set_aside = 0  # refused records written to a refused file (or lost without one)
        self._queue: deque[UsageRecord] = deque()
        # The batch being written, kept for retries; a row the database refused is None in it
        # once repaired or set aside (a retry after an outage skips it: never handled twice).
        self._pending: list[tuple | None] | None = None
        self._waiter: asyncio.Future | None = None  # the writer's nap, while it naps
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._last_drop_log = -_DROP_LOG_EVERY
        self._drops_logged = 0

    # ---- the sink (event loop, once per request)

    def record(self, rec: UsageRecord) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue:
            self._drop()
            return
        queue.append(rec)
        if len(queue) == self.batch_size:
            self._wake_up()

    def _wake_up(self) -> None:
        """End the writer's nap, if it naps."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _drop(self) -> None:
        self.dropped += 1
        self.metrics.ledger_dropped_records(1)
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY:
            log.error(
                "USAGE LEDGER QUEUE FULL (%d records waiting for %s): usage records are being "
                "DROPPED (%d so far, %d since the last message); the database is down or too slow",
                len(self._queue),
                self.store.display_url,
                self.dropped,
                self.dropped - self._drops_logged,
            )
            self._last_drop_log = now
            self._drops_logged = self.dropped

    @property
    def depth(self) -> int:
        """Records not yet stored (queued plus the batch in flight)."""
        return len(self._queue) + (len(self._pending) if self._pending else 0)

    # ---- lifecycle (App hooks)

    async def start(self) -> None:
        """Open the store (connect, migrate) and start the writer. A database that is not there
        yet does not stop the gateway: the writer keeps trying, records queue meanwhile."""
        if self._task is not None:
            return
        self._stopping = False
        try:
            await asyncio.wait_for(self.store.open(), timeout=10.0)
        except Exception as exc:
            log.error(
                "usage ledger %s is unavailable at startup (%s); records queue in memory (up to "
                "%d) and the writer keeps retrying",
                self.store.display_url,
                _describe(exc),
                self.max_queue,
            )
        else:
            self.opened = True
            log.info("usage ledger: %s", self.store.display_url)
            await self._import_spills()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gwcore-ledger")

    async def stop(self) -> None:
        """Flush what is queued (up to ``shutdown_timeout``), spill the rest, close the store."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._wake_up()
        try:
            await asyncio.wait_for(asyncio.shield(task), self.shutdown_timeout)
        except asyncio.TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        left = self.depth
        if left:
            self._spill()
        with contextlib.suppress(Exception):
            await self.store.close()
        self.opened = False
        log.info(
            "usage ledger stopped: %d written, %d dropped, %d spilled",
            self.written,
            self.dropped,
            left,
        )

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is stored, or ``timeout`` seconds; True when
        nothing is left (tests, and the admin API before it answers)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self.depth and self._task is not None and not self._task.done():
            if deadline is not None and loop.time() >= deadline:
                return False
            self._wake_up()
            await asyncio.sleep(0.005)
        return not self.depth

    # ---- the writer task

    async def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while True:
            if not self.opened:
                try:
                    await self.store.open()
                except Exception as exc:
                    self.failures += 1
                    self.metrics.ledger_write_failed()
                    log.error(
                        "usage ledger %s: cannot open (%s); %d record(s) waiting, retry in %.1f s",
                        self.store.display_url,
                        _describe(exc),
                        self.depth,
                        backoff,
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                self.opened = True
                backoff = _BACKOFF_FIRST
                log.info("usage ledger: %s (connected)", self.store.display_url)
                await self._import_spills()
            if self._pending is None and len(self._queue) < self.batch_size:
                if self._stopping and not self._queue:
                    return
                if not self._stopping:
                    # A future and a timer: asyncio.wait_for(event.wait()) made a task and
                    # cancelled it at every timeout, most of a small batch's cost on the loop.
                    waiter = self._waiter = loop.create_future()
                    timer = loop.call_later(self.flush_interval, self._wake_up)
                    try:
                        await waiter
                    finally:
                        timer.cancel()
                        self._waiter = None
            self.metrics.ledger_queue(self.depth)
            while self._pending is not None or self._queue:
                if self._pending is None:
                    queue = self._queue
                    n = min(len(queue), self.batch_size)
                    self._pending = [record_row(queue.popleft()) for _ in range(n)]
                rows = self._pending
                try:
                    stored = await self._store_rows(rows)
                except Exception as exc:
                    self.failures += 1
                    self.metrics.ledger_write_failed()
                    log.error(
                        "usage ledger %s: a batch of %d failed (%s); %d record(s) waiting, "
                        "retry in %.1f s",
                        self.store.display_url,
                        len(rows),
                        _describe(exc),
                        self.depth,
                        backoff,
                    )
                    await self._pause(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    break
                self._pending = None
                self.written += stored
                self.metrics.ledger_written_records(stored)
                if backoff > _BACKOFF_FIRST:
                    log.warning("usage ledger %s: writing again", self.store.display_url)
                    backoff = _BACKOFF_FIRST
                if len(self._queue) < self.batch_size and not self._stopping:
                    # What arrived during the write waits for the next interval (or a full
                    # batch): draining it at once would write a tiny batch after every write,
                    # and each write costs a thread hand-off and a commit.
                    break
            self.metrics.ledger_queue(self.depth)

    async def _store_rows(self, rows: list[tuple | None], lo: int = 0, hi: int = -1) -> int:
        """Write ``rows[lo:hi]`` (all of them by default), and whatever of them the database takes
        if it refuses some; the number stored (a refused row repaired counts, one set aside does
        not). A refused row, once repaired or set aside, becomes None in ``rows``; None rows are
        skipped. Raises when the store is unavailable (the caller retries the whole batch: a row
        already stored is skipped)."""
        store = self.store
        if hi < 0:
            hi = len(rows)
        part = rows if lo == 0 and hi == len(rows) else rows[lo:hi]
        for row in part:  # (an identity test a row: "None in part" would compare each tuple)
            if row is None:
                part = [row for row in part if row is not None]
                if not part:
                    return 0
                break
        try:
            await store.write(part)
            return len(part)
        except Exception as exc:
            if not store.refuses(exc):
                raise
            error = exc
        if len(part) > 1:  # (then hi - lo >= 2: each half is shorter)
            mid = (lo + hi) // 2
            return await self._store_rows(rows, lo, mid) + await self._store_rows(rows, mid, hi)
        at = lo
        while rows[at] is None:
            at += 1
        row = rows[at]
        fixed = storable_row(row)
        if fixed is not None and fixed[1]:
            try:
                await store.write([fixed[0]])
            except Exception as exc:
                if not store.refuses(exc):
                    raise
                error = exc
            else:
                rows[at] = None
                self.repaired += 1
                self.metrics.ledger_refused_records("repaired")
                log.error(
                    "usage ledger %s refused record %r (%s); stored with %s replaced",
                    store.display_url,
                    row[1],
                    _describe(error),
                    ", ".join(fixed[1]),
                )
                return 1
        rows[at] = None
        self._set_aside(row, error)
        return 0

    def _set_aside(self, row: tuple, error: BaseException) -> None:
        """A row the database refuses even with its values replaced: to this process's refused
        file (one JSON object a line: the columns by name and the error), or to the log."""
        self.set_aside += 1
        self.metrics.ledger_refused_records("set_aside")
        line = json.dumps(
            {"error": _describe(error), "row": dict(zip(COLUMNS, row, strict=True))}, default=repr
        )
        directory = self.spill_dir
        if directory is not None:
            path = os.path.join(directory, f"{_REFUSED_PREFIX}{os.getpid()}.jsonl")
            try:
                os.makedirs(directory, exist_ok=True)
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                log.error("USAGE LEDGER: cannot write %s (%s)", path, exc)
            else:
                log.error(
                    "USAGE LEDGER %s REFUSED record %r (%s): set aside in %s",
                    self.store.display_url,
                    row[1],
                    _describe(error),
                    path,
                )
                return
        log.error(
            "USAGE LEDGER %s REFUSED record %r (%s) and it is not stored anywhere else: %s",
            self.store.display_url,
            row[1],
            _describe(error),
            line,
        )

    async def _pause(self, seconds: float) -> None:
        """Back off; during shutdown too (the deadline in ``stop`` bounds the whole)."""
        await asyncio.sleep(seconds)

    # ---- spill files: what the database refused at exit, imported at the next start

    def _spill(self) -> None:
        rows = [row for row in self._pending or () if row is not None]  # (None: handled)
        rows += [record_row(r) for r in self._queue]
        self._pending = None
        self._queue.clear()
        directory = self.spill_dir
        if directory is None:
            log.error(
                "USAGE LEDGER: %d record(s) could not be written to %s before exit and are LOST "
                "(no spill directory)",
                len(rows),
                self.store.display_url,
            )
            return
        name = f"{_SPILL_PREFIX}{os.getpid()}-{time.time_ns()}.jsonl"
        path = os.path.join(directory, name)
        try:
            os.makedirs(directory, exist_ok=True)
            with open(path + ".tmp", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.error(
                "USAGE LEDGER: %d record(s) could not be written to %s nor spilled to %s (%s): "
                "they are LOST",
                len(rows),
                self.store.display_url,
                path,
                exc,
            )
            return
        log.error(
            "USAGE LEDGER: %d record(s) could not be written to %s before exit; spilled to %s "
            "(imported at the next start)",
            len(rows),
            self.store.display_url,
            path,
        )

    async def _import_spills(self) -> None:
        if self.spill_dir is None:
            return
        for path in sorted(glob.glob(os.path.join(self.spill_dir, f"{_SPILL_PREFIX}*.jsonl"))):
            try:
                with open(path, encoding="utf-8") as fh:
                    rows = [tuple(json.loads(line)) for line in fh if line.strip()]
            except FileNotFoundError:
                continue  # another worker took it
            except (OSError, ValueError) as exc:
                log.error("usage ledger: cannot read spill file %s (%s)", path, exc)
                continue
            try:
                for i in range(0, len(rows), self.batch_size):
                    await self._store_rows(rows, i, min(i + self.batch_size, len(rows)))
            except Exception as exc:
                log.error("usage ledger: spill file %s not imported yet (%s)", path, _describe(exc))
                return
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            log.warning("usage ledger: imported %d record(s) from %s", len(rows), path)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
