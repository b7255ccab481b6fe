"""The built-in load generator: asyncio Protocols on uvloop that check every response, plus wrk.

Owns the client side of a measurement: N connections sending one request after another
(keep-alive), clients that hang up after the first events (disconnect storm), clients that read
one event per second (slow readers), the measured window, and the accounting around it (CPU of
the target's and the mock's processes, this process's own CPU, per-CPU busy time, the target's
RSS sampled over time, the connections the mock accepted and closed). Every response is
checked (status, complete chunked or length framing, the expected ``data:`` events and ending);
anything else is counted as an error by kind. It measures; it never starts or stops a service.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from gwcore.benchmark.procstat import (
    busy_fraction,
    cpu_busy_ticks,
    process_tree,
    rss_bytes,
    self_cpu,
    syscalls,
    tcp_queues,
    tree_cpu_seconds,
    user_seconds,
)
from gwcore.benchmark.services import Pinning

DONE = b"data: [DONE]\n\n"
RSS_EVERY = 0.2  # s between RSS samples
SETTLE = 0.5  # s after the last client hung up before the mock's sockets are counted


@dataclass(frozen=True)
class Expect:
    """What a correct answer looks like."""

    events: int | None = None  # exact number of ``data:`` events; None: at least one
    end: bytes = DONE  # a streamed body ends with these bytes
    json: bool = False  # a whole JSON chat completion (``stream: false``)

    def check(self, body: bytes) -> str | None:
        if self.json:
            if not body.startswith(b"{") or b'"choices"' not in body:
                return "not a JSON chat completion"
            return None
        if not body.endswith(self.end):
            return f"body does not end with {self.end[:40]!r}"
        n = body.count(b"data:")
        if self.events is not None and n != self.events:
            return f"{n} data: events, expected {self.events}"
        if n == 0:
            return "no data: event"
        return None


@dataclass(frozen=True)
class Exchange:
    """One request's bytes and the check of its answer."""

    request: bytes
    expect: Expect

    @property
    def stream(self) -> bool:
        return not self.expect.json


# What the official openai Python SDK (3.57, AsyncOpenAI) sends besides Host, Content-Type,
# Content-Length and Connection, as captured from it: a real client's request carries a dozen
# headers that a gateway forwards or drops, where the plain benchmark request carries none.
SDK_HEADERS = {
    "Accept-Encoding": "gzip, deflate",
    "authorization": "Bearer sk-bench",
    "accept": "application/json",
    "user-agent": "AsyncOpenAI/Python 3.57.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "3.57.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.7",
    "x-stainless-async": "async:asyncio",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
}


