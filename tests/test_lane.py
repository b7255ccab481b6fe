"""The relay lane: reads the compiled pump sends on from the event loop's read callback, unseen by
the observer. ``lane_scan`` decides which reads may go that way; the properties here hold it to
the observer (such a read changes nothing but the event count, and comes out unchanged) on both
implementations, and the end-to-end tests run real streams through a gateway on uvloop with the
lane engaged (flow control, disconnects, upstream drops), checking the bytes and the records."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
from gateway_harness import (
    chat_body,
    disconnect_after,
    front_buffers,
    gateway_with_mock,
    raw_post,
    read_stream_to_end,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gwcore.relay
from gwcore._twins import implementation
from gwcore.sse import lane_available
from gwcore.testing import Scenario, run
from gwcore.upstream import UpstreamConnection

EXAMPLES = int(os.environ.get("GWCORE_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

PLAIN = [
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}',
    b'{"id":"c","choices":[{"delta":{"content":"the \\"usage\\":{ key"}}],"usage" : null}',
    b'{"choices":[{"delta":{"content":"usage"}}],"usageX":{"a":1}}',
    b'{"choices":[{"delta":{"content":"x"}}],"usage":[1]}',
    b"not json at all",
]
NOTEWORTHY = [
    b'{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}',
    b'{"type":"message_delta","usage":{"output_tokens":5}}',
    b'{"candidates":[],"usageMetadata":{"promptTokenCount":4}}',
    b'{"choices":[{"delta":{}}],"usage" :  {"total_tokens":1}}',
    b'{"error":{"message":"overloaded"}}',
    b'{ "error" : 1}',
    b"[DONE]",
]


def event_block(value: bytes, space: bool, term: bytes) -> bytes:
    return b"data:" + (b" " if space else b"") + value + term + term


blocks = st.one_of(
    st.builds(
        event_block,
        st.sampled_from(PLAIN + NOTEWORTHY),
        st.booleans(),
        st.sampled_from([b"\n", b"\n", b"\r\n"]),
    ),
    st.sampled_from([b": ping\n\n", b"event: error\ndata: {}\n\n", b"data: a\ndata: b\n\n"]),
    st.binary(min_size=1, max_size=8),
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


pieces = st.lists(st.lists(blocks, min_size=1, max_size=3), min_size=1, max_size=4).map(
    lambda chunks: b"".join(chunk(b"".join(c)) for c in chunks)
)
WARM = chunk(event_block(PLAIN[0], True, b"\n"))  # the stream's first event: past any BOM


@pytest.mark.parametrize("elide", [False, True])
@SETTINGS
@given(piece=pieces, cut=st.integers(0, 400))
def test_a_read_the_lane_takes_changes_nothing_but_the_event_count(sse, elide, piece, cut):
    piece = piece[: max(1, len(piece) - cut)] if cut < 40 else piece  # sometimes cut short
    k = sse.lane_scan(piece)
    if k < 0:
        return  # the lane hands it to data_received: any shape is fine there
    obs = sse.StreamObserver(chunked=True, elide_injected_usage=elide)
    assert obs.feed(WARM) == WARM
    before = (obs.usage, obs.first_usage, obs.done, obs.error, obs.elided, obs.complete)
    assert obs.at_boundary
    out = obs.feed(piece)
    assert out == piece
    assert obs.events == 1 + k
    assert (obs.usage, obs.first_usage, obs.done, obs.error, obs.elided, obs.complete) == before
    assert obs.at_boundary


@SETTINGS
@given(data=st.one_of(pieces, st.binary(max_size=200)), limit=st.integers(0, 300))
def test_compiled_lane_scan_agrees_with_twin(sse_pair, data, limit):
    compiled, twin = sse_pair
    assert compiled.lane_scan(data, limit) == twin.lane_scan(data, limit)
    assert compiled.lane_scan(data) == twin.lane_scan(data)


def test_lane_scan_takes_plain_chunks_and_nothing_else(sse):
    plain = [event_block(v, True, b"\n") for v in PLAIN]
    assert sse.lane_scan(b"".join(chunk(b) for b in plain)) == len(plain)
    assert sse.lane_scan(chunk(b"".join(plain))) == len(plain)  # several events in one chunk
    for value in NOTEWORTHY:
        assert sse.lane_scan(chunk(event_block(value, True, b"\n"))) == -1, value
        assert sse.lane_scan(chunk(plain[0]) + chunk(event_block(value, False, b"\n"))) == -1
    whole = chunk(plain[0])
    for n in range(1, len(whole)):  # a piece that ends or starts inside a chunk
        assert sse.lane_scan(whole[:n]) == -1
        assert sse.lane_scan(whole[n:]) == -1
    assert sse.lane_scan(b"0\r\n\r\n") == -1  # the last chunk: the observer notes the end
    assert sse.lane_scan(chunk(b"data: x\r\n\r\n")) == -1  # CRLF lines: the observer's to walk
    assert sse.lane_scan(chunk(plain[1]), max_event_size=len(plain[1]) - 1) == -1
    assert sse.lane_scan(b"") == -1


# ---- end to end, on uvloop -----------------------------------------------------------------------

needs_lane = pytest.mark.skipif(
    not lane_available() or implementation(gwcore.relay) == "python",
    reason="the lane needs the compiled build and uvloop",
)


@pytest.fixture(params=[1, -1], ids=["swapped", "paused"])
def pumps(request):
    """The pumps the relay makes, with the lane taking the upstream's reads either way: in place
    of uvloop's read callbacks, or through uvloop's pause and resume (the way the first lane of a
    process goes, while it checks where the callbacks are)."""
    from gwcore import _sse

    was = _sse._lane_swap()
    if request.param == 1 and was == 0:  # the first lane of this process checks the fields
        run(_one_stream(), use_uvloop=True)
        was = _sse._lane_swap()
    if request.param == 1 and was != 1:
        pytest.skip("uvloop's read callbacks are not where libuv's public layout puts them")
    _sse._lane_swap(request.param)
    request.addfinalizer(lambda: _sse._lane_swap(was))
    with recorded_pumps() as made:
        yield made


@contextlib.contextmanager
def recorded_pumps() -> Iterator[list]:
    """Every pump the relay makes meanwhile, kept (and so kept alive) in the list."""
    made: list = []
    real = gwcore.relay.RelayPump

    def pump(*args):
        made.append(real(*args))
        return made[-1]

    gwcore.relay.RelayPump = pump
    try:
        yield made
    finally:
        gwcore.relay.RelayPump = real


@needs_lane
@pytest.mark.parametrize("ask", [True, None])
def test_the_lane_carries_a_stream_byte_for_byte(pumps, ask):
    async def main():
        async with gateway_with_mock(events=60, pace_ms=2) as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            for _ in range(3):  # a fresh upstream connection, then a pooled one, twice
                resp = await raw_post(h.host, h.port, chat_body(True, include_usage=ask))
                assert resp.status == 200 and resp.complete
                if ask:
                    assert resp.payload() == direct.payload()
                else:  # the injected usage chunk elided, everything else as the mock sent it
                    assert resp.payload() == direct.payload().replace(_usage_event(direct), b"")
            recs = h.sink.records
            assert [(r.status, r.completion_tokens, r.aborted) for r in recs] == [
                (200, 57, False)
            ] * 3
            assert all(s["open"] == 1 for s in h.gateway.pool.stats().values())  # reused

    run(main(), use_uvloop=True)
    assert len(pumps) == 3
    for p in pumps:
        assert not p.laned  # handed back to the transport at the end
        assert p.lane_reads >= 40  # paced: most events a read of their own, sent on by the lane
        assert p.pieces >= p.lane_reads


async def _one_stream() -> None:
    async with gateway_with_mock(events=3) as h:
        resp = await raw_post(h.host, h.port, chat_body(True))
        assert resp.status == 200 and resp.complete


def _usage_event(resp) -> bytes:
    payload = resp.payload()
    start = payload.rindex(b"data: ", 0, payload.rindex(b"data: [DONE]"))
    return payload[start : payload.index(b"\n\n", start) + 2]


@needs_lane
def test_the_lane_pauses_the_upstream_for_a_client_that_stops_reading(pumps):
    # One chunk (one write) per event, paced so that each is a read of its own at first, as the
    # lane takes them (unpaced, the reads of a bulk transfer rarely end between two chunks).
    event = b"data: " + b'{"choices":[{"delta":{"content":"' + b"x" * 8000 + b'"}}]}' + b"\n\n"
    body = event * 3000 + b"data: [DONE]\n\n"  # ~24 MB

    async def main():
        async with gateway_with_mock() as h:
            cuts = list(range(len(event), len(body), len(event)))
            h.mock.scenarios.append(Scenario.replay(body, split_at=cuts, pace_ms=0.3))
            reader, writer = await asyncio.open_connection(h.host, h.port)
            data = orjson.dumps(chat_body(True, include_usage=True))
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
            )
            writer.transport.pause_reading()
            await asyncio.sleep(1.5)
            # The upstream connection is paused, through its lane (the rest of the answer waits
            # in the upstream's socket buffers and the mock)...
            gc.collect()  # (an earlier test's dropped stream may be garbage not yet collected)
            ups = [o for o in gc.get_objects() if isinstance(o, UpstreamConnection)]
            assert [(c._paused, c._laned) for c in ups if c._diverted is not None] == [(1, 1)]
            assert not h.sink.records  # (still streaming)
            from gwcore.server import _http

            # ...and what the gateway holds for the client stays under its high-water mark
            # plus one read.
            buffered = front_buffers(_http)
            assert buffered and max(buffered) <= 256 * 1024 + 64 * 1024
            writer.transport.resume_reading()
            status, payload = await read_stream_to_end(reader)
            assert b" 200 " in status
            assert payload == body
            writer.close()
            (rec,) = h.sink.records
            assert rec.status == 200 and not rec.aborted

    run(main(), use_uvloop=True)
    (p,) = pumps
    assert p.lane_reads > 100 and not p.laned


@needs_lane
def test_a_client_leaving_mid_stream_closes_the_upstream_within_50ms(pumps):
    async def main():
        async with gateway_with_mock(events=400, pace_ms=3) as h:
            t0 = await disconnect_after(h, chat_body(True), read_bytes=4000)
            closed_at = await h.mock.wait_closed(1, timeout=2.0)
            assert closed_at - t0 < 0.05
            await asyncio.sleep(0.05)
            assert all(s["idle"] == 0 and s["open"] == 0 for s in h.gateway.pool.stats().values())
            (rec,) = h.sink.records
            assert rec.aborted

    run(main(), use_uvloop=True)
    (p,) = pumps
    assert p.lane_reads > 0 and not p.laned


@needs_lane
def test_an_upstream_drop_under_the_lane_ends_with_an_error_event(pumps):
    async def main():
        async with gateway_with_mock(events=60, pace_ms=2) as h:
            direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
            full = direct.body
            pos = 0
            for _ in range(30):  # cut after 30 chunks: an event and chunk boundary
                eol = full.index(b"\r\n", pos)
                pos = eol + 2 + int(full[pos:eol], 16) + 2
            h.mock.scenarios.append(Scenario(drop_at=pos, pace_ms=2))
            resp = await raw_post(h.host, h.port, chat_body(True))
            assert resp.status == 200 and resp.complete
            events = [e for e in resp.payload().split(b"\n\n") if e]
            assert len(events) == 31
            last = orjson.loads(events[-1].removeprefix(b"data: "))
            assert last["error"]["code"] == "upstream_closed"
            (rec,) = h.sink.records
            assert rec.aborted and rec.error

    run(main(), use_uvloop=True)
    (p,) = pumps
    assert p.lane_reads > 10 and not p.laned


def test_gwcore_lane_off_switches_it_off():
    code = "from gwcore.sse import lane_available; print(lane_available())"
    env = {**os.environ, "GWCORE_LANE": "off"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False"


def test_the_twin_never_starts_a_lane():
    from gwcore import _sse_py

    pump = _sse_py.RelayPump(_sse_py.StreamObserver(), lambda b: None, None)
    assert pump.lane_start(object()) is False and not pump.laned and pump.lane_reads == 0
    assert pump.lane_pause() is False and pump.lane_resume() is False
    assert _sse_py.lane_available() is False


@needs_lane
def test_lanes_run_on_one_event_loop_thread_only(pumps):
    """The lane's read buffer and table belong to the first thread whose loop asked: a gateway on
    a loop in another thread relays the same bytes without one."""
    import threading

    async def paced(out: list) -> None:
        async with gateway_with_mock(events=40, pace_ms=2) as h:
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.status == 200 and resp.complete
            out.append(resp.payload())

    here: list = []
    run(paced(here), use_uvloop=True)  # this thread's loop asks first (if none did before)
    assert pumps[-1].lane_reads > 20
    there: list = []
    failures = []

    def other():
        try:
            run(paced(there), use_uvloop=True)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert not failures and not t.is_alive()
    assert there == here
    assert len(pumps) == 2 and pumps[-1].lane_reads == 0 and pumps[-1].pieces > 20


_STRESS = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from gateway_harness import chat_body, gateway_with_mock, raw_post
from gwcore.testing import run


async def client(h, n, want):
    for _ in range(n):
        resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
        assert resp.status == 200 and resp.complete
        assert resp.payload() == want


async def main():
    async with gateway_with_mock(events=30, pace_ms=1) as h:
        direct = await raw_post(h.mock.host, h.mock.port, chat_body(True, include_usage=True))
        await asyncio.gather(*(client(h, 12, direct.payload()) for _ in range(8)))
        assert len(h.sink.records) == 96
        assert all(r.status == 200 and not r.aborted for r in h.sink.records)


run(main(), use_uvloop=True)
from gwcore.sse import lane_available
print("lanes", lane_available())
"""


