"""Ledger benchmark: relay streaming CPU per request with the usage ledger on (SQLite) and off.

Workload: the relay benchmark's (``bench_relay.py``; the load generator and the process helpers are
``gwcore.benchmark``'s): ``POST /v1/chat/completions`` with ``"stream": true``, answered by the mock
upstream with 33 SSE events. Two ``gwcore serve --workers 1`` processes run side by side, the same
config but for the ledger: ``on`` writes every usage record to a SQLite file (the default backend:
WAL, ``synchronous=FULL``, batches from a writer thread), ``off`` has ``GWCORE_LEDGER=off``. Both
keep everything else (metrics, no usage log line, no auth). Both run on CPU 0; the mock and the
load generator on CPU 1. Rounds interleave the two (off on, on off, ...); per round and target:
relay CPU per stream (utime+stime of the gwcore process, its writer thread included, from
``/proc/<pid>/stat``) over the measured window; the report gives medians and the ratio on/off.
Afterwards it checks that the ledger holds one row per stream the ``on`` process served.

    python bench/bench_ledger.py [--duration 5] [--rounds 5] [--concurrency 1,32]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gwcore.benchmark import loadgen
from gwcore.benchmark.loadgen import DONE, Exchange, Expect, chat_body, http_request
from gwcore.benchmark.services import (
    MODEL,
    Pinning,
    Service,
    free_port,
    served_requests,
    start_mock,
    wait_listening,
)

TARGETS = ("off", "on")
PIN = Pinning(False)  # set by main()


def exchange(events: int) -> Exchange:
    return Exchange(
        http_request("/v1/chat/completions", chat_body(MODEL, True)), Expect(events, DONE)
    )


def start_gwcore(tmp: Path, mock_port: int, ledger: bool) -> Service:
    port = free_port()
    name = "on" if ledger else "off"
    config = tmp / f"gwcore-{name}.yaml"
    config.write_text(
        "from_env: false\nproviders:\n"
        f'  - {{name: mock, type: openai_compatible, base_url: "http://127.0.0.1:{mock_port}/v1",'
        f" models: [{MODEL}]}}\n"
        f'ledger: {{url: "sqlite:///{tmp / "ledger.db"}", spill_dir: "{tmp}"}}\n'
    )
    cmd = [
        *PIN.prefix(PIN.target_cpu),
        sys.executable,
        "-m",
        "gwcore.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--workers", "1", "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWCORE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if not ledger:
        env["GWCORE_LEDGER"] = "off"
    log = tmp / f"gwcore-{name}.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
    wait_listening(proc, port, f"gwcore serve (ledger {name})")
    return Service(name, proc, port, proc.pid, log)


async def bench(args, services: dict) -> dict:
    for name in TARGETS:
        ok, what = await loadgen.probe(services[name].port, exchange(args.events))
        print(f"probe {name}: {'ok' if ok else 'FAILED'}: {what}", file=sys.stderr)
        if not ok:
            raise SystemExit(1)
    results: dict = {(t, c): [] for t in TARGETS for c in args.concurrency}
    for i in range(args.rounds):
        order = TARGETS if i % 2 == 0 else TARGETS[::-1]
        for c in args.concurrency:
            for name in order:
                svc = services[name]
                pids = {"relay": svc.cpu_pid, "mock": services["mock"].cpu_pid}
                r = await loadgen.run_load(
                    svc.port, c, args.warmup, args.duration, exchange(args.events), pids, PIN
                )
                results[name, c].append(r)
                errors = sum(r["errors"].values())
                print(
                    f"round {i + 1} c={c:<3} ledger {name:<3} {r['rps']:8.0f} streams/s "
                    f"{r['relay_cpu_us']:7.1f} us CPU/stream  errors {errors}",
                    file=sys.stderr,
                )
    return {"results": results}


def med(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", default="1,32", help="comma-separated stream counts")
    p.add_argument("--events", type=int, default=33, help="SSE events per answer")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    global PIN
    PIN = Pinning.detect()
    PIN.pin_self()
    import uvloop

    services: dict = {}
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-ledger-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            services["mock"] = start_mock(tmp, args.events, PIN)
            services["off"] = start_gwcore(tmp, services["mock"].port, ledger=False)
            services["on"] = start_gwcore(tmp, services["mock"].port, ledger=True)
            out = uvloop.run(bench(args, services))
            records = served_requests(services["on"].port)  # before the stop below
        finally:
            for svc in services.values():
                svc.stop()  # SIGTERM: the ledger flushes before the process exits
        with sqlite3.connect(tmp / "ledger.db") as con:
            rows = con.execute("SELECT COUNT(*) FROM usage_records").fetchone()[0]
        on_log = (tmp / "gwcore-on.log").read_text(errors="replace")

    print(f"\n## Ledger on (SQLite) vs off: relay CPU per stream, medians of {args.rounds} rounds")
    print(
        f"pinned: {PIN.enabled}; {args.duration:.0f} s per round; {args.events} events per stream\n"
    )
    print(
        "| concurrency | off µs/stream | on µs/stream | on/off | paired on/off "
        "| off streams/s | on streams/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        off = out["results"]["off", c]
        on = out["results"]["on", c]
        cpu_off = med([r["relay_cpu_us"] for r in off])
        cpu_on = med([r["relay_cpu_us"] for r in on])
        # Each round's two runs are neighbours in time: their ratio is less exposed to drift.
        paired = med([b["relay_cpu_us"] / a["relay_cpu_us"] for a, b in zip(off, on, strict=True)])
        print(
            f"| {c} | {cpu_off:.1f} | {cpu_on:.1f} | {cpu_on / cpu_off:.3f} | {paired:.3f} "
            f"| {med([r['rps'] for r in off]):.0f} | {med([r['rps'] for r in on]):.0f} |"
        )
    errors = {
        name: sum(
            sum(r["errors"].values())
            for rs in (out["results"][name, c] for c in args.concurrency)
            for r in rs
        )
        for name in TARGETS
    }
    print(f"\nresponse errors: {errors}")
    print(
        f"ledger rows: {rows}; requests the 'on' process counted (its /metrics): {records}"
        f" -> {'all stored' if rows == records else 'MISMATCH'}"
    )
    stopped = [line for line in on_log.splitlines() if "usage ledger stopped" in line]
    print(stopped[-1].split("] ", 1)[-1] if stopped else "no 'usage ledger stopped' line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
