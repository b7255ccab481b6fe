"""Translation benchmark: CPU per streamed request, the translation path against the relay path.

Workload: ``POST /v1/chat/completions`` with ``"stream": true`` to ONE ``gwcore serve --workers 1``
process with two providers on the same mock upstream:

- ``relay``: an OpenAI-compatible provider; the mock answers 33 SSE events (role, 30 content
  deltas, finish, [DONE]) and gwcore relays them byte for byte;
- ``translate``: an Anthropic provider; the mock answers a Messages stream with 33 ``text_delta``
  events (plus message_start, content_block_start, ping, content_block_stop, message_delta,
  message_stop) and gwcore translates it into 36 OpenAI events (role, 33 deltas, finish, [DONE]).

Rounds interleave the two paths (relay translate relay translate ...) at every concurrency; the
report quotes medians over rounds of gwcore's CPU per completed stream (utime+stime from
``/proc/<pid>/stat`` over the measured window) and the ratio translate / relay (target: <= 3).
Every response is checked (status 200, complete chunked framing, the expected number of ``data:``
events ending with ``data: [DONE]``). gwcore runs on CPU 0, the mock and the load generator on
CPU 1 (``taskset``), as in ``bench_relay.py``; the load generator and the process helpers are
``gwcore.benchmark``'s. A last line prices the translator alone (parser + translator, in this
process, no I/O).

    python bench/bench_translate.py [--duration 3] [--rounds 3] [--concurrency 1,32]

Never a timed test: it prints numbers, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from gwcore.benchmark import loadgen
from gwcore.benchmark.loadgen import Exchange, Expect, chat_body, http_request
from gwcore.benchmark.report import fmt, med, pct, ratio
from gwcore.benchmark.services import (
    ANTHROPIC_MODEL,
    MODEL,
    Pinning,
    Service,
    start_gwcore,
    start_mock,
)

DELTAS = 33
RELAY_MODEL = MODEL
TRANSLATE_MODEL = ANTHROPIC_MODEL


def request(model: str) -> bytes:
    return http_request("/v1/chat/completions", chat_body(model, True))


# path -> what is sent and the data: events the client must get
PATHS = {
    "relay": Exchange(request(RELAY_MODEL), Expect(33)),
    "translate": Exchange(request(TRANSLATE_MODEL), Expect(DELTAS + 3)),
}
PIN = Pinning(False)  # set by main()


async def bench(args, mock: Service, gw: Service) -> dict:
    for name in PATHS:
        ok, what = await loadgen.probe(gw.port, PATHS[name])
        print(f"probe {name}: {'OK' if ok else 'FAILED'}: {what}", file=sys.stderr, flush=True)
        if not ok:
            raise RuntimeError(f"the {name} path does not return a correct stream: {what}")
    rounds: dict = {}
    pids = {"mock": mock.cpu_pid, "relay": gw.cpu_pid}
    for r in range(args.rounds):
        for c in args.concurrency:
            for name, exchange in PATHS.items():
                res = await loadgen.run_load(
                    gw.port, c, args.warmup, args.duration, exchange, pids, PIN
                )
                rounds.setdefault((name, c), []).append(res)
                print(
                    f"round {r + 1} {name:9} c={c:<3} {res['rps']:8.0f} req/s  gwcore CPU "
                    f"{fmt(res['relay_cpu_us'], 1):>7} µs/req  TTFE p50 "
                    f"{fmt(res['ttfe_p50_us'])} µs  mock {res['mock_cpu_us']:5.0f} client "
                    f"{res['client_cpu_us']:5.0f} µs/req  CPU0 {pct(res['cpu0_busy'])} "
                    f"CPU1 {pct(res['cpu1_busy'])}  errors {sum(res['errors'].values())}",
                    file=sys.stderr,
                    flush=True,
                )
                await asyncio.sleep(0.2)
    return rounds


def translator_alone(repeat: int = 2000) -> tuple[float, str]:
    """µs per stream of the SSE parser + Anthropic translator on the mock's 33-delta stream."""
    from gwcore.sse import IMPLEMENTATION, EventParser
    from gwcore.testing.mock_upstream import anthropic_stream, split_sse_events
    from gwcore.translate.anthropic import AnthropicStreamTranslator

    pieces = [
        b"%x\r\n%b\r\n" % (len(p), p)
        for p in split_sse_events(anthropic_stream(TRANSLATE_MODEL, DELTAS))
    ]
    pieces[-1] += b"0\r\n\r\n"
    t0 = time.perf_counter()
    for _ in range(repeat):
        parser = EventParser(chunked=True)
        t = AnthropicStreamTranslator(
            TRANSLATE_MODEL, created=1, include_usage=False, fallback_id="chatcmpl-b"
        )
        for piece in pieces:
            t.feed(parser.feed(piece))
        assert t.done and parser.complete
    return (time.perf_counter() - t0) / repeat * 1e6, IMPLEMENTATION


def report(args, rounds: dict, alone: tuple[float, str]) -> str:
    lines = [
        "# gwcore: translation path (Anthropic -> OpenAI chunks) vs relay path",
        "",
        "One `gwcore serve --workers 1`; relay: mock OpenAI, 33 events; translate: mock "
        f"Anthropic, {DELTAS} text deltas -> {DELTAS + 3} OpenAI events. {args.rounds} "
        f"interleaved rounds of {args.duration:g} s (+{args.warmup:g} s warm-up) per path and "
        "concurrency; medians. "
        + (
            f"gwcore on CPU {PIN.target_cpu}, mock + load on CPU {PIN.load_cpu}."
            if PIN.enabled
            else "NOT pinned (taskset or a second CPU missing)."
        ),
        "",
        "| c | relay µs/req | translate µs/req | ratio (target <= 3) | relay req/s | "
        "translate req/s | TTFE p50 relay / translate µs | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in args.concurrency:
        rel = rounds[("relay", c)]
        tra = rounds[("translate", c)]
        cpu_r = med([x["relay_cpu_us"] for x in rel])
        cpu_t = med([x["relay_cpu_us"] for x in tra])
        errors = sum(sum(x["errors"].values()) for x in rel + tra)
        lines.append(
            f"| {c} | {fmt(cpu_r, 1)} | {fmt(cpu_t, 1)} | "
            f"{fmt(ratio(cpu_t, cpu_r), 2)}x | {fmt(med([x['rps'] for x in rel]))} | "
            f"{fmt(med([x['rps'] for x in tra]))} | "
            f"{fmt(med([x['ttfe_p50_us'] for x in rel]))} / "
            f"{fmt(med([x['ttfe_p50_us'] for x in tra]))} | {errors} |"
        )
    lines += [
        "",
        f"Translator alone (SSE parser [{alone[1]}] + AnthropicStreamTranslator, one stream of "
        f"{DELTAS} deltas, no I/O): {alone[0]:.1f} µs/stream.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per round")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", default="1,32", help="comma-separated stream counts")
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]

    global PIN
    PIN = Pinning.detect()
    PIN.pin_self()  # the load generator is this process

    services: list[Service] = []
    with tempfile.TemporaryDirectory(prefix="gwcore-bench-translate-") as tmp:
        try:
            mock = start_mock(Path(tmp), 33, PIN, text_deltas=DELTAS)
            services.append(mock)
            gw = start_gwcore(Path(tmp), mock.port, PIN)
            services.append(gw)
            rounds = uvloop.run(bench(args, mock, gw))
        finally:
            for svc in services:
                svc.stop()
    print(report(args, rounds, translator_alone()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
