"""User-space instructions per request of the front door, gwcore against uvicorn, under callgrind.

``bench_server.py`` measures requests/s and CPU time, which swing by tens of percent on a shared
machine. Instruction counts do not. Each server (the same two apps ``bench_server.py`` serves)
runs under ``valgrind --tool=callgrind`` twice, for N1 and for N2 requests on one keep-alive
connection after the same warm-up; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one request with
start-up and warm-up cancelled out. Kernel work (one read and one write per request for both
servers) is not in these figures.

    python bench/bench_server_instructions.py [--n1 200] [--n2 1200]

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

HERE = Path(__file__).resolve().parent
BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}'
ROUTES = {
    "GET /health": b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n",
    "POST /echo (async def)": b"POST /echo HTTP/1.1\r\nHost: bench\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "POST /echo (plain def)": b"POST /echo_inline HTTP/1.1\r\nHost: bench\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY),
}
WARMUP = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exchange(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        buf += chunk
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            m = re.search(rb"content-length: *(\d+)", buf[:end], re.I)
            if m is None:  # uvicorn frames an ASGI body without a length as chunked
                complete = buf.endswith(b"\r\n0\r\n\r\n")
            else:
                complete = len(buf) >= end + 4 + int(m.group(1))
            if complete:
                if not buf.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"unexpected answer {buf[:80]!r}")
                return


def _run(tmp: Path, kind: str, requests: list[bytes]) -> int:
    out = tmp / f"{kind}.{len(requests)}.{time.monotonic_ns()}.callgrind"
    port = _free_port()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"]
    cmd += [sys.executable, str(HERE / "bench_server.py"), "--serve", kind, "--port", str(port)]
    # One hash seed for every run: start-up work depends on it, and N1 and N2 must cancel it out.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start under valgrind") from None
                time.sleep(0.2)
        with sock:
            for request in requests:
                _exchange(sock, request)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    match = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(errors="replace"), re.M)
    if match is None:
        raise RuntimeError(f"no instruction total for {kind}")
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=200)
    parser.add_argument("--n2", type=int, default=1200)
    parser.add_argument("--servers", default="gwcore,uvicorn")
    parser.add_argument("--routes", help="comma-separated substrings of the route names to run")
    parser.add_argument("--keep", metavar="DIR", help="copy the callgrind files here")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)")
        return 1
    per: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as d:
        for kind in args.servers.split(","):
            for name, request in ROUTES.items():
                if args.routes and not any(r in name for r in args.routes.split(",")):
                    continue
                warm = [request] * WARMUP
                a = _run(Path(d), kind, warm + [request] * args.n1)
                b = _run(Path(d), kind, warm + [request] * args.n2)
                per[(kind, name)] = (b - a) / (args.n2 - args.n1)
                print(f"{kind:8} {name:24} {per[(kind, name)]:>10,.0f} instructions/request")
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for f in Path(d).glob("*.callgrind"):
                shutil.copy(f, Path(args.keep) / f.name)
    print("\n| route | gwcore | uvicorn | uvicorn ÷ gwcore |")
    print("|---|--:|--:|--:|")
    for name in ROUTES:
        g, u = per.get(("gwcore", name)), per.get(("uvicorn", name))
        if g is None and u is None:
            continue
        ratio = f"{u / g:.2f}" if g and u else "-"
        print(f"| {name} | {g or 0:,.0f} | {u or 0:,.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
