"""The usage ledger on SQLite and PostgreSQL: every record arrives, whatever the database does."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_harness import (
    CLEAN_ENV,
    DB_URL,
    MASTER,
    MODEL,
    PRICE,
    backend_url,
    chat,
    clean_env,
    free_port,
    ledger_gateway,
    need_postgres,
    serve_cmd,
    stream_once,
    wait_http,
    write_config,
)

from gwcore.config import ConfigError
from gwcore.ledger import LedgerSettings, UsageFilter, UsageLedger, open_store
from gwcore.ledger.schema import (
    COLUMNS,
    NOT_NULL,
    PG_ARRAY_TYPES,
    SCHEMA_VERSION,
    record_row,
    storable_row,
)
from gwcore.ledger.sqlite import SqliteStore
from gwcore.metrics import GatewayMetrics
from gwcore.testing import run
from gwcore.usage import UsageRecord

pytestmark = pytest.mark.timeout(90)
db_url = DB_URL
clean_settings = CLEAN_ENV


def _record(i: int, **kw) -> UsageRecord:
    rec = UsageRecord(
        request_id=f"req-{i:05d}",
        provider="mock",
        requested_model=MODEL,
        upstream_model=MODEL,
        route="relay",
        stream=True,
        status=200,
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        created_at=1_700_000_000.0 + i,
    )
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


async def _count(store) -> int:
    return (await store.summary(UsageFilter()))["requests"]


def _expected_cost(prompt: int, completion: int) -> float:
    return (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6


# ---- settings ------------------------------------------------------------------------------------


def test_settings_default_env_and_yaml():
    s = LedgerSettings.from_config(None, {})
    assert s.enabled and s.url == "sqlite:///gwcore.db"
    assert s.spill_dir == os.path.dirname(os.path.abspath("gwcore.db"))
    s = LedgerSettings.from_config(
        {"url": "sqlite:///a.db", "batch_size": 7, "flush_interval_ms": 50},
        {"GWCORE_DATABASE_URL": "postgresql://u:secret@db:5432/x"},
    )
    assert s.url.startswith("postgresql://") and s.batch_size == 7 and s.flush_interval == 0.05
    assert open_store(s).display_url == "postgresql://u:***@db:5432/x"
    assert not LedgerSettings.from_config({"enabled": True}, {"GWCORE_LEDGER": "off"}).enabled
    with pytest.raises(ConfigError, match=r"ledger\.batch_size"):
        LedgerSettings.from_config({"batch_size": 0}, {})
    with pytest.raises(ConfigError, match=r"ledger\.nope"):
        LedgerSettings.from_config({"nope": 1}, {})
    with pytest.raises(ConfigError, match="GWCORE_DATABASE_URL"):
        LedgerSettings.from_config(None, {"GWCORE_DATABASE_URL": "mysql://x/y"})
    with pytest.raises(ConfigError):
        LedgerSettings.from_config(None, {"GWCORE_DATABASE_URL": "sqlite:///:memory:"})


# ---- the store -----------------------------------------------------------------------------------


def test_schema_migrated_once_and_versioned(db_url):
    async def main():
        for _ in range(2):  # a second start finds the schema current and changes nothing
            store = open_store(LedgerSettings(url=db_url))
            await store.open()
            assert await store.schema_version() == SCHEMA_VERSION
            await store.close()

    run(main())


def test_retried_batch_never_duplicates(db_url):
    async def main():
        store = open_store(LedgerSettings(url=db_url))
        await store.open()
        try:
            rows = [record_row(_record(i)) for i in range(50)]
            await store.write(rows)
            await store.write(rows[10:30])  # a batch retried after an ambiguous failure
            await store.write(rows)
            assert await _count(store) == 50
            # Two requests that share a client-chosen x-request-id are two records.
            twin = _record(0, created_at=1_700_000_000.5)
            await store.write([record_row(twin)])
            assert await _count(store) == 51
            entries, _ = await store.log(UsageFilter(), 1000, None)
            assert len(entries) == 51
            assert set(entries[0]) == (set(COLUMNS) - {"cost_nanousd"}) | {"cost_usd"}
        finally:
            await store.close()

    run(main())


def test_concurrent_streams_all_arrive(db_url):
    n = 60

    async def main():
        async with ledger_gateway(db_url, mock_kwargs={"events": 12}) as h:
            async with h.client() as client:
                responses = await asyncio.gather(*(stream_once(client) for _ in range(n)))
            assert all(r.status_code == 200 for r in responses)
            await h.ledger.flush()
            entries, cursor = await h.store.log(UsageFilter(), 1000, None)
            assert cursor is None and len(entries) == n
            ids = {r.headers["x-request-id"] for r in responses}
            assert {e["request_id"] for e in entries} == ids
            for e in entries:
                assert e["key_id"] == "master" and e["stream"] and e["status"] == 200
                assert e["prompt_tokens"] == 11 and e["completion_tokens"] > 0
                assert e["cost_usd"] == pytest.approx(
                    _expected_cost(e["prompt_tokens"], e["completion_tokens"]), abs=1e-9
                )
            assert h.ledger.dropped == 0 and h.ledger.depth == 0

    run(main(), use_uvloop=True)


# ---- the database away ---------------------------------------------------------------------------


def test_sqlite_locked_by_another_process_loses_nothing(tmp_path):
    """An exclusive transaction from another connection holds the file; requests stay fast,
    records wait in the queue, and all of them arrive once the lock is gone."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def main():
        async with ledger_gateway(url) as h:
            async with h.client() as client:
                assert (await stream_once(client)).status_code == 200
                await h.ledger.flush()
                locker = sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)
                locker.execute("BEGIN EXCLUSIVE")
                try:
                    for _ in range(20):
                        started = time.perf_counter()
                        assert (await stream_once(client)).status_code == 200
                        assert time.perf_counter() - started < 1.0  # never waits on the lock
                    await asyncio.sleep(1.0)
                    assert h.ledger.depth > 0  # nothing could be written
                finally:
                    locker.execute("ROLLBACK")
                    locker.close()
            await asyncio.wait_for(h.ledger.flush(), 15)
            assert await _count(h.store) == 21

    run(main(), use_uvloop=True)


