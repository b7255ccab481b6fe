"""One benchmark run: start the mocks and the targets, probe, interleave rounds, write the results.

Owns the workloads (what each sends, which mock answers it, what a correct answer is per target),
the order of the rounds (every target at every workload and concurrency, the order reversed every
other round), the wrk cross-check, and the files of a run (report.md, results.json, chart.png).
A target that cannot serve a workload (nginx does not translate) or fails its probe is skipped
with a note, never silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gwcore.benchmark import loadgen, report
from gwcore.benchmark.loadgen import Exchange, Expect, chat_body, http_request
from gwcore.benchmark.procstat import cpu_model
from gwcore.benchmark.services import (
    ANTHROPIC_MODEL,
    LITELLM_INSTALL,
    MODEL,
    UPSTREAM_MODELS,
    Pinning,
    Service,
    start_floor,
    start_gwcore,
    start_litellm,
    start_mock,
    start_nginx,
    url_target,
)


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    upstream: str  # which mock answers it: "main", "long" (slow readers), "paced" (storm)
    mode: str  # loadgen.run_load mode


WORKLOADS = {
    w.name: w
    for w in (
        Workload("stream", "chat streaming relay", "main", "complete"),
        Workload("nonstream", "chat non-streaming", "main", "complete"),
        Workload(
            "translated", "chat streaming translated (Anthropic upstream)", "main", "complete"
        ),
        Workload("slow", "slow readers", "long", "slow"),
        Workload("storm", "disconnect storm", "paced", "storm"),
    )
}
# --mock-port P: the main mock on P, the slow readers' on P+1, the storm's on P+2
MOCK_PORT_OFFSETS = {"main": 0, "long": 1, "paced": 2}
BUILTIN_TARGETS = ("direct", "gwcore", "nginx", "litellm", "floor")
# targets whose answers are known byte for byte (exact event counts); others: at least one event
STRICT = ("direct", "gwcore", "nginx", "floor")


@dataclass
class Options:
    duration: float = 5.0
    warmup: float = 1.0
    rounds: int = 3
    concurrency: list[int] = field(default_factory=lambda: [1, 32, 256])
    workloads: list[str] = field(default_factory=lambda: list(WORKLOADS))
    targets: list[str] = field(default_factory=lambda: ["direct", "gwcore", "nginx", "litellm"])
    out: Path = Path("gwcore-bench")
    workers: int = 1
    events: int = 33
    text_deltas: int = 33
    slow_events: int = 4000
    storm_pace_ms: float = 50.0
    storm_hangup_after: int = 2
    mock_port: int | None = None
    wrk: bool = True
    pin: bool = True
    chart: bool = True
    quiet: bool = False
    command: str = ""


def exchange_for(workload: Workload, target: Service, opts: Options) -> Exchange | str:
    """What ``target`` is sent for ``workload`` and how its answer is checked; or why not."""
    from gwcore.testing.mock_upstream import anthropic_stream, split_sse_events

    strict = target.name in STRICT or target.name.startswith("gwcore")
    base = target.prefix + "/v1"
    if workload.name == "translated":
        if target.name == "direct":  # the Anthropic stream itself
            events = split_sse_events(anthropic_stream(ANTHROPIC_MODEL, opts.text_deltas))
            body = (
                b'{"model":"%b","max_tokens":256,"stream":true,"messages":[{"role":"user",'
                b'"content":"Say hello in one word."}]}' % ANTHROPIC_MODEL.encode()
            )
            headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
            return Exchange(
                http_request("/v1/messages", body, headers), Expect(len(events), events[-1])
            )
        if target.name in ("nginx", "floor"):
            return f"{target.name} does not translate"
        body = chat_body(ANTHROPIC_MODEL, True)
        expected = opts.text_deltas + 3  # role, the deltas, finish, [DONE]
    elif workload.name == "nonstream":
        return Exchange(
            http_request(base + "/chat/completions", chat_body(MODEL, False)), Expect(json=True)
        )
    else:
        body = chat_body(UPSTREAM_MODELS[workload.upstream], True)
        expected = opts.slow_events if workload.name == "slow" else opts.events
    return Exchange(
        http_request(base + "/chat/completions", body), Expect(expected if strict else None)
    )


def _start_targets(tmp: Path, opts: Options, pin: Pinning, mocks: dict, notes: list) -> dict:
    ports = {name: svc.port for name, svc in mocks.items()}
    targets: dict[str, Service] = {}
    for spec in opts.targets:
        if spec == "direct":
            targets["direct"] = Service(
                "direct",
                None,
                ports.get("main", 0),
                0,
                ports=ports,
                version="the load generator on the mock itself",
            )
        elif spec == "gwcore":
            targets["gwcore"] = start_gwcore(tmp, ports, pin, workers=opts.workers)
        elif spec == "nginx":
            svc = start_nginx(tmp, ports, pin)
            if svc is None:
                notes.append("nginx is not installed: target skipped (apt-get install nginx)")
            else:
                targets["nginx"] = svc
        elif spec == "litellm":
            svc = start_litellm(tmp, ports, pin, workers=opts.workers)
            if svc is None:
                notes.append(
                    f"LiteLLM proxy is not installed: target skipped ({LITELLM_INSTALL}; see "
                    "bench/README.md)"
                )
            else:
                targets["litellm"] = svc
        elif spec == "floor":
            targets["floor"] = start_floor(tmp, ports, pin)
        else:
            svc = url_target(spec)
            if not svc.cpu_pids:
                notes.append(
                    f"{svc.name}: no process found listening on port {svc.port}: its CPU and "
                    "memory are not measured"
                )
            targets[svc.name] = svc
    return targets


def _describe(name: str, svc: Service, pin: Pinning, opts: Options) -> str:
    cpu = f"CPU {pin.target_cpu}" if pin.enabled and svc.proc is not None else "not pinned"
    if name == "direct":
        return svc.version
    if name.startswith("mock"):
        cpu = f"CPU {pin.load_cpu}" if pin.enabled else "not pinned"
        return f"`gwcore.testing.mock_upstream` on port {svc.port}, {cpu}; {svc.version}"
    if name == "gwcore":
        return (
            f"`gwcore serve --workers {opts.workers}` (default logging, SQLite ledger in a temp "
            f"dir), {cpu}, pids {svc.cpu_pids}"
        )
    if name == "nginx":
        return (
            f"{svc.version}: one worker, `proxy_pass` to a keep-alive upstream (`keepalive 64`, "
            f"HTTP/1.1), `proxy_buffering off`, access log off; one `server` per mock; {cpu}"
        )
    if name == "litellm":
        return (
            f"{svc.version} proxy, `--num_workers {opts.workers}`, no master key, no database, "
            f"`LITELLM_LOCAL_MODEL_COST_MAP=True`; {cpu}"
        )
    if name == "floor":
        return f"`gwcore.benchmark.floor` (a uvloop byte pipe, one per mock); {cpu}"
    return f"a gateway at {svc.version}, measured processes {svc.cpu_pids or 'none found'}"


async def _measure(opts: Options, pin: Pinning, mocks: dict, targets: dict, notes: list, tmp):
    log = (lambda *a: None) if opts.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    plan: dict[tuple[str, str], Exchange] = {}
    for w in opts.workloads:
        workload = WORKLOADS[w]
        for name, svc in targets.items():
            ex = exchange_for(workload, svc, opts)
            if isinstance(ex, str):
                notes.append(f"{name}: {workload.title} skipped: {ex}")
                continue
            port = svc.port_for(workload.upstream)
            ok, what = await loadgen.probe(port, ex, svc.host, timeout=30)
            if not ok and svc.proc is None and name != "direct":  # a stale keep-alive: once more
                ok, what = await loadgen.probe(port, ex, svc.host, timeout=30)
            log(f"probe {name} {w}: {'OK' if ok else 'FAILED'}: {what}")
            if ok:
                plan[(w, name)] = ex
            else:
                notes.append(f"probe {name} {w} FAILED ({what}): skipped")
    rounds: dict = {}
    names = list(targets)
    for r in range(opts.rounds):
        for w in opts.workloads:
            workload = WORKLOADS[w]
            mock = mocks[workload.upstream]
            for c in opts.concurrency:
                for name in names if r % 2 == 0 else names[::-1]:
                    ex = plan.get((w, name))
                    if ex is None:
                        continue
                    svc = targets[name]
                    res = await loadgen.run_load(
                        svc.port_for(workload.upstream),
                        c,
                        opts.warmup,
                        opts.duration,
                        ex,
                        {"relay": svc.cpu_pids, "mock": mock.cpu_pid},
                        pin,
                        mode=workload.mode,
                        hangup_after=opts.storm_hangup_after,
                        host=svc.host,
                        mock_port=mock.port if workload.mode in ("slow", "storm") else None,
                    )
                    rounds.setdefault((w, name, c), []).append(res)
                    log(
                        f"round {r + 1} {w:10} {name:8} c={c:<4} "
                        f"{report.fmt(res['rps']):>8} req/s  TTFE p50 "
                        f"{report.fmt(res['ttfe_p50_us'])} µs  CPU "
                        f"{report.fmt(res['relay_cpu_us'])} µs/req  peak RSS "
                        f"{report.fmt(res['rss_peak_mb'], 1)} MB  errors "
                        f"{sum(res['errors'].values())}"
                    )
                    await asyncio.sleep(0.2)
    wrk: dict = {}
    if opts.wrk and loadgen.wrk_available():
        c = max(opts.concurrency)
        for w in ("stream", "nonstream"):
            for name, svc in targets.items():
                ex = plan.get((w, name))
                if ex is None:
                    continue
                head, _, body = ex.request.partition(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                wrk[(w, name, c)] = await loadgen.run_wrk(
                    tmp, svc.port, path, body, c, opts.duration, svc.cpu_pids, pin
                )
                log(f"wrk {w} {name} c={c}: {wrk[(w, name, c)]['rps']:.0f} req/s")
                await asyncio.sleep(0.2)
    elif opts.wrk:
        notes.append("wrk is not installed: no load generator cross-check")
    return rounds, wrk


def _stream_bytes(events: int) -> int:
    from gwcore.testing.mock_upstream import chat_stream_events

    return sum(len(e) for e in chat_stream_events(UPSTREAM_MODELS["long"], events, False, 11))


def run(opts: Options) -> dict:
    """Run the benchmark; write report.md, results.json and chart.png into ``opts.out``."""
    import uvloop

    from gwcore import __version__
    from gwcore.sse import IMPLEMENTATION

    unknown = [w for w in opts.workloads if w not in WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    pin = Pinning.detect(opts.pin)
    pin.pin_self()
    notes: list[str] = []
    if not pin.enabled:
        notes.append("not pinned: " + pin.describe())
    services: dict[str, Service] = {}
    meta_services: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            mocks: dict[str, Service] = {}
            upstreams = [
                u
                for u in ("main", "long", "paced")
                if any(WORKLOADS[w].upstream == u for w in opts.workloads)
            ]
            for upstream in upstreams:
                offset = MOCK_PORT_OFFSETS[upstream]
                port = opts.mock_port + offset if opts.mock_port else None
                if upstream == "long":
                    svc = start_mock(tmp, opts.slow_events, pin, name="mock-long", port=port)
                    svc.version = f"{opts.slow_events} events, no pacing (slow readers)"
                elif upstream == "paced":
                    svc = start_mock(
                        tmp,
                        opts.events,
                        pin,
                        name="mock-paced",
                        port=port,
                        pace_ms=opts.storm_pace_ms,
                    )
                    svc.version = (
                        f"{opts.events} events, {opts.storm_pace_ms:g} ms apart (disconnect storm)"
                    )
                else:
                    svc = start_mock(
                        tmp, opts.events, pin, name="mock", port=port, text_deltas=opts.text_deltas
                    )
                    svc.version = (
                        f"{opts.events} events per chat stream, {opts.text_deltas} text deltas "
                        "per Anthropic stream, no pacing"
                    )
                mocks[upstream] = svc
                services[svc.name] = svc
            targets = _start_targets(tmp, opts, pin, mocks, notes)
            services.update({k: v for k, v in targets.items() if k != "direct"})
            for name, svc in {**{m.name: m for m in mocks.values()}, **targets}.items():
                meta_services[name] = _describe(name, svc, pin, opts)
            meta_services["load generator"] = (
                f"this process (asyncio on uvloop), pid {os.getpid()}"
                + (f", CPU {pin.load_cpu}" if pin.enabled else "")
                + "; wrk (when installed) there too"
            )
            rounds, wrk = uvloop.run(_measure(opts, pin, mocks, targets, notes, tmp))
        finally:
            for svc in services.values():
                with contextlib.suppress(Exception):
                    svc.stop()
    summary = report.summarize(rounds)
    meta = {
        "command": opts.command or "gwcore bench",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gwcore": __version__,
        "scanner": IMPLEMENTATION,
        "rounds": opts.rounds,
        "duration": opts.duration,
        "warmup": opts.warmup,
        "workloads": opts.workloads,
        "concurrency": opts.concurrency,
        "targets": [t for t in targets if any(k[1] == t for k in summary)],
        "titles": {w: WORKLOADS[w].title for w in WORKLOADS},
        "pinning": pin.describe(),
        "services": meta_services,
        "params": {
            "events": opts.events,
            "deltas": opts.text_deltas,
            "model": ANTHROPIC_MODEL,
            "slow_events": opts.slow_events,
            "slow_mb": _stream_bytes(opts.slow_events) / 2**20,
            "hangup": opts.storm_hangup_after,
            "pace": opts.storm_pace_ms,
            "settle": loadgen.SETTLE,
        },
    }
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.chart:
        why_not = report.chart(meta, summary, out / "chart.png")
        if why_not:
            notes.append(why_not)
        else:
            meta["chart"] = "chart.png"
    text = report.render(meta, summary, wrk, notes)
    (out / "report.md").write_text(text)
    results = {
        "meta": meta,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "medians": [
            {"workload": w, "target": t, "concurrency": c, **s} for (w, t, c), s in summary.items()
        ],
        "rounds": [
            {"workload": w, "target": t, "concurrency": c, "round": i + 1, **r}
            for (w, t, c), rs in rounds.items()
            for i, r in enumerate(rs)
        ],
        "wrk": [
            {"workload": w, "target": t, "concurrency": c, **k} for (w, t, c), k in wrk.items()
        ],
        "notes": notes,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return {"report": text, "summary": summary, "results": results}


def command_line(opts: Options) -> str:
    """The ``gwcore bench`` command that reproduces ``opts`` (the main flags always, others
    when not at their default)."""
    default = Options()
    words = [
        "gwcore",
        "bench",
        "--duration",
        f"{opts.duration:g}",
        "--rounds",
        str(opts.rounds),
        "--concurrency",
        ",".join(map(str, opts.concurrency)),
        "--workloads",
        ",".join(opts.workloads),
        "--targets",
        ",".join(opts.targets),
    ]
    flags = {
        "warmup": "--warmup",
        "workers": "--workers",
        "events": "--events",
        "text_deltas": "--text-deltas",
        "slow_events": "--slow-events",
        "storm_pace_ms": "--storm-pace-ms",
        "storm_hangup_after": "--storm-hangup-after",
        "mock_port": "--mock-port",
    }
    for name, flag in flags.items():
        value = getattr(opts, name)
        if value != getattr(default, name):
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    words += [
        flag
        for name, flag in (("wrk", "--no-wrk"), ("pin", "--no-pin"), ("chart", "--no-chart"))
        if not getattr(opts, name)
    ]
    words += ["--out", str(opts.out)]
    return " ".join(shlex.quote(w) for w in words)
