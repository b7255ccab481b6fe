"""The processes a benchmark starts on loopback: the mock upstream, gwcore, nginx, the Python
floor, LiteLLM proxy, and any other gateway the user already runs (given as a URL).

Owns their command lines and configs (written into a temp dir the caller owns), CPU pinning
(``taskset``: the targets on one core, the mock and the load generator on the other), start-up
checks (listening within a deadline) and shutdown. It never binds or connects to anything but
127.0.0.1, and it never measures: ``gwcore.benchmark.loadgen`` does.
"""

from __future__ import annotations

import contextlib
import grp
import importlib.util
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gwcore.benchmark.procstat import children, listening_pids

MODEL = "gpt-bench"  # OpenAI chat on the main mock
ANTHROPIC_MODEL = "claude-bench"  # Anthropic Messages on the main mock (translated by gateways)
# upstream (mock) name -> the model the gateways route to it
UPSTREAM_MODELS = {"main": MODEL, "long": "gpt-bench-long", "paced": "gpt-bench-paced"}


# -- pinning ------------------------------------------------------------------------------------


@dataclass
class Pinning:
    """Targets on ``target_cpu``, the mock, the load generator and wrk on ``load_cpu``."""

    enabled: bool
    target_cpu: int = 0
    load_cpu: int = 1

    @classmethod
    def detect(cls, want: bool = True) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if not want or not shutil.which("taskset") or len(cpus) < 2:
            return cls(False)
        return cls(True, cpus[0], cpus[1])

    def prefix(self, cpu: int) -> list[str]:
        return ["taskset", "-c", str(cpu)] if self.enabled else []

    def pin_self(self) -> None:
        """The load generator is the calling process."""
        if self.enabled:
            os.sched_setaffinity(0, {self.load_cpu})

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (taskset missing, fewer than 2 CPUs, or --no-pin)"
        return (
            f"targets on CPU {self.target_cpu}; mock upstreams, load generator and wrk on "
            f"CPU {self.load_cpu}"
        )


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@dataclass
class Service:
    """A target or a mock: its processes, its port(s), and the pids whose CPU and memory count.

    ``ports`` maps an upstream name ("main", "long", "paced") to the port that reaches it, for a
    target that cannot route by model (nginx, the floor); others serve every upstream on ``port``.
    """

    name: str
    proc: subprocess.Popen | None
    port: int
    cpu_pid: int  # the process whose CPU is the target's (nginx: its worker)
    log: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    cpu_pids: list[int] = field(default_factory=list)  # all roots; default [cpu_pid]
    extra: list[subprocess.Popen] = field(default_factory=list)
    host: str = "127.0.0.1"
    prefix: str = ""  # URL path before /v1 (a gateway given as a URL)
    version: str = ""

    def __post_init__(self) -> None:
        if not self.cpu_pids and self.cpu_pid:
            self.cpu_pids = [self.cpu_pid]

    def port_for(self, upstream: str) -> int:
        return self.ports.get(upstream, self.port)

    def stop(self) -> None:
        for proc in [p for p in (self.proc, *self.extra) if p is not None]:
            if proc.poll() is None:
                proc.send_signal(
                    signal.SIGQUIT if self.name.startswith("nginx") else signal.SIGTERM
                )
        for proc in [p for p in (self.proc, *self.extra) if p is not None]:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _gateway_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GWCORE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def start_mock(
    tmp: Path,
    events: int,
    pin: Pinning,
    *,
    name: str = "mock",
    pace_ms: float = 0.0,
    text_deltas: int = 1,
    port: int | None = None,
    provider_headers: bool = False,
) -> Service:
    """``python -m gwcore.testing.mock_upstream`` on the load generator's CPU."""
    port = port or free_port()
    log = tmp / f"{name}.log"
    cmd = [*pin.prefix(pin.load_cpu), sys.executable, "-m", "gwcore.testing.mock_upstream"]
    cmd += ["--port", str(port), "--events", str(events), "--pace-ms", f"{pace_ms:g}"]
    cmd += ["--text-deltas", str(text_deltas)]
    if provider_headers:
        cmd.append("--provider-headers")
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_listening(proc, port, f"the mock upstream ({name})")
    return Service(name, proc, port, proc.pid, log)


