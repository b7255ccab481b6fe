"""Turning measured rounds into figures: medians over rounds, the Markdown report, the chart.

Owns the arithmetic of the summary (medians, spreads, sums of counts), the report's tables (the
first one carries the ratios against direct and against gwcore), and ``chart.png`` (matplotlib,
optional: without it the chart is skipped and the report says so). It never measures.
"""

from __future__ import annotations

import collections
import math
import statistics
from pathlib import Path

# counts are summed over rounds (a leak in any round shows); everything numeric else: median
SUMMED = (
    "requests",
    "completed",
    "reconnects",
    "upstream_opened",
    "upstream_closed",
    "upstream_left_open",
)


def med(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.0f}%"


def summarize(rounds: dict) -> dict:
    """{key: [round results]} -> {key: medians over rounds, counts summed, errors merged}."""
    out = {}
    for key, results in rounds.items():
        s: dict = {}
        for name in results[0]:
            values = [r.get(name) for r in results]
            if name == "errors":
                errors: collections.Counter = collections.Counter()
                for v in values:
                    errors.update(v)
                s[name] = dict(errors)
            elif name in SUMMED:
                s[name] = (
                    sum(v for v in values if v is not None)
                    if any(v is not None for v in values)
                    else None
                )
            elif all(v is None or isinstance(v, (int, float)) for v in values):
                s[name] = med(values)
        rps = [r["rps"] for r in results if r.get("rps") is not None]
        s["rps_spread"] = (max(rps) - min(rps)) / s["rps"] if rps and s.get("rps") else None
        cpu = [r["relay_cpu_us"] for r in results if r.get("relay_cpu_us") is not None]
        s["cpu_spread"] = (
            (max(cpu) - min(cpu)) / s["relay_cpu_us"] if cpu and s.get("relay_cpu_us") else None
        )
        s["rounds"] = len(results)
        out[key] = s
    return out


def _ms(us: float | None) -> str:
    return "n/a" if us is None or math.isnan(us) else f"{us / 1000:,.2f}"


