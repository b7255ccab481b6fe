"""Ledger batch benchmark: what one batch of the usage ledger's writer costs, on SQLite.

A gateway that is not saturated writes small batches (every ``flush_interval``, whatever has
arrived), so the cost of a batch itself (the writer's wake-up, the hand-off to the store's
thread and back, BEGIN and COMMIT) is paid for a few records. This records ``--per`` usage records
every interval, lets the writer take them as one batch, and reports per interval:

- CPU (user and kernel, this process: the event loop and the store's thread), median of
  ``--rounds``, minus the same loop's CPU without records (the driver's own sleeps);
- with ``--instructions``: user-space instructions per interval, counted by callgrind from two
  runs of different lengths (their difference over their intervals' difference: start-up and
  shutdown cancel out).

    python bench/bench_ledger_batch.py [--per 1] [--seconds 3] [--rounds 3] [--instructions]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

INTERVAL = 0.02


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _record(i: int):
    from gwcore.usage import UsageRecord

    return UsageRecord(
        request_id=f"r{i:08d}",
        provider="mock",
        requested_model="gpt-4o-mini",
        upstream_model="gpt-4o-mini-2024-07-18",
        route="relay",
        stream=True,
        status=200,
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        created_at=1.7e9 + i,
        cost=0.001,
        ttfb_ms=1.5,
        duration_ms=3.0,
    )


async def _ledger_run(per: int, seconds: float, directory: str) -> tuple[int, float, float]:
    from gwcore.ledger import UsageLedger
    from gwcore.ledger.sqlite import SqliteStore

    ledger = UsageLedger(SqliteStore(os.path.join(directory, "ledger.db")), flush_interval=INTERVAL)
    await ledger.start()
    i = 0
    for _ in range(10):  # warm-up: statements prepared, pages cached
        for _ in range(per):
            ledger.record(_record(i))
            i += 1
        await asyncio.sleep(INTERVAL)
    await ledger.flush()
    u0, s0 = _cpu()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        for _ in range(per):
            ledger.record(_record(i))
            i += 1
        n += 1
        await asyncio.sleep(INTERVAL)
    await ledger.flush()
    u1, s1 = _cpu()
    await ledger.stop()
    return n, (u1 - u0) / n, (s1 - s0) / n


async def _idle_run(seconds: float) -> tuple[int, float, float]:
    u0, s0 = _cpu()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds:
        n += 1
        await asyncio.sleep(INTERVAL)
    u1, s1 = _cpu()
    return n, (u1 - u0) / n, (s1 - s0) / n


def _one(per: int, seconds: float, idle: bool) -> tuple[int, float, float]:
    import uvloop

    with tempfile.TemporaryDirectory(prefix="gwcore-bench-ledger-") as directory:
        if idle:
            return uvloop.run(_idle_run(seconds))
        return uvloop.run(_ledger_run(per, seconds, directory))


def _instructions(per: int) -> int | None:
    """User-space instructions per interval: callgrind over runs of 1 and 3 seconds."""
    if shutil.which("valgrind") is None:
        return None
    totals = {}
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-ledger-cg-") as tmp:
        for seconds in (1, 3):
            out = os.path.join(tmp, f"{seconds}.callgrind")
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            cmd += [sys.executable, __file__, "--child", "--per", str(per)]
            cmd += ["--seconds", str(seconds)]
            env = dict(os.environ, PYTHONHASHSEED="0")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            intervals = int(re.search(r"intervals=(\d+)", done.stdout).group(1))
            with open(out) as fh:
                total = next(int(line.split()[1]) for line in fh if line.startswith("totals:"))
            totals[seconds] = (intervals, total)
    (n1, t1), (n3, t3) = totals[1], totals[3]
    return round((t3 - t1) / (n3 - n1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per", type=int, default=1, help="records per interval (one batch)")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--instructions", action="store_true", help="also count them (callgrind)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        n, user, kernel = _one(args.per, args.seconds, idle=False)
        print(f"intervals={n} user={user * 1e6:.1f} kernel={kernel * 1e6:.1f}")
        return 0
    users, kernels = [], []
    for _ in range(args.rounds):
        _, user, kernel = _one(args.per, args.seconds, idle=False)
        _, idle_user, idle_kernel = _one(args.per, args.seconds, idle=True)
        users.append((user - idle_user) * 1e6)
        kernels.append((kernel - idle_kernel) * 1e6)
    user, kernel = statistics.median(users), statistics.median(kernels)
    print(
        f"{args.per} record(s) a batch, every {INTERVAL * 1000:g} ms, medians of {args.rounds} "
        f"rounds: user {user:.0f} µs, kernel {kernel:.0f} µs a batch "
        f"({(user + kernel) / args.per:.1f} µs a record)"
    )
    if args.instructions:
        count = _instructions(args.per)
        if count is None:
            print("valgrind is not installed: no instruction count")
        else:
            print(f"user-space instructions a batch: {count:,} ({count / args.per:,.0f} a record)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