def gwcore_config(mocks: dict[str, int]) -> str:
    """A gateway config routing the bench models to the mocks (upstream name -> port)."""
    lines = ["from_env: false", "providers:"]
    for upstream, port in mocks.items():
        base = f"http://127.0.0.1:{port}/v1"
        lines.append(
            f'  - {{name: bench-{upstream}, type: openai_compatible, base_url: "{base}",'
            f" models: [{UPSTREAM_MODELS[upstream]}]}}"
        )
        if upstream == "main":
            lines.append(
                f'  - {{name: bench-anthropic, type: anthropic, base_url: "{base}",'
                f" api_key: bench, models: [{ANTHROPIC_MODEL}]}}"
            )
    return "\n".join(lines) + "\n"


def start_gwcore(
    tmp: Path,
    mocks: dict[str, int] | int,
    pin: Pinning,
    *,
    name: str = "gwcore",
    workers: int = 1,
    log_level: str | None = None,
    env: dict[str, str] | None = None,
    python: str | None = None,
) -> Service:
    """``gwcore serve`` from ``python`` (default: this interpreter), its ledger (SQLite, the
    default) in ``tmp``."""
    if isinstance(mocks, int):
        mocks = {"main": mocks}
    port = free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(gwcore_config(mocks))
    cmd = [*pin.prefix(pin.target_cpu), python or sys.executable, "-m", "gwcore.cli", "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--config", str(config)]
    if log_level:
        cmd += ["--log-level", log_level]
    log = tmp / f"{name}.log"
    run_dir = tmp / name
    run_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        cmd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**_gateway_env(), **(env or {})},
        cwd=run_dir,
    )
    wait_listening(proc, port, "gwcore serve")
    from gwcore import __version__

    return Service(name, proc, port, proc.pid, log, version=f"gwcore {__version__}")


def nginx_executable() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def start_nginx(
    tmp: Path, mocks: dict[str, int] | int, pin: Pinning, *, access_log: bool = False
) -> Service | None:
    """One nginx worker, one ``server`` per mock: ``proxy_pass`` to a keep-alive upstream block,
    ``proxy_buffering off``, access log off (``access_log``: nginx's default one instead, a
    ``combined`` line per request written to a file as it ends; the service is then named
    ``nginx_log``). None when nginx is not installed."""
    exe = nginx_executable()
    if exe is None:
        return None
    if isinstance(mocks, int):
        mocks = {"main": mocks}
    name = "nginx_log" if access_log else "nginx"
    root = tmp / name
    root.mkdir()
    user = ""
    if os.geteuid() == 0:  # workers would otherwise drop to "nobody": run them as the current user
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    temps = " ".join(
        f"{kind}_temp_path {root / kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    ports = {upstream: free_port() for upstream in mocks}
    blocks = "".join(
        f"""
    upstream bench_{upstream} {{ server 127.0.0.1:{mock_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{ports[upstream]};
        location / {{
            proxy_pass http://bench_{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}"""
        for upstream, mock_port in mocks.items()
    )
    (root / "nginx.conf").write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log {root / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
    access_log {root / "access.log" if access_log else "off"};
    client_body_temp_path {root / "client_body"};
    {temps}{blocks}
}}
"""
    )
    cmd = [*pin.prefix(pin.target_cpu), exe, "-p", str(root), "-e", str(root / "error.log")]
    cmd += ["-c", str(root / "nginx.conf")]
    log = root / "stderr.log"
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    first = next(iter(ports.values()))
    wait_listening(proc, first, name)
    workers: list[int] = []
    deadline = time.monotonic() + 5
    while not workers and time.monotonic() < deadline:
        workers = children(proc.pid)
        time.sleep(0.05)
    if len(workers) != 1:
        proc.kill()
        raise RuntimeError(f"nginx: expected one worker, found {workers}")
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip()
    return Service(name, proc, first, workers[0], log, ports=ports, version=version.split(": ")[-1])


_FLOOR_VERSIONS = {
    "floor": "uvloop byte pipe",
    "floor_accounted": "uvloop byte pipe with usage accounting",
    "floor_counted": "uvloop byte pipe with usage records in memory",
}


def start_floor(
    tmp: Path,
    mocks: dict[str, int] | int,
    pin: Pinning,
    *,
    accounted: bool = False,
    ledger: bool = True,
) -> Service:
    """``gwcore.benchmark.floor``, one process per mock (it cannot route); ``accounted``:
    ``gwcore.benchmark.floor_accounted`` (the service "floor_accounted"), its SQLite ledger in
    ``tmp``, or without ``ledger`` its records in memory, unpriced (the service "floor_counted")."""
    if isinstance(mocks, int):
        mocks = {"main": mocks}
    name = ("floor_accounted" if ledger else "floor_counted") if accounted else "floor"
    procs, ports = [], {}
    for upstream, mock_port in mocks.items():
        port = free_port()
        log = tmp / f"{name}-{upstream}.log"
        module = "floor_accounted" if accounted else "floor"
        cmd = [*pin.prefix(pin.target_cpu), sys.executable, "-m", f"gwcore.benchmark.{module}"]
        cmd += [str(port), str(mock_port)]
        if accounted:
            cmd.append(str(tmp / f"{name}-{upstream}.db") if ledger else "memory")
        proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        procs.append(proc)
        wait_listening(proc, port, f"the {'accounted ' if accounted else ''}pass-through floor")
        ports[upstream] = port
    first = next(iter(ports))
    return Service(
        name,
        procs[0],
        ports[first],
        procs[0].pid,
        tmp / f"{name}-{first}.log",
        ports=ports,
        cpu_pids=[p.pid for p in procs],
        extra=procs[1:],
        version=_FLOOR_VERSIONS[name],
    )


def usage_log_lines(log: Path) -> int:
    """The ``gwcore.usage`` lines (one per request at the default log level) in a gwcore log."""
    with log.open("rb") as f:
        return sum(1 for line in f if b" gwcore.usage " in line)


def served_requests(port: int) -> int:
    """Requests a gwcore process counted in its own ``/metrics`` (``gwcore_requests_total``)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gwcore_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# -- LiteLLM proxy ------------------------------------------------------------------------------

