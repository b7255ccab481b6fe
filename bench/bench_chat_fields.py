"""What the gateway pays to read a chat request body: ``chat_request_fields`` (compiled and twin)
against ``orjson.loads``, on OpenAI-SDK-shaped bodies of three sizes, in one run.

    python bench/bench_chat_fields.py [--repeat 5] [--number 2000]

Prints the best of ``--repeat`` timings of ``--number`` calls each, in µs per call, and the
ratio to orjson. Both compiled and twin must give the SDK body's answer first.
"""

from __future__ import annotations

import argparse
import json
import timeit

import orjson

from gwcore import _sse_py

try:
    from gwcore import _sse
except ImportError:  # no compiled build: the twin alone
    _sse = None


def body(repeats: int) -> bytes:
    text = "The quick brown fox jumps over the lazy dog. " * repeats
    turns = [{"role": "user", "content": text}, {"role": "assistant", "content": text}] * 2
    return json.dumps(
        {"model": "gpt-4o-mini", "messages": turns, "stream": True, "temperature": 0.7}
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    readers = {"orjson.loads": orjson.loads, "twin": _sse_py.chat_request_fields}
    if _sse is not None:
        readers["compiled"] = _sse.chat_request_fields
    print(
        "| body bytes | " + " | ".join(f"{name} µs" for name in readers) + " | compiled ÷ orjson |"
    )
    print("|--:|" + "--:|" * len(readers) + "--:|")
    for repeats in (1, 20, 200):
        raw = body(repeats)
        for name in ("twin", "compiled"):
            if name in readers:
                assert readers[name](raw) == ("gpt-4o-mini", True, False), name
        us = {
            name: min(
                timeit.repeat(lambda f=f, raw=raw: f(raw), number=args.number, repeat=args.repeat)
            )
            / args.number
            * 1e6
            for name, f in readers.items()
        }
        ratio = f"{us['compiled'] / us['orjson.loads']:.2f}" if "compiled" in us else "n/a"
        cells = " | ".join(f"{v:.2f}" for v in us.values())
        print(f"| {len(raw):,} | {cells} | {ratio} |")


if __name__ == "__main__":
    main()