def test_sqlite_write_failures_are_retried(tmp_path, caplog):
    """With a short busy timeout the locked writes fail outright: the batch is retried."""
    path = tmp_path / "ledger.db"

    async def main():
        ledger = UsageLedger(SqliteStore(str(path), busy_timeout=0.05), flush_interval=0.01)
        await ledger.start()
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        for i in range(30):
            ledger.record(_record(i))
        await asyncio.sleep(0.6)
        assert ledger.failures >= 1 and ledger.depth == 30
        locker.execute("ROLLBACK")
        locker.close()
        await asyncio.wait_for(ledger.flush(), 10)
        assert await _count(ledger.store) == 30
        await ledger.stop()

    with caplog.at_level(logging.ERROR, logger="gwcore.ledger"):
        run(main())
    assert any("failed" in r.getMessage() for r in caplog.records)


class TcpOutage:
    """A TCP proxy in front of the database that can go down (listener closed, connections
    reset) and come back on the same port: what the gateway sees of a database restart."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.AbstractServer | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.pipes):
            w.transport.abort()
        self.pipes.clear()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.pipes |= {writer, up_writer}

        async def pipe(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def test_postgres_away_mid_run_loses_nothing(tmp_path):
    with backend_url("postgres", tmp_path) as real_url:
        parts = urlsplit(real_url)

        async def main():
            outage = TcpOutage(parts.hostname, parts.port or 5432)
            await outage.up()
            user = f"{parts.username}@" if parts.username else ""
            url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{outage.port}"))
            try:
                async with ledger_gateway(url) as h, h.client() as client:
                    for _ in range(10):
                        assert (await stream_once(client)).status_code == 200
                    await h.ledger.flush()
                    await outage.down()
                    for _ in range(25):
                        started = time.perf_counter()
                        assert (await stream_once(client)).status_code == 200
                        assert time.perf_counter() - started < 1.0
                    await asyncio.sleep(0.5)
                    assert h.ledger.depth == 25 and h.ledger.failures >= 1
                    await outage.up()
                    await asyncio.wait_for(h.ledger.flush(), 20)
                    assert await _count(h.store) == 35
            finally:
                await outage.down()

        run(main(), use_uvloop=True)


def _pg_control() -> tuple[list[str], str] | None:
    """(command prefix, data dir) to stop/start the test server, when .ci/run says how."""
    pg_ctl, pgdata = os.environ.get("GWCORE_TEST_PG_CTL"), os.environ.get("GWCORE_TEST_PGDATA")
    if not pg_ctl or not pgdata:
        return None
    prefix = [pg_ctl]
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--", pg_ctl]
    return prefix, pgdata


def test_postgres_server_stopped_and_restarted_loses_nothing(tmp_path):
    control = _pg_control()
    need_postgres()
    if control is None:
        pytest.skip("GWCORE_TEST_PG_CTL/GWCORE_TEST_PGDATA not set (bash .ci/run sets them)")
    prefix, pgdata = control

    def pg_ctl(*args: str) -> None:
        subprocess.run([*prefix, "-D", pgdata, "-w", *args], check=True, capture_output=True)

    with backend_url("postgres", tmp_path) as url:

        async def main():
            async with ledger_gateway(url) as h, h.client() as client:
                for _ in range(5):
                    assert (await stream_once(client)).status_code == 200
                await h.ledger.flush()
                await asyncio.to_thread(pg_ctl, "stop", "-m", "fast")
                try:
                    for _ in range(15):
                        assert (await stream_once(client)).status_code == 200
                    await asyncio.sleep(0.5)
                    assert h.ledger.depth == 15
                finally:
                    await asyncio.to_thread(pg_ctl, "start", "-l", f"{pgdata}/server.log")
                await asyncio.wait_for(h.ledger.flush(), 30)
                assert await _count(h.store) == 20

        run(main(), use_uvloop=True)


def test_queue_full_drops_are_counted_and_logged(caplog):
    async def main():
        # Nothing listens there: the store never opens, records can only queue.
        store = open_store(LedgerSettings(url=f"postgresql://u@127.0.0.1:{free_port()}/x"))
        ledger = UsageLedger(store, max_queue=5, shutdown_timeout=0.2, spill_dir=None)
        await ledger.start()
        for i in range(12):
            ledger.record(_record(i))
        assert ledger.dropped == 7 and ledger.depth == 5
        await ledger.stop()

    with caplog.at_level(logging.ERROR, logger="gwcore.ledger"):
        run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "QUEUE FULL" in text and "DROPPED" in text
    assert "LOST" in text  # and what was still queued at exit says so too


class _SlowStore:
    """A store whose every write takes 5 ms: it records the size of each batch."""

    display_url = "memory://slow"

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def write(self, rows: list[tuple]) -> None:
        await asyncio.sleep(0.005)
        self.batches.append(len(rows))


def test_records_arriving_during_a_write_wait_for_the_next_interval():
    async def main():
        store = _SlowStore()
        ledger = UsageLedger(store, batch_size=1_000, flush_interval=0.1)  # type: ignore[arg-type]
        await ledger.start()
        started = time.monotonic()
        for i in range(300):  # a steady stream of records for about 0.3 s
            ledger.record(_record(i))
            await asyncio.sleep(0.001)
        elapsed = time.monotonic() - started
        await ledger.stop()
        return store.batches, elapsed

    batches, elapsed = run(main(), use_uvloop=True)
    assert sum(batches) == 300
    # One write per 0.1 s interval (and the one at stop), not one per 5 ms write: a write after
    # every write makes a batch every 5 ms (about 46 in 0.3 s).
    assert len(batches) <= elapsed / 0.1 + 2, (batches, elapsed)


def test_a_full_batch_is_written_at_once_and_the_rest_drains_in_batches():
    async def main():
        store = _SlowStore()
        ledger = UsageLedger(store, batch_size=50, flush_interval=3600)  # type: ignore[arg-type]
        await ledger.start()
        await asyncio.sleep(0.05)  # the writer naps: the 50th record must wake it
        for i in range(175):
            ledger.record(_record(i))
        await asyncio.sleep(0.2)
        written = list(store.batches)
        await ledger.stop()
        return written, store.batches

    written, batches = run(main(), use_uvloop=True)
    assert written == [50, 50, 50]  # full batches go at once; the 25 left wait for the interval
    assert batches == [50, 50, 50, 25]  # and stop flushes them


def test_stop_flushes_everything_queued(db_url):
    async def main():
        store = open_store(LedgerSettings(url=db_url))
        ledger = UsageLedger(store, batch_size=10_000, flush_interval=3600)
        await ledger.start()
        for i in range(250):
            ledger.record(_record(i))
        await asyncio.sleep(0.05)
        assert ledger.written == 0
        await ledger.stop()
        assert ledger.written == 250
        await store.open()
        assert await _count(store) == 250
        await store.close()

    run(main())


def test_a_cost_no_column_holds_is_stored_as_none_not_retried_for_ever(db_url):
    """A record whose cost a 64-bit nano-dollar column cannot hold (a broken count's price,
    infinite, not a number) is stored with no cost, with the records around it: the batch used
    to fail on it, and the writer retried that batch for ever while every later record queued."""

    async def main():
        store = open_store(LedgerSettings(url=db_url))
        ledger = UsageLedger(store, flush_interval=0.05)
        await ledger.start()
        try:
            costs = [0.25, 1e15, float("inf"), float("nan"), -1e12, 9.2e9]
            for i, cost in enumerate(costs):
                ledger.record(_record(i, cost=cost))
            assert await ledger.flush(timeout=10)
            assert ledger.failures == 0
            entries, _ = await store.log(UsageFilter(), 100, None)
            got = {e["request_id"]: e["cost_usd"] for e in entries}
            assert got == {
                "req-00000": pytest.approx(0.25),
                "req-00001": None,
                "req-00002": None,
                "req-00003": None,
                "req-00004": None,
                "req-00005": pytest.approx(9.2e9),
            }
        finally:
            await ledger.stop()

    run(main())


def test_text_no_column_holds_is_stored_not_retried_for_ever(db_url):
    """A NUL character in a record's text (a client's model name, an upstream's error message:
    PostgreSQL's text cannot hold one) is stored as U+FFFD there, as is on SQLite, with the
    records around it: the batch used to fail on it, and the writer retried it for ever."""

    async def main():
        store = open_store(LedgerSettings(url=db_url))
        ledger = UsageLedger(store, flush_interval=0.05)
        await ledger.start()
        try:
            ledger.record(_record(0))
            ledger.record(_record(1, requested_model="gpt\x00x", error="upstream: a\x00b"))
            ledger.record(_record(2))
            assert await ledger.flush(timeout=10)
            assert ledger.failures == 0
            entries, _ = await store.log(UsageFilter(), 100, None)
            got = {e["request_id"]: (e["requested_model"], e["error"]) for e in entries}
            held = "\x00" if db_url.startswith("sqlite") else "\ufffd"
            assert got == {
                "req-00000": (MODEL, None),
                "req-00001": (f"gpt{held}x", f"upstream: a{held}b"),
                "req-00002": (MODEL, None),
            }
        finally:
            await ledger.stop()

    run(main())


def test_rows_the_database_refuses_are_found_and_stored_repaired(db_url):
    """A value no column holds (here text that is not UTF-8: lone surrogates) fails its whole
    batch, and the same batch fails again on every retry: the writer used to retry it for ever
    while every later record queued, then dropped. The refused rows are found by halving the
    batch; the others are stored as they are, the refused ones with the values replaced."""

    async def main():
        store = open_store(LedgerSettings(url=db_url))
        ledger = UsageLedger(store, flush_interval=0.05)
        await ledger.start()
        try:
            for i in range(40):
                kw = {}
                if i == 7:
                    kw = {"error": "upstream: \ud800 broken"}
                elif i == 30:  # a pair held as two code points: its character
                    kw = {"requested_model": "gpt-\ud83d\ude00"}
                ledger.record(_record(i, **kw))
            assert await ledger.flush(timeout=10)
            assert (ledger.failures, ledger.repaired, ledger.set_aside) == (0, 2, 0)
            ledger.record(_record(40))  # and the writer goes on
            assert await ledger.flush(timeout=10)
            entries, _ = await store.log(UsageFilter(), 100, None)
            got = {e["request_id"]: (e["requested_model"], e["error"]) for e in entries}
            expected = {f"req-{i:05d}": (MODEL, None) for i in range(41)}
            expected["req-00007"] = (MODEL, "upstream: \ufffd broken")
            expected["req-00030"] = ("gpt-\U0001f600", None)
            assert got == expected
            assert ledger.written == 41
        finally:
            await ledger.stop()

    run(main())


def test_a_row_refused_even_repaired_is_set_aside_and_the_rest_stored(db_url, tmp_path, caplog):
    """A row whose values cannot be replaced (a column that holds no NULL has none) is written to
    the refused file and logged, counted in the metrics; every other record is stored."""
    metrics = GatewayMetrics()

    async def main():
        store = open_store(LedgerSettings(url=db_url))
        ledger = UsageLedger(
            store, flush_interval=0.05, spill_dir=str(tmp_path / "spill"), metrics=metrics
        )
        await ledger.start()
        try:
            for i in range(12):
                ledger.record(_record(i, provider=None if i in (3, 4) else "mock"))
            assert await ledger.flush(timeout=10)
            assert (ledger.failures, ledger.repaired, ledger.set_aside) == (0, 0, 2)
            assert await _count(store) == 10
            ledger.record(_record(12))
            assert await ledger.flush(timeout=10)
            assert await _count(store) == 11
        finally:
            await ledger.stop()

    with caplog.at_level(logging.ERROR, logger="gwcore.ledger"):
        run(main())
    (path,) = glob.glob(str(tmp_path / "spill" / "gwcore-ledger-refused-*.jsonl"))
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert [line["row"]["request_id"] for line in lines] == ["req-00003", "req-00004"]
    assert all(line["row"]["provider"] is None and line["error"] for line in lines)
    assert lines[0]["row"] == dict(zip(COLUMNS, record_row(_record(3, provider=None)), strict=True))
    assert not glob.glob(str(tmp_path / "spill" / "gwcore-ledger-spill-*"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "REFUSED record 'req-00003'" in text and path in text
    body = metrics.render()[0].decode()
    assert 'gwcore_ledger_refused_records_total{outcome="set_aside"} 2.0' in body


class _OutageOnce:
    """A SQLite store whose ``fail_at``-th write fails as a database that went away does."""

    def __init__(self, path: str, fail_at: int) -> None:
        self.inner = SqliteStore(path)
        self.display_url = self.inner.display_url
        self.writes = 0
        self.fail_at = fail_at

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def refuses(self, exc: BaseException) -> bool:
        return self.inner.refuses(exc)

    async def write(self, rows: list[tuple]) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise ConnectionResetError("the database went away")
        await self.inner.write(rows)


@pytest.mark.parametrize("fail_at", range(2, 12))
def test_a_batch_retried_after_an_outage_repairs_and_sets_aside_each_row_once(tmp_path, fail_at):
    """The database goes away half-way through finding a batch's refused rows: the batch is
    retried whole, and the rows already repaired or set aside are not again (no second line in
    the refused file, no count twice), whichever write the outage hits."""

    async def main():
        store = _OutageOnce(str(tmp_path / "ledger.db"), fail_at)
        ledger = UsageLedger(store, flush_interval=0.02, spill_dir=str(tmp_path))
        await ledger.start()
        try:
            for i in range(8):
                kw = {"provider": None} if i == 2 else {"error": "\ud800"} if i == 5 else {}
                ledger.record(_record(i, **kw))
            assert await ledger.flush(timeout=10)
            assert (ledger.repaired, ledger.set_aside, ledger.written) == (1, 1, 7)
            assert ledger.failures == (1 if fail_at <= store.writes else 0)
            assert await _count(store.inner) == 7
        finally:
            await ledger.stop()

    run(main())
    (path,) = glob.glob(str(tmp_path / "gwcore-ledger-refused-*.jsonl"))
    assert len(Path(path).read_text().splitlines()) == 1


def test_a_spill_file_with_a_refused_row_is_imported_all_but_that_row(tmp_path):
    """A spill file used to be imported whole or not at all: one refused row kept it (and every
    record in it) out of the ledger at every start."""
    path = tmp_path / "ledger.db"
    rows = [list(record_row(_record(i))) for i in range(5)]
    rows[2][3] = None  # provider: a column that holds no NULL
    spill = tmp_path / "gwcore-ledger-spill-1-1.jsonl"
    spill.write_text("".join(json.dumps(r) + "\n" for r in rows))

    async def main():
        ledger = UsageLedger(SqliteStore(str(path)), spill_dir=str(tmp_path))
        await ledger.start()
        try:
            assert await _count(ledger.store) == 4
            assert ledger.set_aside == 1
        finally:
            await ledger.stop()

    run(main())
    assert not spill.exists()
    assert len(glob.glob(str(tmp_path / "gwcore-ledger-refused-*.jsonl"))) == 1


_ANY_TEXT = st.lists(st.integers(0, 0x10FFFF), max_size=8).map(
    lambda codes: "".join(map(chr, codes))  # surrogates and NUL among them
) | st.sampled_from(["\ud800", "a\x00b", "\udc00\ud83d", "ok"])
_ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | _ANY_TEXT
)


# A column that holds no NULL gets a value of its own type most of the time: else nearly every
# row would need a NULL there, and none would reach the database.
_PLAUSIBLE = {
    "float8[]": st.floats(1e9, 2e9),
    "text[]": _ANY_TEXT,
    "bool[]": st.booleans(),
    "int4[]": st.integers(100, 599),
}
_ANY_ROW = st.tuples(
    *(
        st.one_of(_PLAUSIBLE[kind], _ANY_VALUE) if name in NOT_NULL else _ANY_VALUE
        for name, kind in zip(COLUMNS, PG_ARRAY_TYPES, strict=True)
    )
)


def test_a_repaired_row_is_one_the_database_stores(db_url):
    """Any row at all: ``storable_row`` either says a column that holds no NULL would need one,
    or gives a row that the database stores (SQLite and PostgreSQL), changing exactly the values
    it names."""
    loop = asyncio.new_event_loop()
    store = open_store(LedgerSettings(url=db_url))
    loop.run_until_complete(store.open())
    stored = []

    @settings(max_examples=150, deadline=None)
    @given(_ANY_ROW)
    def check(row):
        fixed = storable_row(row)
        if fixed is None:
            assert any(
                name in NOT_NULL and (value is None or _storable_kind(name, value) is None)
                for name, value in zip(COLUMNS, row, strict=True)
            )
            return
        values, replaced = fixed
        for name, old, new in zip(COLUMNS, row, values, strict=True):
            assert (new is not old) == (name in replaced)
            assert new is not None or name not in NOT_NULL
        loop.run_until_complete(store.write([values]))  # raises if the database refuses it
        stored.append(values)

    try:
        check()
        assert stored  # (rows did reach the database)
        count = loop.run_until_complete(_count(store))
        assert 0 < count <= len(stored)  # (two rows may share a key: the second is skipped)
    finally:
        loop.run_until_complete(store.close())
        loop.close()


def _storable_kind(name: str, value):
    from gwcore.ledger import schema

    return schema._storable(PG_ARRAY_TYPES[COLUMNS.index(name)], value)


def test_refused_at_exit_spilled_then_imported(tmp_path):
    path = tmp_path / "ledger.db"

    async def main():
        ledger = UsageLedger(
            SqliteStore(str(path), busy_timeout=0.05),
            flush_interval=3600,
            shutdown_timeout=0.5,
            spill_dir=str(tmp_path),
        )
        await ledger.start()
        for i in range(40):
            ledger.record(_record(i))
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        await ledger.stop()
        locker.execute("ROLLBACK")
        locker.close()
        spills = glob.glob(str(tmp_path / "gwcore-ledger-spill-*.jsonl"))
        assert len(spills) == 1
        again = UsageLedger(SqliteStore(str(path)), spill_dir=str(tmp_path))
        await again.start()
        assert await _count(again.store) == 40
        assert not glob.glob(str(tmp_path / "gwcore-ledger-spill-*"))
        await again.stop()

    run(main())


# ---- processes: SIGTERM and workers --------------------------------------------------------------


def _process_config(tmp_path: Path, url: str, mock_port: int, **ledger) -> Path:
    return write_config(
        tmp_path / "gwcore.yaml",
        {
            "from_env": False,
            "providers": [
                {
                    "name": "mock",
                    "type": "openai_compatible",
                    "base_url": f"http://127.0.0.1:{mock_port}/v1",
                    "models": [MODEL],
                }
            ],
            "ledger": {"url": url, **ledger},
            "pricing": {MODEL: PRICE},
        },
    )


@contextlib.contextmanager
def _mock_process(tmp_path: Path):
    port = free_port()
    cmd = ["-m", "gwcore.testing.mock_upstream", "--port", str(port), "--events", "8"]
    proc = subprocess.Popen(
        [sys.executable, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield port
    finally:
        proc.kill()
        proc.wait()


def _serve(tmp_path: Path, config: Path, port: int, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        serve_cmd(port, config, workers),
        cwd=tmp_path,
        env=clean_env(GWCORE_MASTER_KEY=MASTER),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _count_url(url: str) -> int:
    store = open_store(LedgerSettings(url=url))
    await store.open()
    try:
        return await _count(store)
    finally:
        await store.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_sigterm_flushes_the_queue(kind, tmp_path):
    """Nothing is written before the signal (huge batch, hour-long interval), all of it after."""
    n = 30
    with backend_url(kind, tmp_path) as url, _mock_process(tmp_path) as mock_port:
        config = _process_config(
            tmp_path, url, mock_port, batch_size=100_000, flush_interval_ms=3_600_000
        )
        port = free_port()
        proc = _serve(tmp_path, config, port)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"authorization": f"Bearer {MASTER}"}
            ) as client:
                for _ in range(n):
                    with client.stream("POST", "/v1/chat/completions", json=chat()) as r:
                        r.read()
                        assert r.status_code == 200
            assert run(_count_url(url)) == 0
            proc.terminate()
            out = proc.communicate(timeout=30)[0].decode()
            assert proc.returncode == 0, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert run(_count_url(url)) == n, out
        assert f"{n} written, 0 dropped, 0 spilled" in out


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_workers_share_one_ledger(kind, tmp_path):
    n = 80
    with backend_url(kind, tmp_path) as url, _mock_process(tmp_path) as mock_port:
        config = _process_config(tmp_path, url, mock_port, flush_interval_ms=10)
        port = free_port()
        proc = _serve(tmp_path, config, port, workers=2)
        ids = []
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc)
            for _ in range(n):  # a new connection each time: SO_REUSEPORT spreads them
                with httpx.Client(
                    base_url=f"http://127.0.0.1:{port}",
                    headers={"authorization": f"Bearer {MASTER}"},
                ) as client:
                    r = client.post("/v1/chat/completions", json=chat(False))
                    assert r.status_code == 200
                    ids.append(r.headers["x-request-id"])
            proc.terminate()
            out = proc.communicate(timeout=30)[0].decode()
            assert proc.returncode == 0, out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert len({i[:12] for i in ids}) == 2, "both workers answered"  # per-worker id prefix

        async def stored():
            store = open_store(LedgerSettings(url=url))
            await store.open()
            try:
                entries, _ = await store.log(UsageFilter(), 1000, None)
                return {e["request_id"] for e in entries}
            finally:
                await store.close()

        assert run(stored()) == set(ids)


def test_sqlite_row_binds_null_and_booleans_as_sqlite_would(tmp_path):
    """None and bools reach SQLite as NULL, 0 and 1, typed."""
    path = tmp_path / "ledger.db"

    async def main():
        store = SqliteStore(str(path))
        await store.open()
        rec = _record(1, key_id=None, cost=None, error=None, aborted=True, stream=False)
        await store.write([record_row(rec)])
        await store.close()

    run(main())
    con = sqlite3.connect(path)
    row = con.execute(
        "SELECT key_id, typeof(key_id), cost_nanousd, typeof(cost_nanousd), stream, typeof(stream),"
        " aborted, typeof(aborted) FROM usage_records"
    ).fetchone()
    con.close()
    assert row == (None, "null", None, "null", 0, "integer", 1, "integer")


_NULLABLE = {
    "key_id": st.text(max_size=8),
    "prompt_tokens": st.integers(0, 2**40),
    "completion_tokens": st.integers(0, 2**40),
    "total_tokens": st.integers(0, 2**40),
    "cached_tokens": st.integers(0, 2**40),
    "reasoning_tokens": st.integers(0, 2**40),
    "cost_nanousd": st.integers(-(2**62), 2**62),
    "ttfb_ms": st.floats(0, 1e6),
    "duration_ms": st.floats(0, 1e6),
    "error": st.text(max_size=8),
}


@st.composite
def _rows(draw) -> list[tuple]:
    rows = []
    for i in range(draw(st.integers(1, 260))):  # more than two statements' worth of rows
        values = {
            "created_at": 1_700_000_000.0 + i,
            "request_id": f"req-{i}",
            "provider": "mock",
            "requested_model": MODEL,
            "upstream_model": MODEL,
            "route": draw(st.sampled_from(["relay", "translated"])),
            "stream": draw(st.booleans()),
            "status": draw(st.sampled_from([200, 499, 502])),
            "aborted": draw(st.booleans()),
        }
        for name, values_of in _NULLABLE.items():
            values[name] = draw(st.none() | values_of)
        rows.append(tuple(values[name] for name in COLUMNS))
    return rows


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=_rows())
def test_sqlite_stores_any_mix_of_nulls_exactly(rows):
    """The SQLite store writes each group of rows that share their NULL columns with a statement
    naming only the others (``rows_by_nulls``): whatever the mix, every row reads back as it was
    written, NULL as NULL, booleans as 0 and 1."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ledger.db")

        async def main():
            store = SqliteStore(path)
            await store.open()
            try:
                await store.write(rows)
            finally:
                await store.close()

        run(main())
        con = sqlite3.connect(path)
        try:
            stored = con.execute(
                f"SELECT {', '.join(COLUMNS)} FROM usage_records ORDER BY created_at"
            ).fetchall()
        finally:
            con.close()
    expected = [tuple(int(v) if isinstance(v, bool) else v for v in row) for row in rows]
    assert stored == expected
