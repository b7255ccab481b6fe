"""What the benchmark reads from ``/proc``: CPU time, memory, system calls, CPU busy time, sockets.

Owns the accounting of the processes under test (a process and its descendants: gwcore's forked
workers, nginx's worker), the per-CPU busy ticks that show how loaded each core was, and the TCP
sockets of a port (their kernel queues, the processes listening on it). Linux
only; it reads and never writes, and it never signals a process.
"""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
from collections.abc import Callable, Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_LISTEN = 0x0A


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own threads, not its children)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The direct children of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat_fields(int(entry))[1]) == pid:
                    out.append(int(entry))
    return out


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their live descendants (one pass over /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parent[int(entry)] = int(_stat_fields(int(entry))[1])
    out = [pid for pid in roots if pid in parent]
    seen = set(out)
    i = 0
    while i < len(out):
        for pid, ppid in parent.items():
            if ppid == out[i] and pid not in seen:
                seen.add(pid)
                out.append(pid)
        i += 1
    return out


def user_seconds(pid: int) -> float:
    """utime of ``pid``: its CPU time in user space (the rest of ``cpu_seconds`` is kernel)."""
    return int(_stat_fields(pid)[11]) / CLK_TCK


def tree_cpu_seconds(pids: Iterable[int], of: Callable[[int], float] = cpu_seconds) -> float:
    """utime + stime (or what ``of`` says, e.g. ``user_seconds``) summed over ``pids`` (exited
    ones count 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += of(pid)
    return total


def rss_bytes(pids: Iterable[int]) -> int:
    """Resident set size summed over ``pids`` (/proc/<pid>/statm)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE_SIZE
    return total


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
    """utime + stime of this process (the load generator)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("model name", "Model", "Processor")):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def interpreter(pid: int) -> str:
    """The Python that process ``pid`` runs, for a report: its version and whether libpython is a
    shared library it loads (a plain ``./configure --enable-shared`` build, as pyenv makes) or
    linked into the executable (as distributions build theirs, with PGO and LTO: faster). Linux
    only; "unknown" where ``/proc`` does not tell."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps") as f:
            shared = "/libpython" in f.read()
        out = subprocess.run(
            [exe, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    version = out.stdout.strip() or "unknown"
    return f"Python {version} ({'shared libpython' if shared else 'libpython linked in'})"


def _tcp_table(port: int) -> Iterable[tuple[int, int]]:
    """(inode, state) of every TCP socket whose local port is ``port`` (IPv4 and IPv6)."""
    suffix = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[1].endswith(suffix):
                yield int(parts[9]), int(parts[3], 16)


def tcp_queues(local_port: int = 0, remote_port: int = 0) -> tuple[int, int]:
    """(send queue, receive queue) bytes summed over the TCP sockets with that local or remote
    port: what the kernel holds that the peer has not acknowledged / the owner has not read."""
    local = f":{local_port:04X}" if local_port else None
    remote = f":{remote_port:04X}" if remote_port else None
    tx = rx = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 5 or parts[3] == "0A":
                continue
            if (local and parts[1].endswith(local)) or (remote and parts[2].endswith(remote)):
                t, r = parts[4].split(":")
                tx += int(t, 16)
                rx += int(r, 16)
    return tx, rx


def listening_pids(port: int) -> list[int]:
    """The processes holding a listening socket on ``port`` (every SO_REUSEPORT worker)."""
    inodes = {inode for inode, state in _tcp_table(port) if state == _LISTEN and inode}
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        out.append(int(entry))
                        break
    return sorted(out)
