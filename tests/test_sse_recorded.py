"""The SSE scanner on recorded real upstream streams (``recorded_dir``), over both implementations.

The expected usage is taken from the recording itself with ``json``, never hard-coded: the spec is
"the last (and the first) object value of a ``usage`` / ``usageMetadata`` key at nesting depth <= 2,
in document order", which covers OpenAI chat, Anthropic message_start/message_delta, Responses
response.completed and Gemini.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from gwcore import _sse_py


def streams(recorded_dir: Path) -> list[Path]:
    found = sorted(recorded_dir.glob("*/*_stream.txt"))
    if not found:
        pytest.skip(f"no recorded *_stream.txt under {recorded_dir}")
    return found


def usage_objects(obj: object) -> list[dict]:
    found = []

    def walk(v: object, depth: int) -> None:
        if isinstance(v, dict):
            depth += 1
            for key, x in v.items():
                if key in ("usage", "usageMetadata") and isinstance(x, dict) and depth <= 2:
                    found.append(x)
                else:
                    walk(x, depth)
        elif isinstance(v, list):
            for x in v:
                walk(x, depth + 1)

    walk(obj, 0)
    return found


def expected_usage(events: list) -> list[dict]:
    found = []
    for _, data, _ in events:
        try:
            found += usage_objects(json.loads(data))
        except ValueError:
            continue
    return found


def frame(payload: bytes, rng: random.Random) -> bytes:
    out, pos = [], 0
    while pos < len(payload):
        size = rng.randint(1, 300)
        part = payload[pos : pos + size]
        pos += size
        out.append(b"%x\r\n%s\r\n" % (len(part), part))
    return b"".join(out) + b"0\r\n\r\n"


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data), rng.randint(0, 40))))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def observe(sse, parts: list[bytes], **kw):
    o = sse.StreamObserver(**kw)
    out = b"".join(o.feed(p) for p in parts) + o.close()
    return o, out


def test_recorded_streams(sse, recorded_dir):
    rng = random.Random(20240601)
    for path in streams(recorded_dir):
        raw = path.read_bytes()
        p = sse.EventParser()
        events = p.feed(raw) + p.close()
        assert events, path
        found = expected_usage(events)
        done = any(data == b"[DONE]" for _, data, _ in events)
        for trial in range(12):
            body = frame(raw, rng)
            chunked = trial % 2 == 1
            data = body if chunked else raw
            o, out = observe(sse, pieces(data, rng), chunked=chunked)
            assert out == data
            assert o.events == len(events), path
            assert o.done is done, path
            assert o.error is None, path
            assert o.complete
            if found:
                assert json.loads(o.usage) == found[-1], path
                assert json.loads(o.first_usage) == found[0], path
            else:
                assert o.usage is None and o.first_usage is None, path
            q = sse.EventParser(chunked=True)
            assert [e for part in pieces(body, rng) for e in q.feed(part)] + q.close() == events
            assert q.complete


def load(recorded_dir: Path, name: str) -> tuple[bytes, list]:
    path = recorded_dir / name
    if not path.is_file():
        pytest.skip(f"{name} not recorded")
    raw = path.read_bytes()
    p = _sse_py.EventParser()  # the reference reading; each test checks ``sse`` against it
    return raw, p.feed(raw) + p.close()


def test_anthropic_input_tokens_come_from_message_start(sse, recorded_dir):
    raw, events = load(recorded_dir, "anthropic/messages_stream.txt")
    objs = {e: json.loads(d) for e, d, _ in events if e in (b"message_start", b"message_delta")}
    o, _ = observe(sse, [raw], chunked=False)
    assert json.loads(o.first_usage) == objs[b"message_start"]["message"]["usage"]
    assert json.loads(o.usage) == objs[b"message_delta"]["usage"]
    assert not o.done  # Anthropic ends with message_stop, not [DONE]


def test_responses_usage_comes_from_response_completed(sse, recorded_dir):
    raw, events = load(recorded_dir, "openai/responses_stream.txt")
    completed = [json.loads(d) for e, d, _ in events if e == b"response.completed"]
    o, _ = observe(sse, [raw], chunked=False)
    assert json.loads(o.usage) == completed[-1]["response"]["usage"]


def test_injected_usage_chunk_is_elided_from_a_recorded_stream(sse, recorded_dir):
    raw, events = load(recorded_dir, "openai/chat_completion_stream.txt")
    last = json.loads(events[-2][1])
    usage = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    chunk = {k: last[k] for k in ("id", "object", "created", "model")}
    chunk.update(choices=[], usage=usage)
    injected = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    at = raw.index(b"data: [DONE]")
    stream = raw[:at] + injected + raw[at:]
    rng = random.Random(7)
    for trial in range(20):
        chunked = trial % 2 == 0
        data = frame(stream, rng) if chunked else stream
        o, out = observe(sse, pieces(data, rng), chunked=chunked, elide_injected_usage=True)
        if chunked:
            p = sse.EventParser(chunked=True)
            assert p.feed(out) + p.close() == events
            assert p.complete
        else:
            assert out == raw
        assert json.loads(o.usage) == usage
        assert (o.elided, o.done, o.events) == (1, True, len(events) + 1)
