"""The front door as a process: ``gwcore serve``, signals, graceful drain, and workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)

APP_SCRIPT = """
import asyncio, gc, logging, os, sys
from gwcore.server import App, Response, ServerConfig, serve

logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(process)d] %(message)s")
app = App()

async def slow(request, channel):
    channel.start(200, [("content-type", "text/event-stream")])
    for i in range(10):
        channel.write(b"data: %d\\n\\n" % i)
        await asyncio.sleep(0.1)
    channel.end()

def pid(request, channel):  # test-only route: which worker answered
    return Response.json({"pid": os.getpid()})

def heap(request, channel):  # test-only route: what the worker froze once it was up
    return Response.json({"frozen": gc.get_freeze_count(), "pid": os.getpid()})

app.route("GET", "/slow", slow)
app.route("GET", "/pid", pid)
app.route("GET", "/heap", heap)
config = ServerConfig(host="127.0.0.1", port=int(sys.argv[1]), workers=int(sys.argv[2]))
sys.exit(serve(app, config))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("server did not become ready")


@contextlib.contextmanager
def server_process(
    cmd: list[str], port: int, env: dict | None = None
) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or os.environ.copy()
    )
    try:
        wait_ready(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def app_script(tmp_path) -> str:
    path = tmp_path / "app.py"
    path.write_text(APP_SCRIPT)
    return str(path)


def read_chunked_stream(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read one chunked response to its terminator; return (head, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, "closed before the head"
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    body = b""
    while True:
        while b"\r\n" not in rest:
            data = sock.recv(65536)
            assert data, "closed before the terminator"
            rest += data
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        while len(rest) < size + 2:
            data = sock.recv(65536)
            assert data, "closed inside a chunk"
            rest += data
        if size == 0:
            return head, body
        body += rest[:size]
        rest = rest[size + 2 :]


def test_gwcore_serve_cli_serves_and_stops_on_sigterm():
    port = free_port()
    env = os.environ.copy()
    env["PORT"] = "1"  # the flag wins over the environment
    cmd = [sys.executable, "-m", "gwcore.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, port, env) as proc:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            r = client.get("/health")
            assert r.json() == {"status": "ok"}
            assert r.headers["x-request-id"]
            r = client.post("/v1/nope", json={})
            assert r.status_code == 404
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        log = proc.stderr.read().decode()
    assert f"listening on http://127.0.0.1:{port}" in log
    assert "loop uvloop" in log or "loop asyncio" in log
    assert "stopped" in log


def test_each_worker_freezes_its_start_up_heap(app_script):
    """Once up, a worker has collected and frozen its start-up objects (``settle_heap``): the
    collector's full passes no longer walk them while it serves."""
    port = free_port()
    cmd = [sys.executable, app_script, str(port), "2"]
    with server_process(cmd, port) as proc:
        seen = {}
        deadline = time.monotonic() + 20
        while len(seen) < 2 and time.monotonic() < deadline:  # the kernel picks the worker
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
                body = client.get("/heap").json()
            seen[body["pid"]] = body["frozen"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert len(seen) == 2
    # gwcore, asyncio, httptools, logging...: thousands of objects, whatever Python's version
    assert all(frozen > 5000 for frozen in seen.values()), seen


def test_port_from_environment(app_script):
    port = free_port()
    env = os.environ.copy()
    env["PORT"] = str(port)
    env["GWCORE_HOST"] = "127.0.0.1"
    cmd = [sys.executable, "-m", "gwcore.cli", "serve"]
    with server_process(cmd, port, env) as proc:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0


def test_sigterm_lets_a_slow_stream_finish_then_exits_0(app_script):
    port = free_port()
    with server_process([sys.executable, app_script, str(port), "1"], port) as proc:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        _, body = read_chunked_stream_after(sock, first)
        assert body == b"".join(b"data: %d\n\n" % i for i in range(10))
        assert sock.recv(1) == b""  # closed after the response
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 2.5  # and exited once it was done
        assert time.monotonic() - started >= 0.5  # it waited for the stream


def read_chunked_stream_after(sock: socket.socket, already: bytes) -> tuple[bytes, bytes]:
    class Replay:
        def __init__(self) -> None:
            self.pending = already

        def recv(self, n: int) -> bytes:
            if self.pending:
                out, self.pending = self.pending, b""
                return out
            return sock.recv(n)

    return read_chunked_stream(Replay())  # type: ignore[arg-type]


def test_second_signal_exits_at_once(app_script):
    port = free_port()
    with server_process([sys.executable, app_script, str(port), "1"], port) as proc:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) != 0
        assert time.monotonic() - started < 0.8  # well before the stream would end
        sock.close()


def worker_pids(port: int, connections: int = 40) -> set[int]:
    pids = set()
    for _ in range(connections):  # a new connection each time: SO_REUSEPORT spreads them
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            pids.add(client.get("/pid").json()["pid"])
    return pids


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_two_workers_share_the_port_and_are_restarted(app_script):
    port = free_port()
    with server_process([sys.executable, app_script, str(port), "2"], port) as proc:
        deadline = time.monotonic() + 10
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= worker_pids(port)
        assert len(pids) == 2
        assert all(parent_of(pid) == proc.pid for pid in pids)

        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        new: set[int] = set()
        while time.monotonic() < deadline:
            new = worker_pids(port, 10) - pids
            if new:
                break
            time.sleep(0.2)
        assert new, "the dead worker was not replaced"
        alive = (pids - {victim}) | new

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        for pid in alive:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        log = proc.stderr.read().decode()
    assert "starting 2 workers" in log
    assert f"worker {victim} exited" in log