def http_request(path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chat_body(model: str, stream: bool) -> bytes:
    return (
        b'{"model":"%b","messages":[{"role":"user","content":"Say hello in one word."}],'
        b'"stream":%b}' % (model.encode(), b"true" if stream else b"false")
    )


# -- one connection -----------------------------------------------------------------------------


def walk_chunked(buf: bytearray, pos: int) -> tuple[bool, str | None, list]:
    """(complete, error, payloads) of the chunked body starting at ``buf[pos]``."""
    pieces = []
    n = len(buf)
    while True:
        j = buf.find(b"\r\n", pos)
        if j < 0:
            return False, None, pieces
        try:
            size = int(buf[pos:j].split(b";", 1)[0], 16)
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


def parse_head(head: bytes) -> tuple[int, bool, int, bool]:
    """(status, chunked, content-length or -1, connection: close) of a response head."""
    head = head.lower()
    status = int(head[9:12])
    chunked = b"\r\ntransfer-encoding: chunked" in head
    m = re.search(rb"\r\ncontent-length: *(\d+)", head)
    return status, chunked, int(m.group(1)) if m else -1, b"\r\nconnection: close" in head


class StreamConnection(asyncio.Protocol):
    """One keep-alive connection sending requests back to back; checks every response. With
    ``load.hangup_after``, it hangs up once that many events arrived and reconnects instead."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if not self.load.running and self.load.t0 != -math.inf:  # a reconnect after the end
            transport.close()
            return
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
        self.t_event = 0.0
        self.events = 0
        self.scanned = 0
        self.busy = True
        self.t_send = time.perf_counter()
        self.transport.write(self.load.exchange.request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self.buf
        buf += data
        load = self.load
        if self.head_end < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > 65536:
                    self.fail("response head too long")
                return
            self.head_end = self.scanned = i + 4
            try:
                self.status, self.chunked, self.length, self.close_after = parse_head(
                    bytes(buf[:i])
                )
            except ValueError:
                self.fail("bad status line")
                return
            if not self.chunked and self.length < 0:
                self.fail("neither chunked nor content-length")
                return
            if self.status != 200 and load.hangup_after:
                self.fail(f"status {self.status}")
                return
        if load.stream:
            # "data:" events that completed in this read (one may straddle the previous one)
            new = buf.count(b"data:", max(self.head_end, self.scanned - 4))
            self.scanned = len(buf)
            if new:
                if self.events:
                    if load.t0 <= now < load.t1:
                        load.gaps.append(now - self.t_event)
                        load.zero_gaps += new - 1
                else:
                    self.t_first = now
                    if load.t0 <= now < load.t1:
                        load.zero_gaps += new - 1
                self.t_event = now
                self.events += new
                if load.hangup_after and self.events >= load.hangup_after:
                    self.hang_up(now)
                    return
        elif not self.t_first and len(buf) > self.head_end:
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

    def hang_up(self, now: float) -> None:
        self.busy = False
        load = self.load
        if load.t0 <= now < load.t1:
            load.ok += 1
            load.ttfe.append(self.t_first - self.t_send)
        load.completed += 1
        self.transport.abort()  # unread bytes in the socket: the peer sees a reset
        if load.running:
            load.connect_soon()
        else:
            load.idle()

    def finish(self, now: float, body: bytes) -> None:
        self.busy = False
        load = self.load
        if self.status != 200:
            error = f"status {self.status}"
        elif load.hangup_after:
            error = f"the stream ended before {load.hangup_after} events"
        else:
            error = load.exchange.expect.check(body)
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
    """The state of one measurement: connections, the window, what was counted in it."""

    port: int
    exchange: Exchange
    host: str = "127.0.0.1"
    hangup_after: int = 0
    running: bool = True
    t0: float = math.inf
    t1: float = math.inf
    ok: int = 0
    completed: int = 0
    reconnects: int = 0
    zero_gaps: int = 0
    ttfe: list = field(default_factory=list)
    ttlb: list = field(default_factory=list)
    gaps: list = field(default_factory=list)  # the non-zero inter-event gaps
    events_read: list = field(default_factory=list)  # slow readers: events per stream
    errors: collections.Counter = field(default_factory=collections.Counter)
    conns: set = field(default_factory=set)
    drained: asyncio.Future | None = None

    @property
    def stream(self) -> bool:
        return self.exchange.stream

    def connect_soon(self) -> None:
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: StreamConnection(self), self.host, self.port)
        except OSError as exc:
            self.errors[f"connect: {exc.strerror or exc}"] += 1
            if self.running:
                await asyncio.sleep(0.05)
                self.connect_soon()

    def idle(self) -> None:
        if self.drained and not self.drained.done() and not any(c.busy for c in self.conns):
            self.drained.set_result(None)


# -- slow readers -------------------------------------------------------------------------------


async def slow_reader(load: Load, stop: asyncio.Event, every: float = 1.0) -> None:
    """One stream read one event per ``every`` seconds, from a small receive buffer, until
    ``stop``; then it hangs up. The socket is read only when the next event is not yet here."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # before connect: a small window
    # and an Ethernet-sized MSS: with loopback's 64 KiB one, the sender's kernel would queue
    # megabytes per socket and hide whether the gateway itself holds the stream back
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1448)
    sock.setblocking(False)
    consumed = 0
    try:
        await loop.sock_connect(sock, (load.host, load.port))
        t_send = time.perf_counter()
        await loop.sock_sendall(sock, load.exchange.request)
        buf = bytearray()
        head_end = -1
        t_prev = 0.0
        while not stop.is_set():
            while head_end < 0 or buf.count(b"data:", head_end) <= consumed:
                recv = asyncio.ensure_future(loop.sock_recv(sock, 4096))
                waiter = asyncio.ensure_future(stop.wait())
                await asyncio.wait({recv, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not recv.done():
                    recv.cancel()
                    return
                data = recv.result()
                if not data:
                    load.errors["connection closed mid-response"] += 1
                    return
                buf += data
                if head_end < 0 and (i := buf.find(b"\r\n\r\n")) >= 0:
                    head_end = i + 4
                    status = parse_head(bytes(buf[:i]))[0]
                    if status != 200:
                        load.errors[f"status {status}"] += 1
                        return
                if buf.endswith(b"\r\n0\r\n\r\n"):
                    load.errors["the stream ended while being read slowly"] += 1
                    return
            now = time.perf_counter()
            if consumed == 0:
                load.ttfe.append(now - t_send)
            else:
                load.gaps.append(now - t_prev)
            t_prev = now
            consumed += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    except OSError as exc:
        load.errors[f"socket: {exc.strerror or exc}"] += 1
    finally:
        load.events_read.append(consumed)
        sock.close()


# -- a measurement ------------------------------------------------------------------------------


def percentile(sorted_values: list, q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def gap_percentile(gaps: list, zeros: int, q: float) -> float:
    """Percentile over the gaps plus ``zeros`` zero gaps (events that arrived in one read)."""
    n = len(gaps) + zeros
    if not n:
        return math.nan
    i = min(n - 1, int(q * n))
    return 0.0 if i < zeros else sorted(gaps)[i - zeros]


def _roots(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [p for p in value if p]


async def mock_stats(port: int, host: str = "127.0.0.1") -> dict:
    """The mock's connection counts (``GET /_mock/stats``; the asking connection counts)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /_mock/stats HTTP/1.1\r\nHost: mock\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    return json.loads(data.partition(b"\r\n\r\n")[2])


class _Watch:
    """The target's RSS sampled while load runs, and the mock's connection counts around it."""

    def __init__(self, relay: list[int], mock_port: int | None) -> None:
        self.relay = relay
        self.mock_port = mock_port
        self.rss: list[tuple[float, int]] = []
        self.before: dict = {}
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.mock_port:
            self.before = await mock_stats(self.mock_port)
        self.sample_rss(time.perf_counter())
        self.task = asyncio.get_running_loop().create_task(self.run())

    def sample_rss(self, now: float) -> None:
        if self.relay:
            self.rss.append((now, rss_bytes(self.relay)))

    async def run(self) -> None:
        while True:
            await asyncio.sleep(RSS_EVERY)
            self.sample_rss(time.perf_counter())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.sample_rss(time.perf_counter())

    async def upstream(self) -> dict:
        """Connections the mock accepted and closed during the run (the two stats requests
        themselves taken out), and how many more are open now than before."""
        if not self.mock_port:
            return {}
        after = await mock_stats(self.mock_port)
        before = self.before
        return {
            "upstream_opened": after["connections_opened"] - before["connections_opened"] - 1,
            "upstream_closed": after["connections_closed"] - before["connections_closed"] - 1,
            "upstream_left_open": max(0, after["open_connections"] - before["open_connections"]),
            "upstream_open_before": before["open_connections"] - 1,
            "upstream_open_after": after["open_connections"] - 1,
        }


async def run_load(
    port: int,
    concurrency: int,
    warmup: float,
    duration: float,
    exchange: Exchange,
    pids: dict,
    pin: Pinning,
    *,
    mode: str = "complete",
    hangup_after: int = 0,
    host: str = "127.0.0.1",
    mock_port: int | None = None,
    slow_every: float = 1.0,
) -> dict:
    """``concurrency`` clients for warmup + duration s; the figures of the last ``duration`` s.

    ``mode``: "complete" (requests back to back on keep-alive connections), "storm" (hang up
    after ``hangup_after`` events, reconnect, again), "slow" (one stream per client, one event
    read per ``slow_every`` s, no warm-up). ``pids``: {"relay": pid(s), "mock": pid(s)}, their
    descendants included. ``mock_port``: count the upstream connections there (storm, slow).
    """
    relay = process_tree(_roots(pids.get("relay")))
    mock = process_tree(_roots(pids.get("mock")))
    load = Load(port, exchange, host, hangup_after if mode == "storm" else 0)
    watch = _Watch(relay, mock_port)
    await watch.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    readers: list[asyncio.Task] = []
    if mode == "slow":
        warmup = 0.0
        load.t0 = time.perf_counter()
        readers = [
            loop.create_task(slow_reader(load, stop, slow_every)) for _ in range(concurrency)
        ]
    else:
        await asyncio.gather(*(load.connect() for _ in range(concurrency)))
        await asyncio.sleep(warmup)
    relay_cpu0, mock_cpu0 = tree_cpu_seconds(relay), tree_cpu_seconds(mock)
    relay_user0 = tree_cpu_seconds(relay, user_seconds)
    own0 = self_cpu()
    sys0 = cpu_busy_ticks()
    io0 = syscalls(relay[0]) if relay else (0, 0)
    if mode != "slow":
        load.t0 = time.perf_counter()
    t_start = load.t0
    await asyncio.sleep(duration - (time.perf_counter() - t_start) if mode == "slow" else duration)
    load.t1 = time.perf_counter()
    queues = {}
    if mode == "slow" and mock_port:  # where the unread part of the streams sits, in the kernel
        if relay:
            queues["kernel_to_clients_mb"] = tcp_queues(local_port=port)[0] / 2**20
            queues["kernel_from_upstream_mb"] = tcp_queues(remote_port=mock_port)[1] / 2**20
        queues["held_at_mock_mb"] = tcp_queues(local_port=mock_port)[0] / 2**20
    # user time read after the total at the start and before it at the end: its difference can
    # never exceed the total's (the clock ticks meanwhile)
    relay_user1 = tree_cpu_seconds(relay, user_seconds)
    relay_cpu1, mock_cpu1 = tree_cpu_seconds(relay), tree_cpu_seconds(mock)
    own1 = self_cpu()
    sys1 = cpu_busy_ticks()
    io1 = syscalls(relay[0]) if relay else (0, 0)
    load.running = False
    stop.set()
    if readers:
        await asyncio.gather(*readers)
    elif mode == "storm":
        for conn in list(load.conns):
            conn.busy = False
            conn.transport.abort()
    else:
        load.drained = loop.create_future()
        load.idle()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(load.drained, 5)
    for conn in list(load.conns):
        conn.transport.close()
    watch.stop()
    await asyncio.sleep(SETTLE if mock_port else 0.05)
    upstream = await watch.upstream()
    wall = load.t1 - t_start
    n = len(load.events_read) if mode == "slow" else max(load.ok, 1)
    n = max(n, 1)
    target_cpu, load_cpu = pin.target_cpu, pin.load_cpu
    cpu0_busy = busy_fraction(sys0, sys1, target_cpu)
    relay_busy = (relay_cpu1 - relay_cpu0) / wall if relay else None
    ttfe, ttlb = sorted(load.ttfe), sorted(load.ttlb)
    rss = [r for _, r in watch.rss]
    per_request = mode != "slow"
    return {
        "requests": load.ok if per_request else len(load.events_read),
        "rps": load.ok / wall if per_request else None,
        "relay_cpu_us": (relay_cpu1 - relay_cpu0) / n * 1e6 if relay and per_request else None,
        # its user-space part (the rest is the kernel's: reads, writes, wake-ups)
        "relay_user_us": (relay_user1 - relay_user0) / n * 1e6 if relay and per_request else None,
        "relay_busy": relay_busy,
        "relay_reads": (io1[0] - io0[0]) / n if relay else None,
        "relay_writes": (io1[1] - io0[1]) / n if relay else None,
        "mock_cpu_us": (mock_cpu1 - mock_cpu0) / n * 1e6 if mock else None,
        "client_cpu_us": (own1 - own0) / n * 1e6,
        "mock_client_busy": (mock_cpu1 - mock_cpu0 + own1 - own0) / wall,
        "cpu0_busy": cpu0_busy,
        "cpu1_busy": busy_fraction(sys0, sys1, load_cpu),
        "cpu0_other": (
            max(0.0, cpu0_busy - (relay_busy or 0.0)) if cpu0_busy is not None else None
        ),
        "ttfe_p50_us": percentile(ttfe, 0.5) * 1e6,
        "ttfe_p90_us": percentile(ttfe, 0.9) * 1e6,
        "ttfe_p99_us": percentile(ttfe, 0.99) * 1e6,
        "ttlb_p50_us": percentile(ttlb, 0.5) * 1e6,
        "gap_p99_us": gap_percentile(load.gaps, load.zero_gaps, 0.99) * 1e6,
        "rss_start_mb": rss[0] / 2**20 if rss else None,
        "rss_peak_mb": max(rss) / 2**20 if rss else None,
        "rss_end_mb": rss[-1] / 2**20 if rss else None,
        "rss_growth_mb": (max(rss) - rss[0]) / 2**20 if rss else None,
        "rss_samples": [(round(t - t_start, 3), r) for t, r in watch.rss],
        "events_per_stream": (
            sorted(load.events_read)[len(load.events_read) // 2] if load.events_read else None
        ),
        **upstream,
        **queues,
        "completed": load.completed,
        "errors": dict(load.errors),
        "reconnects": load.reconnects,
    }


async def probe(
    port: int, exchange: Exchange, host: str = "127.0.0.1", timeout: float = 10.0
) -> tuple[bool, str]:
    """One request, checked: (ok, description)."""
    load = Load(port, exchange, host, running=False)
    load.t0 = -math.inf
    load.drained = asyncio.get_running_loop().create_future()
    await load.connect()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(load.drained, timeout)
    for conn in list(load.conns):
        conn.transport.close()
    if load.ok == 1:
        expect = exchange.expect
        if expect.json:
            return True, "200, a JSON chat completion"
        count = f"{expect.events}" if expect.events is not None else "some"
        return True, f"200, complete framing, {count} data: events ending as expected"
    return False, "; ".join(load.errors) or f"no response within {timeout:g} s"


# -- wrk ----------------------------------------------------------------------------------------


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


async def run_wrk(
    tmp: Path,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    duration: float,
    relay_pids: list[int],
    pin: Pinning,
    headers: dict[str, str] | None = None,
) -> dict:
    """One wrk run (a Lua script POSTs ``body``): throughput without the built-in client's
    checks or costs, and the target's CPU per request over it."""
    script = tmp / f"post-{port}.lua"
    lua_body = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    lines = [
        "wrk.method = 'POST'",
        f"wrk.body = '{lua_body}'",
        "wrk.headers['Content-Type'] = 'application/json'",
    ]
    lines += [f"wrk.headers['{k}'] = '{v}'" for k, v in (headers or {}).items()]
    script.write_text("\n".join(lines) + "\n")
    cmd = [*pin.prefix(pin.load_cpu), "wrk", "-t1", f"-c{concurrency}"]
    cmd += [f"-d{max(1, round(duration))}s", "-s", str(script), f"http://127.0.0.1:{port}{path}"]
    relay = process_tree(relay_pids)
    cpu0, t0 = tree_cpu_seconds(relay), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out = (await proc.communicate())[0].decode(errors="replace")
    cpu = tree_cpu_seconds(relay) - cpu0 if relay else None
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