LITELLM_INSTALL = "pip install 'litellm[proxy]'"


def litellm_command() -> list[str] | None:
    """How to start LiteLLM proxy here, or None when it is not installed."""
    exe = shutil.which("litellm")
    if exe:
        return [exe]
    if importlib.util.find_spec("litellm") is not None:
        code = "from litellm.proxy.proxy_cli import run_server; run_server()"
        return [sys.executable, "-c", code]
    return None


def litellm_config(mocks: dict[str, int]) -> str:
    """LiteLLM's model_list for the bench models (``openai/`` and ``anthropic/`` providers with
    ``api_base`` on the mocks; LiteLLM appends ``/chat/completions`` and ``/v1/messages``)."""
    lines = ["model_list:"]
    for upstream, port in mocks.items():
        lines += [
            f"  - model_name: {UPSTREAM_MODELS[upstream]}",
            "    litellm_params:",
            f"      model: openai/{UPSTREAM_MODELS[upstream]}",
            f'      api_base: "http://127.0.0.1:{port}/v1"',
            "      api_key: bench",
        ]
        if upstream == "main":
            lines += [
                f"  - model_name: {ANTHROPIC_MODEL}",
                "    litellm_params:",
                f"      model: anthropic/{ANTHROPIC_MODEL}",
                f'      api_base: "http://127.0.0.1:{port}"',
                "      api_key: bench",
            ]
    lines += ["litellm_settings:", "  drop_params: true", "  request_timeout: 600"]
    return "\n".join(lines) + "\n"


def start_litellm(
    tmp: Path, mocks: dict[str, int], pin: Pinning, *, workers: int = 1
) -> Service | None:
    """LiteLLM proxy offline (``LITELLM_LOCAL_MODEL_COST_MAP=True``), no master key, no database.
    None when it is not installed."""
    base = litellm_command()
    if base is None:
        return None
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(litellm_config(mocks))
    cmd = [*pin.prefix(pin.target_cpu), *base, "--config", str(config)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    env.pop("DATABASE_URL", None)
    log = tmp / "litellm.log"
    run_dir = tmp / "litellm"
    run_dir.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=run_dir
    )
    wait_listening(proc, port, "litellm", timeout=120)
    version = ""
    with contextlib.suppress(Exception):
        from importlib.metadata import version as dist_version

        version = f"litellm {dist_version('litellm')}"
    return Service("litellm", proc, port, proc.pid, log, version=version)


# -- a gateway given as a URL -------------------------------------------------------------------


def url_target(spec: str) -> Service:
    """``[name=]http://127.0.0.1:PORT[/prefix]``: a gateway the user runs, routing the bench
    models to the mocks (see ``--mock-port``). Loopback only: its processes are measured too,
    found by their listening socket."""
    name, _, url = spec.partition("=") if "=" in spec.split("://", 1)[0] else ("", "", spec)
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"target {spec!r}: expected http://127.0.0.1:PORT[/prefix]")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"target {spec!r}: only loopback gateways can be measured here")
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    pids = listening_pids(parts.port)
    return Service(
        name or f"{host}:{parts.port}",
        None,
        parts.port,
        pids[0] if pids else 0,
        None,
        cpu_pids=pids,
        host="127.0.0.1" if host == "localhost" else host,
        prefix=prefix,
        version=url,
    )
