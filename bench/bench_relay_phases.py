"""What gwcore does between a stream's system calls, counted in instructions by callgrind.

Time to the first event is the client's request crossing the relay, the upstream answering, and
the answer's head and first event crossing the relay back. The relay's part is two stretches of
its own work: from the read that brings the client's request to the send that passes it upstream
("request"), and from the read that brings the upstream's response head to the send of the
client's head and first event ("response head"). Whatever gwcore does after those sends (the
rest of the stream, the usage record, freeing) costs CPU but does not delay the first event.

This runs gwcore under ``valgrind --tool=callgrind`` with a dump before every ``read`` and
``send`` call (``--dump-before``): each dump holds the instructions since the previous one, and
the functions in it tell which stretch it is (the front door's ``data_received`` for the
request, the upstream connection's ``_on_head_bytes`` for the response head). The mock paces its
events (``--pace-ms``, default 20: callgrind runs gwcore some fifty times slower, and without a
pause the first read would carry more than the first event). It prints the median of each
stretch over the measured requests, after a warm-up. gwcore only: nginx's binary carries no
function names to tell its stretches apart.

    python bench/bench_relay_phases.py [--n 30] [--targets gwcore_noledger,gwcore]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_relay_instructions as counted  # the same request and stream reader

from gwcore.benchmark.services import free_port, start_mock, wait_listening

WARMUP = 20
# libc's entry points for reads and sends (glibc names some two ways)
BOUNDARIES = ("read", "__libc_read", "send", "__send", "__libc_send", "sendmsg", "__libc_sendmsg")
STRETCHES = {
    "request": "HttpProtocol_9data_received",
    "response head": "UpstreamConnection__on_head_bytes",
}


def _run(
    tmp: Path, target: str, mock_port: int, n: int, keep: Path | None = None
) -> dict[str, list[int]]:
    """The instructions of each stretch, one entry per measured request, for one target; with
    ``keep``, the callgrind dump of each stretch's median request is copied there."""
    tmp = tmp / target
    tmp.mkdir()
    out = tmp / "cg.out"
    port = free_port()
    cmd, env = counted.gwcore_launch(tmp, target, mock_port, port)
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    grind += [f"--dump-before={name}" for name in BOUNDARIES]
    with (tmp / "gwcore.log").open("wb") as log:
        proc = subprocess.Popen(
            [*grind, *cmd], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp)
        )
    try:
        wait_listening(proc, port, target, timeout=120)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(WARMUP):
                counted._stream(sock)
            time.sleep(0.5)
            done = _parts(out)
            first = done[-1] + 1 if done else 1
            for _ in range(n):
                counted._stream(sock)
    finally:
        counted.stop(proc)
    found: dict[str, list[int]] = {name: [] for name in STRETCHES}
    files: dict[str, list[tuple[int, Path]]] = {name: [] for name in STRETCHES}
    for part in _parts(out):
        if part < first:
            continue
        text = out.with_name(f"{out.name}.{part}").read_text(errors="replace")
        if not re.search(r"Trigger: --dump-before=\S*send", text):
            continue  # a stretch that ends in a read: not one before a send
        total = re.search(r"^summary:\s+(\d+)", text, re.M)
        for name, marker in STRETCHES.items():
            if total and marker in text:
                found[name].append(int(total.group(1)))
                files[name].append((int(total.group(1)), out.with_name(f"{out.name}.{part}")))
                break
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for name, dumps in files.items():
            if dumps:
                dumps.sort()
                shutil.copy(dumps[len(dumps) // 2][1], keep / f"{target}.{name}.callgrind")
    return found


def _parts(out: Path) -> list[int]:
    return sorted(int(p.name.rsplit(".", 1)[1]) for p in out.parent.glob(out.name + ".*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30, help="measured requests (after a warm-up)")
    parser.add_argument(
        "--targets",
        default="gwcore_noledger,gwcore",
        help="gwcore targets of bench_relay_instructions",
    )
    parser.add_argument("--events", type=int, default=3, help="SSE events per stream")
    parser.add_argument("--pace-ms", type=float, default=20.0, help="the mock's pause per event")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each stretch's median dump here (TARGET.STRETCH.callgrind), for"
        " callgrind_annotate",
    )
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install -y valgrind)")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mock = start_mock(tmp, args.events, counted.NO_PIN, pace_ms=args.pace_ms)
        try:
            for target in args.targets.split(","):
                found = _run(tmp, target, mock.port, args.n, args.keep)
                cells = []
                for name in STRETCHES:
                    values = found[name]
                    if len(values) < args.n // 2:
                        raise RuntimeError(f"{target}: {len(values)} {name} stretches found")
                    cells.append(statistics.median(values))
                rows.append((target, *cells, sum(cells)))
        finally:
            mock.stop()
    print(
        "\n| relay | request (client read -> upstream send) | response head (upstream read -> "
        "client send) | both: the relay's work before the first event |"
    )
    print("|---|--:|--:|--:|")
    for target, *cells in rows:
        print(f"| {target} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
