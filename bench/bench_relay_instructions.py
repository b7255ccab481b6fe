"""User-space instructions per streamed request of each relay, counted by callgrind.

Seconds of CPU on a shared two-core machine swing by tens of percent between runs; instruction
counts do not. This runs each relay (gwcore, gwcore without its ledger, the pure-Python twin of
its scanner, the uvloop floor, the floor with usage accounting (``floor_accounted``, and
``floor_counted`` with its records in memory, unpriced: each only when named in ``--targets``),
nginx) under ``valgrind --tool=callgrind`` twice, once for N1 and
once for N2 streamed requests after the same warm-up, and reports (Ir(N2) - Ir(N1)) / (N2 - N1):
start-up and warm-up cancel out. The count stops when the last request has been answered and a
second has passed (for the ledger's writer to store the last records): ``callgrind_control
--dump`` then, and the process's shutdown and exit are not counted (they free what is still
alive, and the N2 run's heap holds more usage records in the in-memory sink, which a
long-running server replaces one for one; where the dump cannot be had, ``Py_FinalizeEx`` is
taken out instead, which misses what a shutdown frees before it). One-time work that can still
fall into one run only is taken out of both: SQLite's statement preparation
(``sqlite3_prepare_v2``; the ledger prepares each statement once per process, and whether its
100-row INSERT is first prepared in the N1 run, the N2 run or neither depends on how the
writer's batches fall), reported beside. Kernel work (the
read and write system calls, the same count for every relay here) is not in these figures;
``bench_relay.py`` measures whole CPU time.

    python bench/bench_relay_instructions.py [--n1 100] [--n2 400] [--targets gwcore,floor,nginx]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gwcore.benchmark.loadgen import DONE, SDK_HEADERS, chat_body, http_request
from gwcore.benchmark.services import (
    MODEL,
    Pinning,
    free_port,
    start_mock,
    start_nginx,
    wait_listening,
)

REQUESTS = [http_request("/v1/chat/completions", chat_body(MODEL, True))]  # (--sdk-headers)
NO_PIN = Pinning(False)  # callgrind runs one process at a time: no pinning

WARMUP = 50
CALLGRIND_ARGS: list[str] = []  # --callgrind-arg, e.g. --toggle-collect=<function> to price one


def _stream(sock: socket.socket) -> None:
    sock.sendall(REQUESTS[0])
    buf = b""
    while not buf.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the relay closed the connection mid-response")
        buf += chunk
    if DONE not in buf:
        raise RuntimeError(f"not a complete stream: {buf[-200:]!r}")


def gwcore_launch(
    tmp: Path, target: str, mock_port: int, port: int
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of ``gwcore serve`` for ``target`` (gwcore, gwcore_pure,
    gwcore_noledger, gwcore_nolane) on ``port``, relaying to the mock, its ledger in ``tmp``."""
    config = tmp / "gwcore.yaml"
    config.write_text(
        "from_env: false\nproviders:\n"
        f'  - {{name: mock, type: openai_compatible, base_url: "http://127.0.0.1:{mock_port}'
        f'/v1", models: [{MODEL}]}}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWCORE_")}
    # One hash seed for every run of a Python target (gwcore, the floor): start-up work depends on
    # it (by millions of instructions), and the N1 and N2 runs must cancel it out exactly. Random
    # seeds moved gwcore's result by +-10k instructions per request. (The floor's figure still
    # moves by a few thousand: how many events one read gathers depends on timing.)
    env["PYTHONHASHSEED"] = "0"
    switches = {
        "gwcore": None,
        "gwcore_pure": ("GWCORE_NO_EXTENSIONS", "1"),
        "gwcore_noledger": ("GWCORE_LEDGER", "off"),  # prices the ledger (and what it alone needs)
        "gwcore_nolane": ("GWCORE_LANE", "off"),  # prices the relay lane
    }
    if target not in switches:
        raise RuntimeError(f"unknown gwcore target {target!r} ({', '.join(switches)})")
    if switches[target] is not None:
        name, value = switches[target]
        env[name] = value
    env["GWCORE_DATABASE_URL"] = f"sqlite:///{tmp / 'ledger.db'}"
    cmd = [sys.executable, "-m", "gwcore.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--config", str(config), "--log-level", "WARNING"]
    return cmd, env


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Signal ``proc`` and wait for it (two minutes: valgrind writes its files), else kill it."""
    proc.send_signal(sig)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run(tmp: Path, target: str, mock_port: int, n: int) -> tuple[dict[str, int], int, int]:
    """(the events counted, ``Ir`` the instructions; of those, statement preparation; the exit)
    of one run of ``target``."""
    tmp = tmp / f"{target}-{n}"
    tmp.mkdir()
    out = tmp / f"{target}.{n}.callgrind"
    port = free_port()
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"]
    grind += CALLGRIND_ARGS
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWCORE_")}
    env["PYTHONHASHSEED"] = "0"  # (see gwcore_launch)
    if target.startswith("gwcore"):
        cmd, env = gwcore_launch(tmp, target, mock_port, port)
    elif target in ("floor", "floor_accounted", "floor_counted"):
        module = "floor" if target == "floor" else "floor_accounted"
        cmd = [sys.executable, "-m", f"gwcore.benchmark.{module}", str(port)]
        cmd += [str(mock_port)]
        if target == "floor_accounted":
            cmd.append(str(tmp / "ledger.db"))
        elif target == "floor_counted":
            cmd.append("memory")
    else:  # nginx, its master process off so that the one process is the relay
        service = start_nginx(tmp, mock_port, NO_PIN)
        if service is None:
            raise RuntimeError("nginx is not installed")
        conf = tmp / "nginx" / "nginx.conf"
        service.stop()
        text = conf.read_text().replace("daemon off;", "daemon off;\nmaster_process off;")
        text = re.sub(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{port};", text)
        conf.write_text(text)
        cmd = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(tmp / "nginx")]
        cmd += ["-e", str(tmp / "nginx" / "error.log"), "-c", str(conf)]
    log = (tmp / f"{target}.{n}.log").open("wb")
    # cwd: not the checkout, whose gwcore would come first for `python -m` (PYTHONPATH then picks
    # the code to measure, e.g. an older checkout built in place)
    proc = subprocess.Popen(
        [*grind, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp)
    )
    dumped = False
    try:
        wait_listening(proc, port, target, timeout=120)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(WARMUP + n):
                _stream(sock)
            time.sleep(1.0)  # the ledger's writer stores what it holds (every 0.2 s)
            dumped = _dump(proc.pid)
    finally:
        stop(proc, signal.SIGTERM if target != "nginx" else signal.SIGQUIT)
    part = out.with_name(out.name + ".1")  # the dump: everything up to the load's end
    if dumped and part.exists():
        out.replace(out.with_name(out.name + ".exit"))  # the rest: shutdown and exit
        part.replace(out)
    events = _totals(out)
    prepare, finalize = _inclusive_costs(out, ("sqlite3_prepare_v2", "Py_FinalizeEx"))
    return events, prepare, finalize


def _totals(path: Path) -> dict[str, int]:
    """Every event callgrind counted in one file, by name (``Ir`` always; with ``--cache-sim``
    the cache misses, with ``--branch-sim`` the mispredicted branches)."""
    text = path.read_text(errors="replace")
    names = re.search(r"^events:\s+(.+)$", text, re.M)
    values = re.search(r"^(?:summary|totals):\s+(.+)$", text, re.M)
    if names is None or values is None:
        raise RuntimeError(f"no instruction total in {path}")
    # (a line may leave out trailing zero counts: those events read 0)
    return dict(zip(names.group(1).split(), map(int, values.group(1).split()), strict=False))


def _per(a: dict[str, int], b: dict[str, int], span: int, *names: str) -> float:
    """The N2 run's count of ``names`` less the N1 run's, per request."""
    return sum(b.get(k, 0) - a.get(k, 0) for k in names) / span


def _dump(pid: int) -> bool:
    """Have callgrind write what it counted so far (``<out>.1``) and start again from zero."""
    control = shutil.which("callgrind_control")
    if control is None:
        return False
    try:
        done = subprocess.run([control, "--dump", str(pid)], capture_output=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def _inclusive_costs(path: Path, functions: tuple[str, ...]) -> list[int]:
    """Instructions spent in each of ``functions`` (with what they call) in one callgrind file."""
    totals = dict.fromkeys(functions, 0)
    if shutil.which("callgrind_annotate") is None:
        return list(totals.values())
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", "--auto=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*:(\w+)\s", line)
        if m and m.group(2) in totals:
            totals[m.group(2)] += int(m.group(1).replace(",", ""))
    return list(totals.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=400)
    parser.add_argument("--targets", default="gwcore,gwcore_pure,floor,nginx")
    parser.add_argument("--keep", metavar="DIR", help="copy the callgrind files here")
    parser.add_argument(
        "--events",
        type=int,
        default=33,
        help="SSE events per stream (two runs with different counts split per-event from "
        "per-request cost)",
    )
    parser.add_argument(
        "--pace-ms",
        type=float,
        default=0.0,
        help="the mock's pause between events: with a pause each event reaches the relay in a "
        "read of its own, as at concurrency 1 outside callgrind (without one, callgrind's "
        "slowness lets events queue up and a read carries several)",
    )
    parser.add_argument(
        "--callgrind-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="passed to valgrind, e.g. --callgrind-arg=--toggle-collect='__pyx_pw_*on_head' counts "
        "only inside that function (and what it calls)",
    )
    parser.add_argument(
        "--sdk-headers",
        action="store_true",
        help="send the headers the official openai Python SDK sends (a dozen: its name, "
        "version, platform...), as a real client does",
    )
    parser.add_argument(
        "--provider-headers",
        action="store_true",
        help="the mock answers with the two dozen response headers OpenAI's API sends (rate "
        "limits, timings, ids, cookies; values that change per answer), as a real provider does",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="also count first-level instruction and data cache misses and mispredicted branches "
        "per request (callgrind's cache and branch models: what a request's code footprint "
        "costs beyond its instructions)",
    )
    args = parser.parse_args(argv)
    CALLGRIND_ARGS[:] = args.callgrind_arg
    if args.cache_sim:
        CALLGRIND_ARGS[:0] = ["--cache-sim=yes", "--branch-sim=yes"]
    if args.sdk_headers:
        REQUESTS[0] = http_request(
            "/v1/chat/completions", chat_body(MODEL, True), dict(SDK_HEADERS)
        )
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mock = start_mock(
            tmp, args.events, NO_PIN, pace_ms=args.pace_ms, provider_headers=args.provider_headers
        )
        try:
            for target in args.targets.split(","):
                t0 = time.monotonic()
                try:
                    (a_events, a_prep, a_exit), (b_events, b_prep, b_exit) = (
                        _run(tmp, target, mock.port, args.n1),
                        _run(tmp, target, mock.port, args.n2),
                    )
                    a, b = a_events["Ir"], b_events["Ir"]
                except RuntimeError as exc:
                    print(f"{target}: skipped ({exc})")
                    continue
                if args.keep:
                    Path(args.keep).mkdir(parents=True, exist_ok=True)
                    for f in tmp.glob(f"{target}-*/*.callgrind"):
                        shutil.copy(f, Path(args.keep) / f.name)
                span = args.n2 - args.n1
                per = ((b - b_prep - b_exit) - (a - a_prep - a_exit)) / span
                prep = (b_prep - a_prep) / span
                exits = (b_exit - a_exit) / span
                rows.append((target, per))
                note = f", statement preparation taken out: {prep:+,.0f}" if a_prep + b_prep else ""
                if a_exit + b_exit:
                    note += f", the exit taken out: {exits:+,.0f}"
                print(
                    f"{target}: {per:,.0f} instructions/request "
                    f"({time.monotonic() - t0:.0f} s{note})"
                )
                if "I1mr" in a_events:  # --cache-sim
                    ab = (a_events, b_events, span)
                    print(
                        f"{target}: per request {_per(*ab, 'I1mr'):,.0f} instruction-cache "
                        f"misses, {_per(*ab, 'D1mr', 'D1mw'):,.0f} data-cache misses (first "
                        f"level), {_per(*ab, 'Bcm', 'Bim'):,.0f} mispredicted branches "
                        "(callgrind's models)"
                    )
        finally:
            mock.stop()
    base = dict(rows).get("nginx")
    print("\n| relay | user-space instructions per streamed request | ÷ nginx |")
    print("|---|--:|--:|")
    for target, per in rows:
        print(f"| {target} | {per:,.0f} | {f'{per / base:.2f}' if base else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
