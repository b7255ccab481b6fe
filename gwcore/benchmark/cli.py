"""``gwcore bench``: the command line of the benchmark harness.

Owns the flags and their defaults; ``gwcore.benchmark.runner`` does the work. Imports nothing heavy
at module level: ``gwcore --help`` imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WORKLOAD_NAMES = ("stream", "nonstream", "translated", "slow", "storm")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be >= 1")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _workloads(text: str) -> list[str]:
    names = list(WORKLOAD_NAMES) if text.strip() == "all" else _names(text)
    unknown = [n for n in names if n not in WORKLOAD_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOAD_NAMES)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Side-by-side benchmark on loopback: the mock upstream directly (the ceiling), gwcore, "
        "nginx and LiteLLM proxy when installed, and any gateway given as a URL. Writes "
        "DIR/report.md, DIR/results.json and DIR/chart.png."
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each run"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument(
        "--concurrency", type=_ints, default=[1, 32, 256], help="comma-separated client counts"
    )
    parser.add_argument(
        "--workloads",
        type=_workloads,
        default=list(WORKLOAD_NAMES),
        help="comma-separated, or 'all': stream (chat streaming relay), nonstream, translated "
        "(Anthropic upstream), slow (readers at one event per second), storm (clients hanging "
        "up mid-stream)",
    )
    parser.add_argument(
        "--targets",
        type=_names,
        default=["direct", "gwcore", "nginx", "litellm"],
        help="comma-separated: direct, gwcore, nginx, litellm, floor, or [NAME=]http://127.0.0.1:"
        "PORT[/prefix] for a gateway you run (route the bench models to the mocks: --mock-port)",
    )
    parser.add_argument("--out", type=Path, default=Path("gwcore-bench"), help="output folder")
    parser.add_argument(
        "--workers", type=int, default=1, help="gwcore (and LiteLLM) worker processes"
    )
    parser.add_argument("--events", type=int, default=33, help="SSE events per chat stream")
    parser.add_argument(
        "--text-deltas", type=int, default=33, help="text deltas per Anthropic stream"
    )
    parser.add_argument(
        "--slow-events", type=int, default=4000, help="events per slow-reader stream"
    )
    parser.add_argument(
        "--storm-pace-ms", type=float, default=50.0, help="ms between events (disconnect storm)"
    )
    parser.add_argument(
        "--storm-hangup-after", type=int, default=2, help="events a storm client reads"
    )
    parser.add_argument(
        "--mock-port",
        type=int,
        help="fixed port of the main mock (slow readers: +1, storm: +2), for URL targets: route "
        "gpt-bench and claude-bench (Anthropic) to http://127.0.0.1:PORT, gpt-bench-long to "
        "PORT+1, gpt-bench-paced to PORT+2",
    )
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="skip wrk")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--no-chart", dest="chart", action="store_false", help="skip chart.png")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    from gwcore.benchmark.runner import Options, command_line
    from gwcore.benchmark.runner import run as run_bench

    opts = Options(
        duration=args.duration,
        warmup=args.warmup,
        rounds=args.rounds,
        concurrency=args.concurrency,
        workloads=args.workloads,
        targets=args.targets,
        out=args.out,
        workers=args.workers,
        events=args.events,
        text_deltas=args.text_deltas,
        slow_events=args.slow_events,
        storm_pace_ms=args.storm_pace_ms,
        storm_hangup_after=args.storm_hangup_after,
        mock_port=args.mock_port,
        wrk=args.wrk,
        pin=args.pin,
        chart=args.chart,
        quiet=args.quiet,
    )
    opts.command = command_line(opts)
    try:
        result = run_bench(opts)
    except (RuntimeError, ValueError) as exc:
        print(f"gwcore bench: {exc}", file=sys.stderr)
        return 1
    print(result["report"])
    print(f"wrote {opts.out / 'report.md'}, {opts.out / 'results.json'}", file=sys.stderr)
    return 0