@needs_lane
def test_many_concurrent_streams_through_lanes_nothing_held():
    """No test reference keeps the pumps alive here, and Python's debug allocator overwrites what
    is freed: a pump that finishes inside the lane's own callback is freed there, and the callback
    must hold it until it returns (reading a freed pump crashed the process)."""
    from pathlib import Path

    code = _STRESS.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "PYTHONMALLOC": "debug", "PYTHONFAULTHANDLER": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "lanes True" in out.stdout


MIXED = [
    event_block(PLAIN[1], True, b"\n"),
    b": ping\n\n",
    event_block(PLAIN[0], False, b"\n"),
    b"event: note\ndata: {}\n\n",
    event_block(PLAIN[2], True, b"\n"),
    b"data: a\ndata: b\n\n",
    event_block(PLAIN[3], True, b"\r\n"),
    event_block(PLAIN[4], True, b"\n"),
    b"id: 7\ndata: x\n\n",
]
MIXED_PLAIN = {0, 2, 4, 7}  # the indexes of the plain ones (6 ends its lines with CR LF)


@needs_lane
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(order=st.lists(st.integers(0, len(MIXED) - 1), min_size=20, max_size=60))
def test_the_lane_hands_any_other_event_back_and_takes_the_next_plain_one(order):
    """Plain events and others (comments, typed, multi-line, CRLF, with an id) in any order, one
    write each, paced: every byte reaches the client as sent, the others go through
    data_received, and the lane takes the plain ones around them."""
    usage = (
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,'
        b'"total_tokens":7}}\n\n'
    )
    body = b"".join(MIXED[i] for i in order) + usage + b"data: [DONE]\n\n"
    cuts, pos = [], 0
    for i in order:
        pos += len(MIXED[i])
        cuts.append(pos)

    async def main():
        async with gateway_with_mock() as h:
            h.mock.scenarios.append(Scenario.replay(body, split_at=cuts, pace_ms=1))
            resp = await raw_post(h.host, h.port, chat_body(True, include_usage=True))
            assert resp.status == 200 and resp.complete
            assert resp.payload() == body
            (rec,) = h.sink.records
            assert (rec.prompt_tokens, rec.completion_tokens) == (3, 4)

    with recorded_pumps() as made:
        run(main(), use_uvloop=True)
    (p,) = made
    plain = sum(1 for i in order if i in MIXED_PLAIN)
    assert p.lane_reads <= plain  # never one of the others
    if plain > 6:  # (the first two reads go through data_received: the head, the socket check)
        assert p.lane_reads > 0
