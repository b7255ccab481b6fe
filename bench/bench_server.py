"""Front-door benchmark: gwcore's server against uvicorn (httptools + uvloop), same routes.

Measures requests/s and server CPU per request (utime+stime from /proc/<pid>/stat) for
``GET /health`` and a small JSON ``POST /echo``, one worker each, in interleaved rounds
(gwcore, uvicorn, gwcore, uvicorn, ...), and prints medians with ratios gwcore / uvicorn.

Load generator: ``wrk`` when installed (``apt-get install -y wrk``), else a built-in asyncio
keep-alive client (slower: it may saturate before the servers do; CPU per request stays valid).
With ``taskset`` the servers run on CPU 0 and the load generator on CPU 1.

    python bench/bench_server.py [--rounds 3] [--duration 4] [--connections 64]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ECHO_BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one word."}]}'
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- servers (run in a child process: `bench_server.py --serve gwcore|uvicorn --port P`) ----------


def serve_gwcore(port: int) -> None:
    from gwcore.server import App, Response, ServerConfig
    from gwcore.server.runner import run_worker

    config = ServerConfig(host="127.0.0.1", port=port)
    app = App(config)

    async def echo(request, channel):
        return Response(200, request.body)

    def echo_inline(request, channel):  # a plain-function handler: runs without a task
        return Response(200, request.body)

    app.route("POST", "/echo", echo)
    app.route("POST", "/echo_inline", echo_inline)
    sys.exit(run_worker(app, config))


def serve_uvicorn(port: int) -> None:
    import uvicorn

    health = b'{"status":"ok"}'
    json_headers = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        path = scope["path"]
        if path == "/health" and scope["method"] == "GET":
            body = health
        elif path in ("/echo", "/echo_inline") and scope["method"] == "POST":
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": json_headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        lifespan="off",
        access_log=False,
        log_level="warning",
        workers=1,
    )


# -- measurement --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def taskset(cpu: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def start_server(kind: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [*taskset(0), sys.executable, __file__, "--serve", kind, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} did not start")


def run_wrk(port: int, path: str, post: bool, duration: float, connections: int) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if post:
            body = ECHO_BODY.decode()
            script.write(
                f"wrk.method = 'POST'\nwrk.body = '{body}'\n"
                "wrk.headers['Content-Type'] = 'application/json'\n"
            )
    try:
        out = subprocess.run(
            [
                *taskset(1),
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "-s",
                script.name,
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk reported errors:\n{out}")
    return int(re.search(r"(\d+) requests in", out).group(1))


async def _client_loop(port: int, request: bytes, stop_at: float, counter: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            counter[0] += 1
    finally:
        writer.close()


def run_builtin(port: int, path: str, post: bool, duration: float, connections: int) -> int:
    if post:
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(ECHO_BODY)}\r\n\r\n"
        ).encode() + ECHO_BODY
    else:
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    counter = [0]

    async def main() -> None:
        stop_at = time.monotonic() + duration
        await asyncio.gather(
            *(_client_loop(port, request, stop_at, counter) for _ in range(connections))
        )

    asyncio.run(main())
    return counter[0]


def measure(pid: int, port: int, path: str, post: bool, args: argparse.Namespace):
    load = run_wrk if shutil.which("wrk") and not args.builtin_client else run_builtin
    load(port, path, post, 1.0, args.connections)  # warm-up
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    requests = load(port, path, post, args.duration, args.connections)
    cpu, wall = cpu_seconds(pid) - cpu0, time.monotonic() - t0
    return requests / wall, cpu / requests * 1e6


SCENARIOS = [
    ("GET /health", "/health", False),
    ("POST /echo (async def)", "/echo", True),
    ("POST /echo (plain def)", "/echo_inline", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=["gwcore", "uvicorn"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--builtin-client", action="store_true", help="do not use wrk")
    args = parser.parse_args()
    if args.serve == "gwcore":
        serve_gwcore(args.port)
        return
    if args.serve == "uvicorn":
        serve_uvicorn(args.port)
        return

    tool = "wrk" if shutil.which("wrk") and not args.builtin_client else "built-in asyncio client"
    pin = "server on CPU 0, load on CPU 1" if taskset(0) else "no CPU pinning"
    print(
        f"load: {tool}, {args.connections} keep-alive connections, {args.duration:g} s x "
        f"{args.rounds} rounds, interleaved; {pin}; Python {sys.version.split()[0]}"
    )
    servers = {kind: start_server(kind) for kind in ("gwcore", "uvicorn")}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.rounds):
            for name, path, post in SCENARIOS:
                for kind, (proc, port) in servers.items():
                    results.setdefault((kind, name), []).append(
                        measure(proc.pid, port, path, post, args)
                    )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)

    def med(kind: str, name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[(kind, name)])

    print()
    print(
        f"{'scenario':<24} {'gwcore req/s':>13} {'uvicorn req/s':>14} {'ratio':>6} "
        f"{'gwcore us/req':>14} {'uvicorn us/req':>15} {'ratio':>6} {'req/s per core':>15}"
    )
    for name, _, _ in SCENARIOS:
        g_rps, u_rps = med("gwcore", name, 0), med("uvicorn", name, 0)
        g_cpu, u_cpu = med("gwcore", name, 1), med("uvicorn", name, 1)
        print(
            f"{name:<24} {g_rps:>13,.0f} {u_rps:>14,.0f} {g_rps / u_rps:>5.2f}x "
            f"{g_cpu:>14.1f} {u_cpu:>15.1f} {g_cpu / u_cpu:>5.2f}x {u_cpu / g_cpu:>14.2f}x"
        )
    print(
        "\nreq/s per core = 1e6 / (server CPU us per request): the throughput ratio of one fully"
        "\nbusy worker, insensitive to other load on a shared machine. uvicorn serves both echo"
        "\nrows with the same raw ASGI coroutine."
    )


if __name__ == "__main__":
    main()
