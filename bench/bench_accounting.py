"""Usage accounting, piece by piece: what each piece of a stream's accounting costs in a hot loop.

The pieces ``gwcore.benchmark.floor_accounted`` adds to the floor (and gwcore runs too), on the
relay benchmark's stream (33 events from ``gwcore.testing.mock_upstream``, usage asked for):

- the scanner over the whole chunked body in one piece (``StreamObserver`` made and fed, the
  usage event elided), and the relay lane's scan of its plain events as one read
  (``lane_scan``), per stream;
- ``usage_counts`` of the stream's usage object; ``chat_request_fields`` and ``with_member`` of
  the request body;
- the record: ``new_record``, its tokens, ``PricedFanout.record`` (a priced model, a sink that
  keeps nothing);
- the ledger's row: ``schema.record_row`` and the SQLite store's insert (``SqliteStore``'s write
  of 100 rows a transaction, through its own thread as the ledger writes), per row, in CPU time
  (user and kernel, both threads: the WAL's fsync at each commit included).

Hot loops (``timeit``, the best of ``--repeat``): caches warm and branches predicted, so each
figure is a floor for its piece. In a server, between the kernel's work and other streams, the
same code runs colder: ``bench_relay.py --targets floor,floor_accounted`` measures the pieces
together in place, and ``bench_relay_instructions.py`` counts their instructions.

    python bench/bench_accounting.py [--number 20000] [--repeat 5]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
import timeit
from pathlib import Path

from gwcore.benchmark.loadgen import chat_body
from gwcore.ledger.schema import record_row
from gwcore.ledger.sqlite import SqliteStore
from gwcore.pricing import PriceTable
from gwcore.sse import (
    IMPLEMENTATION,
    StreamObserver,
    chat_request_fields,
    lane_scan,
    usage_counts,
    with_member,
)
from gwcore.testing.mock_upstream import chat_stream_events
from gwcore.usage import PricedFanout, new_record

MODEL = "gpt-4o-mini"  # a model of the built-in price table
INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


class _NullSink:
    def record(self, rec) -> None:
        pass


def _chunked(events: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)


def pieces() -> list[tuple[str, object]]:
    """(what, a call of it) for each hot-loop piece."""
    events = chat_stream_events(MODEL, 33, True, 11)
    body = _chunked(events) + b"0\r\n\r\n"
    plain = _chunked([e for e in events if b'"usage":null' in e])
    request = chat_body(MODEL, True)
    observer = StreamObserver(True, True)
    observer.feed(body)
    usage = observer.usage
    pricing = PricedFanout(PriceTable.from_config(None), [_NullSink()])

    def observe() -> None:
        StreamObserver(True, True).feed(body)

    def account() -> None:
        rec = new_record("req-0123456789abcdef", "bench", MODEL, MODEL, "relay", True, None)
        rec.prompt_tokens, rec.completion_tokens, rec.total_tokens = 11, 30, 41
        pricing.record(rec)

    return [
        (f"scanner: a {len(events)}-event stream, made, fed in one piece, elided", observe),
        (f"lane scan: its {lane_scan(plain)} plain events as one read", lambda: lane_scan(plain)),
        ("usage_counts of its usage object", lambda: usage_counts(usage)),
        ("chat_request_fields of the request body", lambda: chat_request_fields(request)),
        (
            "with_member: include_usage added to the body",
            lambda: with_member(request, INCLUDE_USAGE),
        ),
        ("record: new_record, tokens, PricedFanout.record", account),
    ]


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)  # (every thread of this process)
    return r.ru_utime, r.ru_stime


def ledger_row_cpu(batches: int) -> tuple[float, float, float]:
    """(µs of CPU a row for ``record_row``; user and kernel µs a row for the SQLite store's
    insert), 100-row batches written through ``SqliteStore.write`` (its thread: the ledger's
    way)."""

    async def run(path: str) -> tuple[float, float, float]:
        store = SqliteStore(path)
        await store.open()
        try:
            recs = []
            for i in range(batches * 100):
                rec = new_record(f"req-{i:016x}", "bench", MODEL, MODEL, "relay", True, None)
                rec.created_at = 1.7e9 + i * 1e-3
                rec.status, rec.prompt_tokens, rec.total_tokens, rec.cost = 200, 11, 41, 1e-5
                recs.append(rec)
            t0 = time.process_time()
            rows = [record_row(rec) for rec in recs]
            t1 = time.process_time()
            u0, s0 = _cpu()
            for b in range(batches):
                await store.write(rows[b * 100 : (b + 1) * 100])
            u1, s1 = _cpu()
        finally:
            await store.close()
        n = batches * 100
        return (t1 - t0) / n * 1e6, (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6

    with tempfile.TemporaryDirectory(prefix="gwcore-bench-accounting-") as tmp:
        return asyncio.run(run(str(Path(tmp) / "ledger.db")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=20000, help="calls a timing")
    p.add_argument("--repeat", type=int, default=5, help="timings; the best is reported")
    p.add_argument("--batches", type=int, default=500, help="100-row ledger batches written")
    args = p.parse_args(argv)
    print(
        f"# Usage accounting, piece by piece (scanner: {IMPLEMENTATION}; hot loops, best of "
        f"{args.repeat})\n"
    )
    print("| piece | ns a call |\n|---|--:|")
    for what, call in pieces():
        t = min(timeit.repeat(call, number=args.number, repeat=args.repeat)) / args.number
        print(f"| {what} | {t * 1e9:,.0f} |")
    row, user, kernel = ledger_row_cpu(args.batches)
    print(f"| ledger: record_row, a row | {row * 1000:,.0f} |")
    print(
        f"| ledger: SQLite insert, 100 rows a commit, a row (CPU) | {(user + kernel) * 1000:,.0f} |"
    )
    print(
        f"| of which kernel (the WAL's writes, an fsync a commit; the split is sampled at the "
        f"clock's ticks) | {kernel * 1000:,.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
