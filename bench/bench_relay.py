"""Relay benchmark: streaming chat through gwcore against nginx, a Python floor and no relay at all.

Workload: ``POST /v1/chat/completions`` with ``"stream": true``; the mock upstream answers 33 SSE
events, chunked, one write per event. Targets, in interleaved rounds (direct nginx gwcore floor,
direct nginx gwcore floor, ...), each at every concurrency:

- ``direct``: the load generator talks to the mock itself (the ceiling);
- ``nginx``: one nginx worker, ``proxy_pass``, ``proxy_buffering off``, a keep-alive upstream;
- ``gwcore``: ``gwcore serve --workers 1`` with its default logging (usage accounting is always on);
- ``floor``: ``bench/passthrough_floor.py``, the least a Python process on uvloop can do;
- ``gwcore_quiet`` (only when named in ``--targets``): gwcore at ``--log-level WARNING``, which
  prices the per-request usage log line.

The relay under test runs on CPU 0; the mock, the load generator (this process) and wrk on CPU 1.
Per target and concurrency: full streams per second, relay CPU per stream (utime+stime from
``/proc/<pid>/stat``, nginx's worker only), time to first event (request sent -> first ``data:``
byte of the body) p50/p99, time to last byte p50; medians over rounds, with ratios gwcore / nginx.
Every response is checked (status 200, complete chunked framing, 33 ``data:`` events ending with
``data: [DONE]``); anything else is counted as an error per target and reported.

    python bench/bench_relay.py [--duration 5] [--rounds 3] [--concurrency 1,32] [--out DIR]
                                [--no-wrk] [--profile SECONDS]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import grp
import json
import math
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL = "gpt-bench"
BODY = (
    b'{"model":"gpt-bench","messages":[{"role":"user","content":"Say hello in one word."}],'
    b'"stream":true}'
)
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
)
DONE = b"data: [DONE]\n\n"
RELAY_CPU, LOAD_CPU = 0, 1


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def syscalls(pid: int) -> tuple[int, int]:
    """(read-like, write-like) system calls of ``pid`` so far (/proc/<pid>/io; 0s if hidden)."""
    try:
        with open(f"/proc/{pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        return int(io["syscr"]), int(io["syscw"])
    except (OSError, KeyError, ValueError):
        return 0, 0


def cpu_busy_ticks() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) clock ticks since boot, from /proc/stat (any process, softirq too)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(v) for v in ticks[:8]]
                idle = values[3] + values[4]  # idle + iowait
                out[int(name[3:])] = (sum(values) - idle, sum(values))
    return out


def busy_fraction(t0: dict, t1: dict, cpu: int) -> float | None:
    if cpu not in t0 or cpu not in t1:
        return None
    busy, total = t1[cpu][0] - t0[cpu][0], t1[cpu][1] - t0[cpu][1]
    return busy / total if total else None


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if PIN else []


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    port: int
    cpu_pid: int  # the process whose CPU is the relay's (nginx: its worker)
    log: Path | None = None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_listening(proc: subprocess.Popen, port: int, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def start_mock(tmp: Path, events: int) -> Service:
    port = free_port()
    log = tmp / "mock.log"
    cmd = [*pinned(LOAD_CPU), sys.executable, "-m", "gwcore.testing.mock_upstream"]
    cmd += ["--port", str(port), "--events", str(events), "--pace-ms", "0"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_listening(proc, port, "the mock upstream")
    return Service("mock", proc, port, proc.pid, log)


def start_gwcore(tmp: Path, mock_port: int, name: str = "gwcore") -> Service:
    port = free_port()
    config = tmp / "gwcore.yaml"
    config.write_text(
        "from_env: false\nproviders:\n"
        f'  - {{name: mock, type: openai_compatible, base_url: "http://127.0.0.1:{mock_port}/v1",'
        f" models: [{MODEL}]}}\n"
    )
    exe = shutil.which("gwcore")
    cmd = (
        [exe]
        if exe
        else [sys.executable, "-c", "import sys; from gwcore.cli import main; sys.exit(main())"]
    )
    cmd = [*pinned(RELAY_CPU), *cmd, "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1", "--config", str(config)]
    if name == "gwcore_quiet":  # the usage log line off, to price it; "gwcore" keeps the default
        cmd += ["--log-level", "WARNING"]
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWCORE_")}
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    wait_listening(proc, port, "gwcore serve")
    return Service(name, proc, port, proc.pid, log)


def start_floor(tmp: Path, mock_port: int) -> Service:
    port = free_port()
    log = tmp / "floor.log"
    cmd = [*pinned(RELAY_CPU), sys.executable, str(BENCH_DIR / "passthrough_floor.py")]
    proc = subprocess.Popen(
        [*cmd, str(port), str(mock_port)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    wait_listening(proc, port, "the pass-through floor")
    return Service("floor", proc, port, proc.pid, log)


def start_nginx(tmp: Path, mock_port: int) -> Service | None:
    exe = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if exe is None:
        return None
    port = free_port()
    root = tmp / "nginx"
    root.mkdir()
    user = ""
    if os.geteuid() == 0:  # workers would otherwise drop to "nobody": run them as the current user
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    temps = " ".join(
        f"{kind}_temp_path {root / kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    (root / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root / "client_body"};
    {temps}
    upstream bench_mock {{ server 127.0.0.1:{mock_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    cmd = [*pinned(RELAY_CPU), exe, "-p", str(root), "-e", str(root / "error.log")]
    cmd += ["-c", str(root / "nginx.conf")]
    log = root / "stderr.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_listening(proc, port, "nginx")
    workers: list[int] = []
    deadline = time.monotonic() + 5
    while not workers and time.monotonic() < deadline:
        workers = children(proc.pid)
        time.sleep(0.05)
    if len(workers) != 1:
        proc.kill()
        raise RuntimeError(f"nginx: expected one worker, found {workers}")
    return Service("nginx", proc, port, workers[0], log)


# -- load generator -----------------------------------------------------------------------------


def walk_chunked(buf: bytearray, pos: int) -> tuple[bool, str | None, list]:
    """(complete, error, payloads) of the chunked body starting at ``buf[pos]``."""
    pieces = []
    n = len(buf)
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            return False, None, pieces
        try:
            size = int(buf[pos:j], 16)
        except ValueError:
            return False, "bad chunk size line", pieces
        if size == 0:
            if n < j + 4:
                return False, None, pieces
            if buf[j + 2 : j + 4] != b"\r\n":
                return False, "trailer or junk after the last chunk", pieces
            if n != j + 4:
                return False, "bytes after the end of the response", pieces
            return True, None, pieces
        end = j + 2 + size
        if n < end + 2:
            return False, None, pieces
        if buf[end : end + 2] != b"\r\n":
            return False, "chunk data not followed by CRLF", pieces
        pieces.append(buf[j + 2 : end])
        pos = end + 2


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection streaming requests back to back; checks every response."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        with contextlib.suppress(OSError, AttributeError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.load.conns.add(self)
        self.send()

    def send(self) -> None:
        self.buf = bytearray()
        self.head_end = -1
        self.status = 0
        self.chunked = False
        self.length = -1
        self.close_after = False
        self.t_first = 0.0
        self.busy = True
        self.t_send = time.perf_counter()
        self.transport.write(REQUEST)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        if self.head_end < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > 65536:
                    self.fail("response head too long")
                return
            self.head_end = i + 4
            head = bytes(buf[:i]).lower()
            try:
                self.status = int(head[9:12])
            except ValueError:
                self.fail("bad status line")
                return
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            m = re.search(rb"\r\ncontent-length: *(\d+)", head)
            self.length = int(m.group(1)) if m else -1
            self.close_after = b"\r\nconnection: close" in head
            if not self.chunked and self.length < 0:
                self.fail("neither chunked nor content-length")
                return
        if not self.t_first and buf.find(b"data:", self.head_end) >= 0:
            self.t_first = now
        if self.chunked:
            if not buf.endswith(b"\r\n0\r\n\r\n"):  # a response can only end at the end of a read
                return
            complete, error, pieces = walk_chunked(buf, self.head_end)
            if error:
                self.fail(error)
                return
            if not complete:
                return
            body = b"".join(pieces)
        else:
            if len(buf) - self.head_end < self.length:
                return
            body = bytes(buf[self.head_end :])
        self.finish(now, body)

    def finish(self, now: float, body: bytes) -> None:
        self.busy = False
        load = self.load
        if self.status != 200:
            error = f"status {self.status}"
        elif not body.endswith(DONE):
            error = "body does not end with data: [DONE]"
        elif body.count(b"data: ") != load.events:
            error = f"{body.count(b'data: ')} data: events, expected {load.events}"
        else:
            error = None
        if error:
            load.errors[error] += 1
        elif load.t0 <= now < load.t1:
            load.ok += 1
            load.ttfe.append(self.t_first - self.t_send)
            load.ttlb.append(now - self.t_send)
        load.completed += 1
        if self.close_after or error:
            load.reconnects += 1
            self.transport.close()
            if load.running:
                load.connect_soon()
        elif load.running:
            self.send()
        else:
            load.idle()

    def fail(self, error: str) -> None:
        self.load.errors[error] += 1
        self.busy = False
        self.transport.abort()
        if self.load.running:
            self.load.reconnects += 1
            self.load.connect_soon()

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.conns.discard(self)
        if self.busy:
            self.busy = False
            self.load.errors["connection closed mid-response"] += 1
            if self.load.running:
                self.load.reconnects += 1
                self.load.connect_soon()
        self.load.idle()


@dataclass
class Load:
    port: int
    events: int
    running: bool = True
    t0: float = math.inf
    t1: float = math.inf
    ok: int = 0
    completed: int = 0
    reconnects: int = 0
    ttfe: list = field(default_factory=list)
    ttlb: list = field(default_factory=list)
    errors: collections.Counter = field(default_factory=collections.Counter)
    conns: set = field(default_factory=set)
    drained: asyncio.Future | None = None

    def connect_soon(self) -> None:
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: StreamConnection(self), "127.0.0.1", self.port)
        except OSError as exc:
            self.errors[f"connect: {exc.strerror or exc}"] += 1
            if self.running:
                await asyncio.sleep(0.05)
                self.connect_soon()

    def idle(self) -> None:
        if self.drained and not self.drained.done() and not any(c.busy for c in self.conns):
            self.drained.set_result(None)


def percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run_load(
    port: int, concurrency: int, warmup: float, duration: float, events: int, pids: dict
) -> dict:
    """``concurrency`` streams back to back for warmup + duration s; numbers of the last part."""
    load = Load(port, events)
    await asyncio.gather(*(load.connect() for _ in range(concurrency)))
    await asyncio.sleep(warmup)
    cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own0 = self_cpu()
    sys0 = cpu_busy_ticks()
    io0 = syscalls(pids["relay"]) if "relay" in pids else (0, 0)
    load.t0 = time.perf_counter()
    await asyncio.sleep(duration)
    load.t1 = time.perf_counter()
    cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own1 = self_cpu()
    sys1 = cpu_busy_ticks()
    io1 = syscalls(pids["relay"]) if "relay" in pids else (0, 0)
    load.running = False
    load.drained = asyncio.get_running_loop().create_future()
    load.idle()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(load.drained, 5)
    for conn in list(load.conns):
        conn.transport.close()
    await asyncio.sleep(0.05)
    wall = load.t1 - load.t0
    n = max(load.ok, 1)
    cpu0_busy = busy_fraction(sys0, sys1, RELAY_CPU)
    relay_busy = (cpu1["relay"] - cpu0["relay"]) / wall if "relay" in pids else 0.0
    ttfe, ttlb = sorted(load.ttfe), sorted(load.ttlb)
    return {
        "requests": load.ok,
        "rps": load.ok / wall,
        "relay_cpu_us": (cpu1["relay"] - cpu0["relay"]) / n * 1e6 if "relay" in pids else None,
        "relay_busy": relay_busy if "relay" in pids else None,
        "relay_reads": (io1[0] - io0[0]) / n if "relay" in pids else None,
        "relay_writes": (io1[1] - io0[1]) / n if "relay" in pids else None,
        "mock_cpu_us": (cpu1["mock"] - cpu0["mock"]) / n * 1e6,
        "client_cpu_us": (own1 - own0) / n * 1e6,
        "mock_client_busy": (cpu1["mock"] - cpu0["mock"] + own1 - own0) / wall,
        "cpu0_busy": cpu0_busy,
        "cpu1_busy": busy_fraction(sys0, sys1, LOAD_CPU),
        "cpu0_other": max(0.0, cpu0_busy - relay_busy) if cpu0_busy is not None else None,
        "ttfe_p50_us": percentile(ttfe, 0.5) * 1e6,
        "ttfe_p99_us": percentile(ttfe, 0.99) * 1e6,
        "ttlb_p50_us": percentile(ttlb, 0.5) * 1e6,
        "completed": load.completed,
        "errors": dict(load.errors),
        "reconnects": load.reconnects,
    }


async def probe(port: int, events: int) -> tuple[bool, str]:
    """One stream, checked: (ok, description)."""
    load = Load(port, events, running=False)
    load.t0 = -math.inf
    load.drained = asyncio.get_running_loop().create_future()
    await load.connect()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(load.drained, 5)
    for conn in list(load.conns):
        conn.transport.close()
    if load.ok == 1:
        return True, f"200, chunked framing complete, {events} data: events ending with [DONE]"
    return False, "; ".join(load.errors) or "no response within 5 s"


# -- wrk and py-spy -----------------------------------------------------------------------------


async def run_wrk(tmp: Path, port: int, concurrency: int, duration: float, relay_pid: int) -> dict:
    script = tmp / "post.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{BODY.decode()}'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
    )
    cmd = [*pinned(LOAD_CPU), "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s"]
    cmd += ["-s", str(script), f"http://127.0.0.1:{port}/v1/chat/completions"]
    cpu0, t0 = cpu_seconds(relay_pid) if relay_pid else 0.0, time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode(errors="replace")
    cpu = (cpu_seconds(relay_pid) - cpu0) if relay_pid else None
    requests = int(m.group(1)) if (m := re.search(r"(\d+) requests in", out)) else 0
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sock = re.search(r"Socket errors: (.*)", out)
    rps = float(m.group(1)) if (m := re.search(r"Requests/sec:\s*([\d.]+)", out)) else 0.0
    return {
        "rps": rps,
        "requests": requests,
        "relay_cpu_us": cpu / requests * 1e6 if cpu is not None and requests else None,
        "non_2xx": non2xx,
        "socket_errors": sock.group(1).strip() if sock else "",
        "wall": time.perf_counter() - t0,
    }


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
    cmd = [*pinned(LOAD_CPU), exe, "record", "--native", "-r", "200", "-d", str(round(seconds))]
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


def med(values: list) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else None


def fmt(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(rounds: dict) -> dict:
    """{(target, c): [round results]} -> {(target, c): medians and spreads}."""
    out = {}
    for key, results in rounds.items():
        s = {
            m: med([r[m] for r in results])
            for m in (
                "rps",
                "relay_cpu_us",
                "ttfe_p50_us",
                "ttfe_p99_us",
                "ttlb_p50_us",
                "cpu1_busy",
                "cpu0_busy",
                "cpu0_other",
                "relay_busy",
                "relay_reads",
                "relay_writes",
                "mock_cpu_us",
                "client_cpu_us",
                "mock_client_busy",
            )
        }
        rps = [r["rps"] for r in results]
        s["rps_spread"] = (max(rps) - min(rps)) / s["rps"] if s["rps"] else None
        cpu = [r["relay_cpu_us"] for r in results if r["relay_cpu_us"] is not None]
        s["cpu_spread"] = (
            (max(cpu) - min(cpu)) / s["relay_cpu_us"] if cpu and s["relay_cpu_us"] else None
        )
        errors: collections.Counter = collections.Counter()
        for r in results:
            errors.update(r["errors"])
        s["errors"] = dict(errors)
        s["requests"] = sum(r["requests"] for r in results)
        s["reconnects"] = sum(r["reconnects"] for r in results)
        out[key] = s
    return out


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


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
        f"# Relay benchmark: streaming chat, {args.events} events one write each, 1 relay worker",
        "",
        f"Medians over {args.rounds} interleaved rounds of {args.duration:g} s "
        f"(+{args.warmup:g} s warm-up each). Relay on CPU {RELAY_CPU}; mock + load generator "
        f"on CPU {LOAD_CPU}{'' if PIN else ' (NOT pinned: taskset or a second CPU missing)'}. "
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
    cs = args.concurrency
    lines += [
        "",
        "## Ratios",
        "",
        "| ratio | " + " | ".join(f"c={c}" for c in cs) + " | target |",
        "|---|" + "--:|" * len(cs) + "---|",
    ]
    rows = [
        (
            "gwcore CPU/req ÷ nginx CPU/req",
            "<= 1.00",
            lambda c: ratio(get("gwcore", c, "relay_cpu_us"), get("nginx", c, "relay_cpu_us")),
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
        (
            "gwcore CPU/req ÷ floor CPU/req",
            "(info)",
            lambda c: ratio(get("gwcore", c, "relay_cpu_us"), get("floor", c, "relay_cpu_us")),
        ),
        (
            "floor CPU/req ÷ nginx CPU/req",
            "(info)",
            lambda c: ratio(get("floor", c, "relay_cpu_us"), get("nginx", c, "relay_cpu_us")),
        ),
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


def count_usage_lines(log: Path) -> int:
    with log.open("rb") as f:
        return sum(1 for line in f if b" gwcore.usage " in line)


async def bench(args, services: dict, notes: list) -> tuple[dict, dict, dict]:
    mock = services["mock"]
    for name, svc in services.items():
        if name == "mock":
            continue
        ok, what = await probe(svc.port, args.events)
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
        usage = count_usage_lines(services["gwcore"].log)
        if usage:
            notes.append(
                f"gwcore ran with its default logging (root level INFO): one gwcore.usage line per "
                f"request was written ({usage} lines to its stderr, a file; "
                f"{gw_completed} streams completed by the built-in client; counted before wrk)"
            )
        else:
            notes.append(
                "gwcore wrote no gwcore.usage lines: the usage log was off at its log level"
            )
    wrk: dict = {}
    if args.wrk and shutil.which("wrk"):
        c = max(args.concurrency)
        for t in args.targets:
            if t in services:
                relay_pid = services[t].cpu_pid if t != "direct" else 0
                wrk[(t, c)] = await run_wrk(args.tmp, services[t].port, c, args.duration, relay_pid)
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
        help="also: gwcore_quiet (gwcore --log-level WARNING: no usage log line)",
    )
    p.add_argument("--events", type=int, default=33, help="SSE events per answer")
    p.add_argument("--out", type=Path, help="write report.md and results.json into this directory")
    p.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip the wrk cross-check")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the gwcore process under the highest concurrency (0: off)",
    )
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]

    PIN = bool(shutil.which("taskset")) and len(os.sched_getaffinity(0)) >= 2
    notes = []
    if PIN:
        os.sched_setaffinity(0, {LOAD_CPU})  # the load generator is this process
    else:
        notes.append("not pinned: taskset missing or fewer than 2 CPUs available")

    import uvloop

    services: dict = {}
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-relay-") as tmp:
        args.tmp = Path(tmp)
        try:
            services["mock"] = start_mock(args.tmp, args.events)
            if "nginx" in args.targets:
                svc = start_nginx(args.tmp, services["mock"].port)
                if svc is None:
                    notes.append("nginx is not installed: target skipped")
                    print("nginx is not installed: skipping it", file=sys.stderr)
                else:
                    services["nginx"] = svc
            for name in ("gwcore", "gwcore_quiet"):
                if name in args.targets:
                    services[name] = start_gwcore(args.tmp, services["mock"].port, name)
            if "floor" in args.targets:
                services["floor"] = start_floor(args.tmp, services["mock"].port)
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
                        "pinned": PIN,
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


PIN = False

if __name__ == "__main__":
    sys.exit(main())
