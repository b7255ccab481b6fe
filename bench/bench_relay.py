"""Relay benchmark: streaming chat through gwcore against nginx, a Python floor and no relay at all.

Workload: ``POST /v1/chat/completions`` with ``"stream": true``; the mock upstream answers 33 SSE
events, chunked, one write per event. Targets, in interleaved rounds (direct nginx gwcore floor,
direct nginx gwcore floor, ...), each at every concurrency:

- ``direct``: the load generator talks to the mock itself (the ceiling);
- ``nginx``: one nginx worker, ``proxy_pass``, ``proxy_buffering off``, a keep-alive upstream;
  its access log off;
- ``gwcore``: ``gwcore serve --workers 1`` with its default logging (usage accounting is always on);
- ``floor``: ``gwcore.benchmark.floor``, the least a Python process on uvloop can do;
- ``gwcore_quiet`` (only when named in ``--targets``): gwcore at ``--log-level WARNING``, which
  prices the per-request usage log line;
- ``gwcore_noledger`` (only when named in ``--targets``): gwcore with ``GWCORE_LEDGER=off``, which
  prices the ledger (usage records still made, priced and counted in the metrics; not stored).
  Information only: the issue's targets are with usage accounting on.
- ``gwcore_nolane`` (only when named in ``--targets``): gwcore with ``GWCORE_LANE=off``: every
  upstream read through ``data_received`` (the relay lane off), which prices the lane.
- ``nginx_log`` (only when named in ``--targets``): the same nginx with its default access log
  on (a ``combined`` line per request, written to a file as the request ends): nginx keeping a
  record of each request as gwcore does. Information only: the targets are against ``nginx``.
- ``floor_accounted`` (only when named in ``--targets``): ``gwcore.benchmark.floor_accounted``,
  the floor plus the least a gateway must do to account each stream (the request's model read
  and usage asked for, the scanner over each read with the injected usage event elided, one
  priced usage record per stream in the SQLite ledger), with gwcore's own compiled pieces: what
  usage accounting costs at the least in a Python process on uvloop. Information only.
- ``floor_counted`` (only when named in ``--targets``): the same, its records kept in memory
  (``MemorySink``) and unpriced instead of priced and stored: the accounting the relay issue
  itself asked for (the record and an in-memory sink), the least reading of "usage accounting
  on". Information only.
- ``gwcore_base`` (with ``--base DIR``): gwcore from another checkout, ``DIR``, whose extensions
  are built in place there (``python setup.py build_ext --inplace``), e.g. a ``git worktree`` of
  the commit before a change: the change's effect in the same run, rounds interleaved. With
  ``--base-python EXE`` it runs on that interpreter instead (without ``--base``: this checkout on
  it), e.g. a distribution's optimized build of the same Python version, in a virtual environment
  with gwcore's dependencies: the interpreter's share of the cost. The report names each gwcore's
  interpreter (version, and whether libpython is a shared library or linked into the executable).

The relay under test runs on CPU 0; the mock, the load generator (this process) and wrk on CPU 1.
Per target and concurrency: full streams per second, relay CPU per stream (utime+stime from
``/proc/<pid>/stat``, nginx's worker only), time to first event (request sent -> first ``data:``
byte of the body) p50/p99, time to last byte p50; medians over rounds, with ratios gwcore / nginx.
Every response is checked (status 200, complete chunked framing, 33 ``data:`` events ending with
``data: [DONE]``); anything else is counted as an error per target and reported.

    python bench/bench_relay.py [--duration 5] [--rounds 3] [--concurrency 1,32] [--out DIR]
                                [--no-wrk] [--profile SECONDS] [--base DIR] [--base-python EXE]

The services, the load generator, the /proc accounting and the medians come from
``gwcore.benchmark`` (the harness of ``gwcore bench``); this script keeps its targets, its report
and the py-spy profile.

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

from gwcore.benchmark import loadgen
from gwcore.benchmark.loadgen import DONE, SDK_HEADERS, Exchange, Expect, chat_body, http_request
from gwcore.benchmark.procstat import interpreter
from gwcore.benchmark.report import fmt, pct, ratio, summarize
from gwcore.benchmark.services import (
    MODEL,
    Pinning,
    start_floor,
    start_gwcore,
    start_mock,
    start_nginx,
    usage_log_lines,
)

BODY = chat_body(MODEL, True)
REQUESTS = [http_request("/v1/chat/completions", BODY)]  # (--sdk-headers: main() swaps it)
PIN = Pinning(False)  # set by main()


# What the information-only gwcore targets switch off.
OFF_SWITCHES = {
    "gwcore_noledger": {"GWCORE_LEDGER": "off"},
    "gwcore_nolane": {"GWCORE_LANE": "off"},
}


def exchange(events: int) -> Exchange:
    return Exchange(REQUESTS[0], Expect(events, DONE))


async def run_load(
    port: int, concurrency: int, warmup: float, duration: float, events: int, pids: dict
) -> dict:
    return await loadgen.run_load(port, concurrency, warmup, duration, exchange(events), pids, PIN)


# -- py-spy -------------------------------------------------------------------------------------


def top_frames(raw: str, limit: int = 15) -> tuple[int, list[tuple[str, int]]]:
    """py-spy raw (collapsed) stacks -> total samples and the top leaf frames by own samples."""
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaf = re.sub(r":\d+\)$", ")", leaf)  # own time per function, not per line
        leaf = re.sub(r"\((?:[^()]*/)?([^/()]+/[^/()]+)\)$", r"(\1)", leaf)  # last two path parts
        own[leaf] += int(count)
        total += int(count)
    return total, own.most_common(limit)


async def run_profile(
    tmp: Path, port: int, pid: int, concurrency: int, seconds: float, events: int, pids: dict
) -> dict:
    exe = shutil.which("py-spy")
    if exe is None:
        return {"error": "py-spy not installed (pip install py-spy)"}
    out = tmp / "profile.txt"
    cmd = [
        *PIN.prefix(PIN.load_cpu),
        exe,
        "record",
        "--native",
        "-r",
        "200",
        "-d",
        str(round(seconds)),
    ]
    cmd += ["-p", str(pid), "-f", "raw", "-o", str(out)]
    load = asyncio.ensure_future(run_load(port, concurrency, 0.5, seconds + 1.5, events, pids))
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    err = (await proc.communicate())[1].decode(errors="replace")
    result = await load
    if not out.exists():
        return {"error": f"py-spy failed: {err.strip()[-300:]}"}
    total, frames = top_frames(out.read_text())
    return {
        "samples": total,
        "frames": frames,
        "errors_under_profile": result["errors"],
        "raw": out.read_text(),
    }


# -- report -------------------------------------------------------------------------------------


def report(args, summary, wrk, profile, notes) -> str:
    def get(t, c, m):
        s = summary.get((t, c))
        return s[m] if s else None

    def added(t, c):
        a, d = get(t, c, "ttfe_p50_us"), get("direct", c, "ttfe_p50_us")
        return a - d if a is not None and d is not None else None

    def positive_ratio(a, b):
        return ratio(a, b) if a is not None and b is not None and a > 0 and b > 0 else None

    lines = [
        f"# Relay benchmark: streaming chat, {args.events} events one write each"
        + (f", {args.pace_ms:g} ms apart" if args.pace_ms else "")
        + ", 1 relay worker",
        "",
        f"Medians over {args.rounds} interleaved rounds of {args.duration:g} s "
        f"(+{args.warmup:g} s warm-up each). Relay on CPU {PIN.target_cpu}; mock + load generator "
        f"on CPU {PIN.load_cpu}"
        f"{'' if PIN.enabled else ' (NOT pinned: taskset or a second CPU missing)'}. "
        "Times in µs. CPU = relay process utime+stime per stream (nginx: its worker). "
        "Spread = (max - min) / median over rounds. CPU0 other = CPU 0 busy minus the relay "
        "(other processes on the relay's core). CPU1 = CPU 1 busy (mock, load generator, others). "
        "syscr / syscw = the relay's read/readv and write/writev calls per stream from "
        "/proc/<pid>/io (recv/send are not counted: nginx reads with recv), which shows how many "
        "events each call coalesced.",
        "",
        "| target | c | req/s | spread | relay CPU µs/req | spread | relay busy | relay syscr "
        "/ syscw per req | TTFE p50 | TTFE p99 | TTLB p50 | CPU0 other | CPU1 | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in args.concurrency:
        for t in args.targets:
            s = summary.get((t, c))
            if s is None:
                continue
            lines.append(
                f"| {t} | {c} | {fmt(s['rps'])} | {pct(s['rps_spread'])} "
                f"| {fmt(s['relay_cpu_us'], 1)} | {pct(s['cpu_spread'])} | {pct(s['relay_busy'])} "
                f"| {fmt(s['relay_reads'])} / {fmt(s['relay_writes'])} "
                f"| {fmt(s['ttfe_p50_us'])} | {fmt(s['ttfe_p99_us'])} | {fmt(s['ttlb_p50_us'])} "
                f"| {pct(s['cpu0_other'])} | {pct(s['cpu1_busy'])} | {sum(s['errors'].values())} |"
            )
    lines += [
        "",
        "Relay CPU per stream split (medians over rounds, from the utime and stime of "
        "/proc/<pid>/stat): user space, the relay's own code; kernel, the reads, writes and "
        "wake-ups.",
        "",
        "| target | c | user µs/req | kernel µs/req |",
        "|---|--:|--:|--:|",
    ]
    for c in args.concurrency:
        for t in args.targets:
            s = summary.get((t, c))
            if s is None or s.get("relay_user_us") is None or s.get("relay_cpu_us") is None:
                continue
            kernel = s["relay_cpu_us"] - s["relay_user_us"]
            lines.append(f"| {t} | {c} | {fmt(s['relay_user_us'], 1)} | {fmt(kernel, 1)} |")
    cs = args.concurrency
    lines += [
        "",
        "## Ratios",
        "",
        "| ratio | " + " | ".join(f"c={c}" for c in cs) + " | target |",
        "|---|" + "--:|" * len(cs) + "---|",
    ]

    def cpu_ratio(a, b):
        """Target ``a``'s relay CPU a stream over target ``b``'s, per concurrency."""
        return lambda c: ratio(get(a, c, "relay_cpu_us"), get(b, c, "relay_cpu_us"))

    rows = [
        ("gwcore CPU/req ÷ nginx CPU/req", "<= 1.00", cpu_ratio("gwcore", "nginx")),
        (
            "gwcore CPU/req ÷ nginx_log CPU/req (nginx with its access log)",
            "(info)",
            cpu_ratio("gwcore", "nginx_log"),
        ),
        (
            "gwcore TTFE p50 added over direct ÷ nginx's",
            "<= 1.00 at c=1",
            lambda c: positive_ratio(added("gwcore", c), added("nginx", c)),
        ),
        (
            "gwcore req/s ÷ nginx req/s",
            "(info)",
            lambda c: ratio(get("gwcore", c, "rps"), get("nginx", c, "rps")),
        ),
        ("gwcore CPU/req ÷ gwcore_base CPU/req", "(info)", cpu_ratio("gwcore", "gwcore_base")),
        ("gwcore CPU/req ÷ floor CPU/req", "(info)", cpu_ratio("gwcore", "floor")),
        ("floor CPU/req ÷ nginx CPU/req", "(info)", cpu_ratio("floor", "nginx")),
        (
            "floor_accounted CPU/req ÷ nginx CPU/req",
            "(info)",
            cpu_ratio("floor_accounted", "nginx"),
        ),
        (
            "floor_accounted CPU/req ÷ floor CPU/req (usage accounting at the least)",
            "(info)",
            cpu_ratio("floor_accounted", "floor"),
        ),
        (
            "floor_counted CPU/req ÷ nginx CPU/req (records in memory, unpriced)",
            "(info)",
            cpu_ratio("floor_counted", "nginx"),
        ),
        ("floor_counted CPU/req ÷ floor CPU/req", "(info)", cpu_ratio("floor_counted", "floor")),
    ]
    for name, target, fn in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(fn(c), 2) for c in cs) + f" | {target} |")
    lines += [
        "",
        "TTFE p50 added over direct (µs): "
        + "; ".join(
            f"{t} c={c}: {fmt(added(t, c))}" for c in cs for t in args.targets if t != "direct"
        )
        + " (n/a ratio: a non-positive difference, i.e. direct itself was slower: CPU 1 saturated)",
        "",
        "## Load generator check (CPU 1 holds the mock and the load generator)",
        "",
        "| target | c | built-in req/s | client µs/req | mock µs/req | CPU1 | wrk req/s "
        "| wrk relay CPU µs/req | wrk non-2xx / socket errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for c in cs:
        for t in args.targets:
            s = summary.get((t, c))
            if s is None:
                continue
            w = wrk.get((t, c))
            wcols = (
                f"{fmt(w['rps'])} | {fmt(w['relay_cpu_us'], 1)} | "
                f"{w['non_2xx']} / {w['socket_errors'] or 'none'}"
                if w
                else "- | - | -"
            )
            lines.append(
                f"| {t} | {c} | {fmt(s['rps'])} | {fmt(s['client_cpu_us'])} "
                f"| {fmt(s['mock_cpu_us'])} | {pct(s['cpu1_busy'])} | {wcols} |"
            )
    if profile:
        lines += [
            "",
            f"## gwcore profile under c={profile.get('concurrency')} "
            "(py-spy record --native, own samples per function)",
            "",
        ]
        if "error" in profile:
            lines.append(profile["error"])
        else:
            total = profile["samples"] or 1
            lines += ["| own % | frame |", "|--:|---|"]
            lines += [f"| {100 * n / total:.1f} | `{frame}` |" for frame, n in profile["frames"]]
            lines += ["", f"{profile['samples']} samples, idle excluded."]
    lines += ["", "## Checks", ""] + [f"- {n}" for n in notes]
    other = [s["cpu0_other"] for s in summary.values() if s["cpu0_other"] is not None]
    if other and max(other) > 0.1:
        lines.append(
            f"- CPU 0 was shared: other processes kept it up to {pct(max(other))} busy (median of "
            "a target) beyond the relay; relay CPU per stream and latencies are perturbed, so "
            "compare targets within a round and rerun on a quiet machine"
        )
    for c in cs:
        busy = [summary[(t, c)]["cpu1_busy"] for t in args.targets if (t, c) in summary]
        if busy and min(b or 0 for b in busy) > 0.9:
            lines.append(
                f"- c={c}: CPU 1 was saturated ({pct(min(busy))}+) by the mock and the load "
                "generator: req/s there is what CPU 1 allows, not the relay's capacity (compare "
                "relay busy and CPU per stream instead)"
            )
    for c in cs:
        for t in args.targets:
            s = summary.get((t, c))
            if s and s["errors"]:
                lines.append(f"- ERRORS {t} c={c}: {s['errors']}")
            if s and s["reconnects"]:
                lines.append(
                    f"- {t} c={c}: {s['reconnects']} reconnects (the server closed a keep-alive "
                    "connection, e.g. nginx's keepalive_requests 1000; not an error)"
                )
    return "\n".join(lines) + "\n"


# -- main ---------------------------------------------------------------------------------------


async def bench(args, services: dict, notes: list) -> tuple[dict, dict, dict]:
    mock = services["mock"]
    for name, svc in services.items():
        if name == "mock":
            continue
        ok, what = await loadgen.probe(svc.port, exchange(args.events))
        notes.append(f"probe {name}: {'OK' if ok else 'FAILED'}: {what}")
        print(f"probe {name}: {'OK' if ok else 'FAILED'}: {what}", file=sys.stderr, flush=True)
        if not ok:
            raise RuntimeError(f"{name} does not return a correct stream: {what}")
    rounds: dict = collections.defaultdict(list)
    gw_completed = 1  # the probe
    for r in range(args.rounds):
        for c in args.concurrency:
            for t in args.targets:
                if t not in services:
                    continue
                pids = {"mock": mock.cpu_pid}
                if t != "direct":
                    pids["relay"] = services[t].cpu_pid
                res = await run_load(
                    services[t].port, c, args.warmup, args.duration, args.events, pids
                )
                rounds[(t, c)].append(res)
                if t == "gwcore":
                    gw_completed += res["completed"]
                print(
                    f"round {r + 1} {t:6} c={c:<3} {res['rps']:8.0f} req/s  relay CPU "
                    f"{fmt(res['relay_cpu_us'], 1):>6} µs/req  TTFE p50 "
                    f"{fmt(res['ttfe_p50_us'])} µs"
                    f"  client {res['client_cpu_us']:5.0f} mock {res['mock_cpu_us']:5.0f} µs/req"
                    f"  CPU0 {pct(res['cpu0_busy'])} CPU1 {pct(res['cpu1_busy'])}"
                    f"  errors {sum(res['errors'].values())}",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(0.2)
    if "gwcore" in services:
        await asyncio.sleep(0.3)
        usage = usage_log_lines(services["gwcore"].log)
        if usage:
            notes.append(
                f"gwcore ran with its default logging (root level INFO): one gwcore.usage line per "
                f"request was written ({usage} lines to its stderr, a file; "
                f"{gw_completed} streams completed by the built-in client; counted before wrk)"
            )
        else:
            notes.append(
                "gwcore wrote no gwcore.usage lines: the per-request usage log is off by default "
                "(GWCORE_USAGE_LOG=1 turns it on); usage went to the ledger and the metrics"
            )
    wrk: dict = {}
    if args.wrk and shutil.which("wrk"):
        c = max(args.concurrency)
        for t in args.targets:
            if t in services:
                relay_pid = services[t].cpu_pid if t != "direct" else 0
                wrk[(t, c)] = await loadgen.run_wrk(
                    args.tmp,
                    services[t].port,
                    "/v1/chat/completions",
                    BODY,
                    c,
                    args.duration,
                    [relay_pid] if relay_pid else [],
                    PIN,
                )
                await asyncio.sleep(0.2)
    elif args.wrk:
        notes.append("wrk not installed: no load generator cross-check")
    profile: dict = {}
    if args.profile and "gwcore" in services:
        c = max(args.concurrency)
        pids = {"mock": mock.cpu_pid, "relay": services["gwcore"].cpu_pid}
        profile = await run_profile(
            args.tmp,
            services["gwcore"].port,
            services["gwcore"].cpu_pid,
            c,
            args.profile,
            args.events,
            pids,
        )
        profile["concurrency"] = c
    return dict(rounds), wrk, profile


def main(argv: list[str] | None = None) -> int:
    global PIN
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,32", help="comma-separated stream counts")
    p.add_argument(
        "--targets",
        default="direct,nginx,gwcore,floor",
        help="also: gwcore_quiet (gwcore --log-level WARNING), gwcore_noledger (GWCORE_LEDGER=off),"
        " gwcore_nolane (GWCORE_LANE=off)",
    )
    p.add_argument("--events", type=int, default=33, help="SSE events per answer")
    p.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="the mock's pause between events (0: back to back, the issue's workload, where a"
        " relay's read gathers several; a real model's tokens come tens of ms apart, each event"
        " a read of its own)",
    )
    p.add_argument("--out", type=Path, help="write report.md and results.json into this directory")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip the wrk cross-check")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the gwcore process under the highest concurrency (0: off)",
    )
    p.add_argument(
        "--base",
        type=Path,
        metavar="DIR",
        help="also gwcore_base: gwcore from the checkout DIR (extensions built in place there)",
    )
    p.add_argument(
        "--base-python",
        metavar="EXE",
        help="run gwcore_base on this interpreter (a virtual environment's python with gwcore's "
        "dependencies; without --base, gwcore_base is this checkout on it)",
    )
    p.add_argument(
        "--sdk-headers",
        action="store_true",
        help="send the headers the official openai Python SDK sends (a dozen), as a real client",
    )
    p.add_argument(
        "--provider-headers",
        action="store_true",
        help="the mock answers with the two dozen response headers OpenAI's API sends",
    )
    args = p.parse_args(argv)
    if args.sdk_headers:
        REQUESTS[0] = http_request("/v1/chat/completions", BODY, dict(SDK_HEADERS))
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.base_python is not None:
        exe = shutil.which(args.base_python)
        if exe is None:
            p.error(f"--base-python {args.base_python}: no such interpreter")
        args.base_python = exe
        if args.base is None:
            args.base = Path(__file__).resolve().parent.parent
    if args.base is not None:
        if not (args.base / "gwcore" / "__init__.py").is_file():
            p.error(f"--base {args.base}: no gwcore package there")
        args.base = args.base.resolve()
        if "gwcore_base" not in args.targets:
            args.targets.append("gwcore_base")
    elif "gwcore_base" in args.targets:
        p.error("gwcore_base needs --base DIR")

    PIN = Pinning.detect()
    notes = []
    PIN.pin_self()  # the load generator is this process
    if not PIN.enabled:
        notes.append("not pinned: taskset missing or fewer than 2 CPUs available")

    import uvloop

    services: dict = {}
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-relay-") as tmp:
        args.tmp = Path(tmp)
        try:
            services["mock"] = start_mock(
                args.tmp,
                args.events,
                PIN,
                provider_headers=args.provider_headers,
                pace_ms=args.pace_ms,
            )
            if args.sdk_headers or args.provider_headers:
                notes.append(
                    "real headers: "
                    + ", ".join(
                        what
                        for what, on in (
                            ("the SDK's request headers (--sdk-headers)", args.sdk_headers),
                            (
                                "a provider's response headers (--provider-headers)",
                                args.provider_headers,
                            ),
                        )
                        if on
                    )
                )
            if "nginx" in args.targets:
                svc = start_nginx(args.tmp, services["mock"].port, PIN)
                if svc is None:
                    notes.append("nginx is not installed: target skipped")
                    print("nginx is not installed: skipping it", file=sys.stderr)
                else:
                    services["nginx"] = svc
            if "nginx_log" in args.targets:
                svc = start_nginx(args.tmp, services["mock"].port, PIN, access_log=True)
                if svc is not None:
                    services["nginx_log"] = svc
            for name in (
                "gwcore",
                "gwcore_quiet",
                "gwcore_noledger",
                "gwcore_nolane",
                "gwcore_base",
            ):
                if name in args.targets:
                    services[name] = start_gwcore(
                        args.tmp,
                        services["mock"].port,
                        PIN,
                        name=name,
                        # the usage log line off, to price it; "gwcore" keeps the default
                        log_level="WARNING" if name == "gwcore_quiet" else None,
                        env={"PYTHONPATH": str(args.base)}
                        if name == "gwcore_base"
                        else OFF_SWITCHES.get(name),
                        python=args.base_python if name == "gwcore_base" else None,
                    )
                    notes.append(f"{name} runs on {interpreter(services[name].cpu_pid)}")
            if "floor" in args.targets:
                services["floor"] = start_floor(args.tmp, services["mock"].port, PIN)
            if "floor_accounted" in args.targets:
                services["floor_accounted"] = start_floor(
                    args.tmp, services["mock"].port, PIN, accounted=True
                )
            if "floor_counted" in args.targets:
                services["floor_counted"] = start_floor(
                    args.tmp, services["mock"].port, PIN, accounted=True, ledger=False
                )
            if "direct" in args.targets:
                services["direct"] = services["mock"]
            services = {k: services[k] for k in ["mock", *args.targets] if k in services}
            rounds, wrk, profile = uvloop.run(bench(args, services, notes))
        finally:
            for name, svc in services.items():
                if name != "direct":
                    svc.stop()
        summary = summarize(rounds)
        text = report(args, summary, wrk, profile, notes)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "report.md").write_text(text)
            if profile.get("raw"):
                (args.out / "profile.raw.txt").write_text(profile["raw"])
            (args.out / "results.json").write_text(
                json.dumps(
                    {
                        "settings": {
                            k: v for k, v in vars(args).items() if k not in ("out", "tmp")
                        },
                        "pinned": PIN.enabled,
                        "rounds": [
                            {"target": t, "concurrency": c, "round": i + 1, **r}
                            for (t, c), rs in rounds.items()
                            for i, r in enumerate(rs)
                        ],
                        "medians": [
                            {"target": t, "concurrency": c, **s} for (t, c), s in summary.items()
                        ],
                        "wrk": [{"target": t, "concurrency": c, **w} for (t, c), w in wrk.items()],
                        "profile": {k: v for k, v in profile.items() if k != "raw"},
                        "notes": notes,
                    },
                    indent=2,
                    default=str,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
