"""Throughput of the SSE scanner: the compiled ``gwcore._sse`` against its pure-Python twin.

    python bench/bench_sse.py [--reps 7] [--min-time 0.15]

Prints, for each implementation, observe-mode throughput (GB/s of upstream body bytes, relay path)
and parse-mode throughput (events/s, translate path) on two workloads, each a chunked HTTP/1.1
body fed one event per piece, the way upstream writes arrive: (a) the recorded OpenAI stream
repeated (skipped when the recording is absent), (b) a synthetic short chat answer (role chunk, 30
content deltas, finish chunk, usage chunk, [DONE]). Each figure is the median of ``--reps`` runs;
the last column is the ratio compiled / twin measured in the same process. This is a benchmark,
never a timed test: it asserts only that both implementations saw the same stream.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from gwcore import _sse_py

try:
    from gwcore import _sse
except ImportError:
    _sse = None

RECORDED = Path(
    os.environ.get("GWCORE_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "recorded"
)
REPEAT_RECORDED = 16  # copies of the recorded events in one body: a longer answer


def chunked_pieces(events: list[bytes]) -> list[bytes]:
    """One chunk per event, then the last-chunk, each its own piece as upstream writes them."""
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


def recorded_events() -> list[bytes] | None:
    path = RECORDED / "openai" / "chat_completion_stream.txt"
    if not path.is_file():
        return None
    blocks = [b for b in path.read_bytes().split(b"\n\n") if b.strip()]
    return [b + b"\n\n" for b in blocks] * REPEAT_RECORDED


def synthetic_events() -> list[bytes]:
    base = {
        "id": "chatcmpl-D0q8CZXN1uEzngZGkU7FuV92lnXWq",
        "object": "chat.completion.chunk",
        "created": 1769092764,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_29330a9688",
    }

    def chunk(delta: dict, finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], "usage": None}

    text = (
        "Sure, here is a short answer that streams thirty small deltas, about as many as a chat "
        "model sends for two sentences of text, each delta in an event of its own."
    )
    words = text.split()[:30]
    assert len(words) == 30
    objs = [chunk({"role": "assistant", "content": "", "refusal": None})]
    objs += [chunk({"content": " " + w}) for w in words]
    objs.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 19, "completion_tokens": 30, "total_tokens": 49}
    objs.append({**base, "choices": [], "usage": usage})
    datas = [json.dumps(o, separators=(",", ":")).encode() for o in objs] + [b"[DONE]"]
    return [b"data: " + d + b"\n\n" for d in datas]


def observe_run(mod, pieces: list[bytes], streams: int, elide: bool) -> float:
    observer = mod.StreamObserver
    t0 = time.perf_counter()
    for _ in range(streams):
        o = observer(elide_injected_usage=elide)
        feed = o.feed
        for p in pieces:
            feed(p)
        o.close()
    return time.perf_counter() - t0


def parse_run(mod, pieces: list[bytes], streams: int, elide: bool) -> float:
    parser = mod.EventParser
    t0 = time.perf_counter()
    for _ in range(streams):
        p = parser(chunked=True)
        feed = p.feed
        for piece in pieces:
            feed(piece)
        p.close()
    return time.perf_counter() - t0


def measure(
    run, mod, pieces: list[bytes], reps: int, min_time: float, elide: bool = False
) -> float:
    """Median seconds per stream over ``reps`` runs, each long enough to time reliably."""
    streams = 1
    while run(mod, pieces, streams, elide) < min_time / 4:
        streams *= 4
    return statistics.median(run(mod, pieces, streams, elide) / streams for _ in range(reps))


def check(mods: list, pieces: list[bytes]) -> tuple[int, int]:
    """Both implementations see the same events; returns (events, body bytes) per stream."""
    seen = set()
    for mod in mods:
        o = mod.StreamObserver()
        for p in pieces:
            assert o.feed(p) is p
        o.close()
        parser = mod.EventParser(chunked=True)
        events = [e for p in pieces for e in parser.feed(p)] + parser.close()
        assert o.complete and parser.complete and o.events == len(events)
        seen.add((o.events, o.usage, o.done))
    assert len(seen) == 1, seen
    return len(events), sum(map(len, pieces))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.15, help="seconds per timed run")
    args = ap.parse_args()
    impls = [("cython", _sse)] if _sse is not None else []
    impls.append(("python", _sse_py))
    print(f"gwcore SSE scanner benchmark, Python {sys.version.split()[0]}, median of {args.reps}")
    if _sse is None:
        print("compiled gwcore._sse not importable: only the pure twin is measured")
    workloads = []
    rec = recorded_events()
    if rec is None:
        print(f"recorded OpenAI stream not found under {RECORDED}: workload (a) skipped")
    else:
        workloads.append((f"(a) recorded OpenAI x{REPEAT_RECORDED}", chunked_pieces(rec)))
    workloads.append(("(b) synthetic chat, 33 chunks+[DONE]", chunked_pieces(synthetic_events())))
    modes = [
        ("observe", observe_run, False, "GB/s"),
        ("observe+elide", observe_run, True, "GB/s"),
        ("parse", parse_run, False, "Mev/s"),
    ]
    header = f"{'workload':32} {'mode':14}" + "".join(f"{n:>14}" for n, _ in impls)
    print(header + (f"{'speedup':>10}" if len(impls) == 2 else ""))
    for wname, pieces in workloads:
        n_events, n_bytes = check([m for _, m in impls], pieces)
        print(f"{wname} — {n_bytes} bytes, {n_events} events, {len(pieces)} pieces per stream")
        for mname, run, elide, unit in modes:
            rates = []
            for _, mod in impls:
                sec = measure(run, mod, pieces, args.reps, args.min_time, elide)
                rates.append(n_bytes / sec / 1e9 if unit == "GB/s" else n_events / sec / 1e6)
            row = f"{'':32} {mname:14}" + "".join(f"{r:>9.3f} {unit:4}" for r in rates)
            if len(rates) == 2:
                row += f"{rates[0] / rates[1]:>9.1f}x"
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