def _x(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _errors(s: dict) -> str:
    return str(sum(s["errors"].values()))


def first_table(meta: dict, summary: dict) -> list[str]:
    """The headline: per workload, concurrency and target, with ratios to direct and gwcore."""
    lines = [
        "| workload | c | target | req/s | ÷ direct | ÷ gwcore | TTFE p50 ms | TTFE p50 ÷ direct "
        "| CPU µs/req | CPU ÷ gwcore | peak RSS MB | errors |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for w in meta["workloads"]:
        for c in meta["concurrency"]:
            direct = summary.get((w, "direct", c), {})
            gw = summary.get((w, "gwcore", c), {})
            for t in meta["targets"]:
                s = summary.get((w, t, c))
                if s is None:
                    continue
                lines.append(
                    f"| {meta['titles'][w]} | {c} | {t} | {fmt(s.get('rps'))} "
                    f"| {_x(ratio(s.get('rps'), direct.get('rps')))} "
                    f"| {_x(ratio(s.get('rps'), gw.get('rps')))} "
                    f"| {_ms(s.get('ttfe_p50_us'))} "
                    f"| {_x(ratio(s.get('ttfe_p50_us'), direct.get('ttfe_p50_us')))} "
                    f"| {fmt(s.get('relay_cpu_us'))} "
                    f"| {_x(ratio(s.get('relay_cpu_us'), gw.get('relay_cpu_us')))} "
                    f"| {fmt(s.get('rss_peak_mb'), 1)} | {_errors(s)} |"
                )
    return lines


def workload_table(meta: dict, summary: dict, w: str) -> list[str]:
    extra_head, extra_align = "", ""
    if w == "slow":
        extra_head = (
            " events read / stream | RSS growth MB | kernel, to clients MB | kernel, from "
            "upstream MB | held at the mock MB |"
        )
        extra_align = "--:|--:|--:|--:|--:|"
    elif w == "storm":
        extra_head = " upstream opened | closed | left open |"
        extra_align = "--:|--:|--:|"
    lines = [
        "| target | c | req/s | spread | TTFE p50 ms | p90 | p99 | gap p99 ms | CPU µs/req "
        "| target CPU | peak RSS MB | errors |" + extra_head,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|" + extra_align,
    ]
    for c in meta["concurrency"]:
        for t in meta["targets"]:
            s = summary.get((w, t, c))
            if s is None:
                continue
            row = (
                f"| {t} | {c} | {fmt(s.get('rps'))} | {pct(s.get('rps_spread'))} "
                f"| {_ms(s.get('ttfe_p50_us'))} | {_ms(s.get('ttfe_p90_us'))} "
                f"| {_ms(s.get('ttfe_p99_us'))} | {_ms(s.get('gap_p99_us'))} "
                f"| {fmt(s.get('relay_cpu_us'))} | {pct(s.get('relay_busy'))} "
                f"| {fmt(s.get('rss_peak_mb'), 1)} | {_errors(s)} |"
            )
            if w == "slow":
                row += (
                    f" {fmt(s.get('events_per_stream'))} | {fmt(s.get('rss_growth_mb'), 1)} "
                    f"| {fmt(s.get('kernel_to_clients_mb'), 1)} "
                    f"| {fmt(s.get('kernel_from_upstream_mb'), 1)} "
                    f"| {fmt(s.get('held_at_mock_mb'), 1)} |"
                )
            elif w == "storm":
                row += (
                    f" {fmt(s.get('upstream_opened'))} | {fmt(s.get('upstream_closed'))} "
                    f"| {fmt(s.get('upstream_left_open'))} |"
                )
            lines.append(row)
    return lines


WORKLOAD_NOTES = {
    "stream": "`stream: true`, the mock answers {events} SSE events, one write each; gwcore "
    "relays the bytes unchanged.",
    "nonstream": "`stream: false`, one JSON chat completion (Content-Length). TTFE = first byte "
    "of the body.",
    "translated": "gateways ask the mock's Anthropic Messages API (`{model}`, {deltas} text "
    "deltas) and answer OpenAI chunks; `direct` reads the Anthropic stream itself.",
    "slow": "each client reads one event per second (8 KiB receive buffer, 1448-byte MSS as on "
    "Ethernet) for the whole run, then hangs up; the mock streams {slow_events} events "
    "(~{slow_mb:.1f} MB) as fast as it can. req/s and CPU/req do not apply. The target's RSS is "
    "sampled every 0.2 s (peak, and growth over the value before the clients connected): flow "
    "control keeps it flat. At the end of the window, where the unread rest of the streams "
    "sits, summed over the streams (/proc/net/tcp queues): in the target's kernel buffers "
    "toward the clients and from the upstream, and held back at the mock (a gateway that "
    "stops reading a paused stream leaves it there).",
    "storm": "each client hangs up after {hangup} events of a stream paced at {pace:g} ms per "
    "event, reconnects and asks again; req/s = streams hung up per second. Upstream "
    "connections as the mock counts them (`GET /_mock/stats`, summed over rounds): opened and "
    "closed during the run, and still open {settle:g} s after the last hang-up beyond those "
    "open before it (a gateway that keeps reading, or pools, an abandoned stream leaves them "
    "open).",
}


def render(meta: dict, summary: dict, wrk: dict, notes: list[str]) -> str:
    """The whole report.md."""
    lines = [
        "# gwcore bench",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date']}; {meta['cpu']}, {meta['cpus']} CPUs; Python {meta['python']}; "
        f"gwcore {meta['gwcore']} (SSE scanner: {meta['scanner']}). Medians over "
        f"{meta['rounds']} interleaved rounds of {meta['duration']:g} s (+{meta['warmup']:g} s "
        "warm-up; slow readers have none). Targets take turns (A B C, then C B A) at every "
        "workload and concurrency. TTFE = request written -> first `data:` byte of the body. CPU "
        "= utime+stime of the target's processes (children included; nginx: its worker) per "
        "request over the measured window. RSS = resident memory of the target's processes. "
        "Ratios: req/s and TTFE over `direct` (the load generator on the mock itself: the "
        "ceiling), req/s and CPU over `gwcore`.",
        "",
        *first_table(meta, summary),
        "",
        "## What ran where",
        "",
        f"- Pinning: {meta['pinning']}.",
        *[f"- `{name}`: {desc}" for name, desc in meta["services"].items()],
        "",
    ]
    for w in meta["workloads"]:
        lines += [
            f"## {meta['titles'][w]}",
            "",
            WORKLOAD_NOTES[w].format(**meta["params"]),
            "",
            *workload_table(meta, summary, w),
            "",
        ]
    lines += [
        "## Load generator check",
        "",
        "Client and mock CPU per request (both on the load CPU), how busy each CPU was, and one "
        "wrk run per target at the highest concurrency (no response checks; target CPU per "
        "request over it). A load CPU near 100% means the client and the mock, not the target, "
        "set req/s; CPU per request stays valid.",
        "",
        "| workload | target | c | client µs/req | mock µs/req | target CPU busy | load CPU busy "
        "| wrk req/s | wrk target CPU µs/req | wrk non-2xx / socket errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for w in meta["workloads"]:
        for c in meta["concurrency"]:
            for t in meta["targets"]:
                s = summary.get((w, t, c))
                if s is None:
                    continue
                k = wrk.get((w, t, c))
                wcols = (
                    f"{fmt(k['rps'])} | {fmt(k['relay_cpu_us'])} | "
                    f"{k['non_2xx']} / {k['socket_errors'] or 'none'}"
                    if k
                    else "- | - | -"
                )
                lines.append(
                    f"| {w} | {t} | {c} | {fmt(s.get('client_cpu_us'))} "
                    f"| {fmt(s.get('mock_cpu_us'))} | {pct(s.get('cpu0_busy'))} "
                    f"| {pct(s.get('cpu1_busy'))} | {wcols} |"
                )
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    other = [v for s in summary.values() if (v := s.get("cpu0_other")) is not None]
    if other and max(other) > 0.1:
        lines.append(
            f"- the targets' CPU was shared: other processes kept it up to {pct(max(other))} busy "
            "(median of a run) beyond the target; CPU per request and latencies are perturbed, "
            "ratios within a round less so: rerun on a quiet machine to quote absolute figures"
        )
    for (w, t, c), s in sorted(summary.items(), key=str):
        if s["errors"]:
            lines.append(f"- ERRORS {w} {t} c={c}: {s['errors']}")
    if meta.get("chart"):
        lines += ["", f"![requests/s and TTFE per target]({meta['chart']})"]
    return "\n".join(lines) + "\n"


def chart(meta: dict, summary: dict, path: Path) -> str | None:
    """requests/s (peak RSS for slow readers) and TTFE p50 per target, one row per workload.
    Returns None when written, else why not."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'gwcore[bench]'): no chart.png"
    workloads, targets, cs = meta["workloads"], meta["targets"], meta["concurrency"]
    fig, axes = plt.subplots(len(workloads), 2, figsize=(11, 2.8 * len(workloads)), squeeze=False)
    width = 0.8 / max(1, len(targets))
    for row, w in enumerate(workloads):
        left = ("rss_peak_mb", "peak RSS (MB)") if w == "slow" else ("rps", "requests/s")
        for col, (metric, label, scale) in enumerate(
            [(*left, 1.0), ("ttfe_p50_us", "TTFE p50 (ms)", 1e-3)]
        ):
            ax = axes[row][col]
            for i, t in enumerate(targets):
                values = []
                for c in cs:
                    v = summary.get((w, t, c), {}).get(metric)
                    values.append(0.0 if v is None or math.isnan(v) else v * scale)
                ax.bar([j + i * width for j in range(len(cs))], values, width, label=t)
            ax.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(cs))])
            ax.set_xticklabels([f"c={c}" for c in cs])
            ax.set_title(f"{meta['titles'][w]}: {label}", fontsize=9)
            ax.tick_params(labelsize=8)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
