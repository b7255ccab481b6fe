"""Hand-written edge cases of the SSE scanner, run over both implementations (fixture ``sse``)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import time

import pytest

import gwcore.sse


def frame(
    payload: bytes, size: int = 7, *, upper: bool = False, ext: bytes = b"", trailers: bytes = b""
) -> bytes:
    """HTTP/1.1 chunked encoding of ``payload`` in chunks of ``size`` bytes."""
    out = []
    for i in range(0, len(payload), size):
        part = payload[i : i + size]
        head = b"%X" % len(part) if upper else b"%x" % len(part)
        out.append(head + ext + b"\r\n" + part + b"\r\n")
    return b"".join(out) + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def dechunk(body: bytes) -> bytes:
    """Strict reference de-chunker: fails on anything but one complete, valid chunked body."""
    out = []
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        out.append(body[pos : pos + size])
        assert body[pos + size : pos + size + 2] == b"\r\n", "chunk data not followed by CRLF"
        pos += size + 2
    while True:  # trailer lines, then the empty line
        eol = body.index(b"\r\n", pos)
        line = body[pos:eol]
        pos = eol + 2
        if not line:
            break
    assert pos == len(body), "bytes after the end of the chunked body"
    return b"".join(out)


def parse(sse, data: bytes, step: int = 0, **kw) -> list:
    p = sse.EventParser(**kw)
    events = []
    step = step or max(len(data), 1)
    for i in range(0, len(data), step):
        events += p.feed(data[i : i + step])
    return events + p.close()


def observe(obs, data: bytes, step: int = 0) -> bytes:
    step = step or max(len(data), 1)
    out = [obs.feed(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join(out) + obs.close()


def ev(data: bytes, event: bytes | None = None, id: bytes | None = None) -> tuple:
    return (event, data, id)


CHUNK = (
    b'{"id":"c1","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{"content":"%s"}}],"usage":null}'
)
USAGE_ONLY = (
    b'{"id":"c1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'
)
CHAT = (
    b"data: " + CHUNK % b"Hel" + b"\n\n"
    b": keep-alive\n\n"
    b"data: " + CHUNK % b"lo" + b"\n\n"
    b"data: " + USAGE_ONLY + b"\n\n"
    b"data: [DONE]\n\n"
)
CHAT_WITHOUT_USAGE = CHAT.replace(b"data: " + USAGE_ONLY + b"\n\n", b"")


# ---- import switch -------------------------------------------------------------------------------


def test_compiled_scanner_in_use():
    if os.environ.get("GWCORE_REQUIRE_EXTENSIONS") != "1":
        pytest.skip("only enforced when GWCORE_REQUIRE_EXTENSIONS=1")
    assert gwcore.sse.IMPLEMENTATION == "cython"


def test_switch_exports_one_implementation():
    name = "gwcore._sse" if gwcore.sse.IMPLEMENTATION == "cython" else "gwcore._sse_py"
    mod = importlib.import_module(name)
    assert gwcore.sse.EventParser is mod.EventParser
    assert gwcore.sse.StreamObserver is mod.StreamObserver
    assert gwcore.sse.SSEError is importlib.import_module("gwcore._sse_py").SSEError


# ---- parse mode: WHATWG line and field rules -----------------------------------------------------


def test_line_ends_crlf_lf_and_lone_cr(sse):
    data = b"data: a\r\n\r\ndata: b\n\ndata: c\r\rdata: d\r\n\ndata: e\n\r"
    assert parse(sse, data) == [ev(b"a"), ev(b"b"), ev(b"c"), ev(b"d"), ev(b"e")]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 8])
def test_crlf_split_across_pieces_dispatches_once(sse, step):
    data = b"data: a\r\n\r\ndata: b\r\n\r\n\r\n\r\ndata: c\r\r\n"
    assert parse(sse, data, step) == [ev(b"a"), ev(b"b"), ev(b"c")]


def test_cr_at_piece_end_then_lf_is_one_line_end(sse):
    p = sse.EventParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n\r") == [ev(b"a")]
    assert p.feed(b"\ndata: b\r") == []
    assert p.feed(b"\r") == [ev(b"b")]
    assert p.close() == []


def test_only_cr_and_lf_split_lines(sse):
    odd = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029".encode()
    assert parse(sse, b"data: a" + odd + b"b\n\n") == [ev(b"a" + odd + b"b")]


def test_comments_keepalives_and_ping_events(sse):
    data = b": ping\n\n:\n\nevent: ping\ndata: {}\n\n: x\ndata: y\n\n"
    assert parse(sse, data) == [ev(b"{}", b"ping"), ev(b"y")]


def test_multiline_data_joined_by_lf(sse):
    assert parse(sse, b"data: a\ndata:\ndata: c\n\n") == [ev(b"a\n\nc")]


def test_one_optional_space_after_colon(sse):
    data = b"data:x\n\ndata: x\n\ndata:  x\n\ndata\n\ndata:\n\n"
    assert parse(sse, data) == [ev(b"x"), ev(b"x"), ev(b" x"), ev(b""), ev(b"")]


def test_fields_and_unknown_lines(sse):
    data = b"retry: 10\nfoo: bar\nDATA: no\nevent: e1\ndata: x\n\nevent: e2\n\ndata: y\n\n"
    # event without data is not dispatched, and its type does not leak into the next event
    assert parse(sse, data) == [ev(b"x", b"e1"), ev(b"y")]


def test_event_id_persists_resets_and_ignores_nul(sse):
    data = (
        b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x003\ndata: c\n\nid\ndata: d\n\nid: 4\n\ndata: e\n\n"
    )
    assert parse(sse, data) == [
        ev(b"a", id=b"1"),
        ev(b"b", id=b"1"),
        ev(b"c", id=b"1"),
        ev(b"d"),
        ev(b"e", id=b"4"),
    ]


def test_empty_event_type_means_default(sse):
    assert parse(sse, b"event:\ndata: a\n\n") == [ev(b"a")]


@pytest.mark.parametrize("step", [1, 2, 4, 100])
def test_event_without_final_blank_line_is_dispatched_at_close(sse, step):
    assert parse(sse, b"data: a\n\ndata: b\n", step) == [ev(b"a"), ev(b"b")]
    assert parse(sse, b"data: a\n\nevent: t\ndata: b", step) == [ev(b"a"), ev(b"b", b"t")]
    assert parse(sse, b"data: a\r", step) == [ev(b"a")]
    assert parse(sse, b"event: t\n", step) == []


@pytest.mark.parametrize("step", [1, 2, 3, 100])
def test_bom_skipped_only_at_start(sse, step):
    bom = b"\xef\xbb\xbf"
    assert parse(sse, bom + b"data: a\n\n" + bom + b"data: b\n\n", step) == [ev(b"a")]
    assert parse(sse, bom + bom + b"data: a\n\n", step) == []
    assert parse(sse, b"\xef\xbbdata: a\n\ndata: b\n\n", step) == [ev(b"b")]
    assert parse(sse, b"\xef", step) == []


def test_one_mib_single_event(sse):
    big = b"x" * (1 << 20)
    for step in (0, 65536, 1000):
        assert parse(sse, b"data: " + big + b"\n\n", step) == [ev(big)]
        assert parse(sse, frame(b"data: " + big + b"\n\n", 70000), step, chunked=True) == [ev(big)]


def test_over_limit_event_raises(sse):
    with pytest.raises(sse.SSEError, match=r"max_event_size \(100 bytes\)"):
        parse(sse, b"data: " + b"x" * 101 + b"\n\n", max_event_size=100)
    with pytest.raises(sse.SSEError, match="100 bytes"):
        parse(sse, b"data: " + b"x" * 60 + b"\ndata: " + b"x" * 60 + b"\n\n", 7, max_event_size=100)
    with pytest.raises(sse.SSEError, match="100 bytes"):  # a line without end is bounded too
        p = sse.EventParser(max_event_size=100)
        for _ in range(100):
            p.feed(b": comment that never ends ")
    assert parse(sse, b"data: " + b"x" * 100 + b"\n\n", 9, max_event_size=100) == [ev(b"x" * 100)]


def test_failure_is_sticky_and_close_is_idempotent(sse):
    p = sse.EventParser(max_event_size=3)
    with pytest.raises(sse.SSEError):
        p.feed(b"data: 1234\n\n")
    with pytest.raises(sse.SSEError):
        p.feed(b"data: 1\n\n")
    q = sse.EventParser()
    assert q.feed(b"data: 1") == []
    assert q.close() == [ev(b"1")]
    assert q.close() == []
    assert q.complete
    with pytest.raises(sse.SSEError, match="after close"):
        q.feed(b"data: 2\n\n")


def test_feed_takes_bytes_only(sse):
    for obj in (sse.EventParser(), sse.StreamObserver()):
        with pytest.raises(TypeError):
            obj.feed("data: x\n\n")
        with pytest.raises(TypeError):
            obj.feed(bytearray(b"data"))


# ---- chunked framing -----------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_chunked_hex_case_extensions_and_trailers(sse, step):
    payload = b"data: " + b"y" * 300 + b"\n\ndata: z\n\n"
    expected = [ev(b"y" * 300), ev(b"z")]
    for body in (
        frame(payload, 200),
        frame(payload, 200, upper=True),
        frame(payload, 171, ext=b";name=value;x"),
        frame(payload, 45, ext=b' ;q="a b"', trailers=b"X-T: 1\r\nX-U: 2\r\n"),
        b"0000F\r\ndata: z\n\ndata:a\r\n0\r\n\r\n",
    ):
        p = sse.EventParser(chunked=True)
        events = []
        for i in range(0, len(body), step):
            assert not p.complete
            events += p.feed(body[i : i + step])
        assert p.complete
        assert p.close() == []
        if body.startswith(b"0000F"):
            assert events == [ev(b"z"), ev(b"a")]
        else:
            assert events == expected


def test_chunked_complete_only_after_trailers(sse):
    p = sse.EventParser(chunked=True)
    assert p.feed(b"6\r\ndata: ") == []
    assert p.feed(b"\r\n1\r\nq\r\n0\r\nX-A: b\r\n") == [ev(b"q")]  # the last chunk ends the stream
    assert not p.complete
    assert p.feed(b"\r") == []
    assert not p.complete
    assert p.feed(b"\n") == []
    assert p.complete


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"g\r\n", "expected a hex chunk size"),
        (b"\r\n", "expected a hex chunk size"),
        (b" 5\r\n", "expected a hex chunk size"),
        (b"5x\r\n", "unexpected byte"),
        (b"5\n", "unexpected byte"),
        (b"5 x\r\n", "unexpected byte"),
        (b"5;a\nb", "bare LF"),
        (b"5\rx", "not ended by CRLF"),
        (b"1\r\nab\r\n", "not followed by CRLF"),
        (b"1\r\na\rx", "not followed by CRLF"),
        (b"1234567890abcdef0\r\n", "too large"),
        (b"1;" + b"e" * 9000 + b"\r\n", "over 8192"),
        (b"0\r\n" + b"X: y\r\n" * 2000, "over 8192"),
        (b"0\r\nX\n", "bare LF in trailer"),
        (b"0\r\nX\rY", "trailer line not ended"),
        (b"0\r\n\rx", "last chunk not ended"),
        (b"0\r\n\r\nHTTP/1.1 200 OK\r\n", "after the end"),
    ],
)
def test_malformed_chunking_raises(sse, body, message):
    for step in (1, len(body)):
        for obj in (sse.EventParser(chunked=True), sse.StreamObserver()):
            with pytest.raises(sse.SSEError, match=message):
                for i in range(0, len(body), step):
                    obj.feed(body[i : i + step])
            with pytest.raises(sse.SSEError, match=message):
                obj.close()


def test_truncated_chunked_body_is_not_complete(sse):
    p = sse.EventParser(chunked=True)
    assert p.feed(b"8\r\ndata: a\n") == []
    assert p.close() == [ev(b"a")]
    assert not p.complete
    o = sse.StreamObserver()
    o.feed(b"8\r\ndata: a\n")
    assert o.close() == b""
    assert not o.complete
    assert o.events == 1


# ---- observe mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("step", [1, 5, 64, 10000])
def test_observer_returns_the_same_object(sse, chunked, step):
    data = frame(CHAT, 33) if chunked else CHAT
    o = sse.StreamObserver(chunked=chunked)
    for i in range(0, len(data), step):
        piece = data[i : i + step]
        assert o.feed(piece) is piece
    assert o.close() == b""
    assert o.events == 4
    assert o.done
    assert o.complete
    assert json.loads(o.usage) == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert o.usage == o.first_usage
    assert o.error is None
    assert o.elided == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_elide_mode_without_usage_chunk_is_zero_copy_on_event_boundaries(sse, chunked):
    o = sse.StreamObserver(chunked=chunked, elide_injected_usage=True)
    for block in CHAT_WITHOUT_USAGE.split(b"\n\n")[:-1]:
        piece = block + b"\n\n"
        if chunked:
            piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        assert o.feed(piece) is piece
    end = b"0\r\n\r\n" if chunked else b""
    assert o.feed(end) is end
    assert o.close() == b""
    assert o.elided == 0
    assert o.done


def test_keepalive_comments_pass_byte_for_byte(sse):
    data = b": ping\r\n\r\n:\n\n" + CHAT + b": bye"
    for elide in (False, True):
        for step in (1, 3, 1000):
            o = sse.StreamObserver(chunked=False, elide_injected_usage=elide)
            out = observe(o, data, step)
            assert out == (data.replace(b"data: " + USAGE_ONLY + b"\n\n", b"") if elide else data)


@pytest.mark.parametrize("chunked", [False, True])
def test_elision_at_every_split_position(sse, chunked):
    data = frame(CHAT, 50) if chunked else CHAT
    for cut in range(len(data) + 1):
        o = sse.StreamObserver(chunked=chunked, elide_injected_usage=True)
        out = [o.feed(data[:cut]), o.feed(data[cut:]), o.close()]
        payload = dechunk(b"".join(out)) if chunked else b"".join(out)
        assert payload == CHAT_WITHOUT_USAGE, cut
        assert o.elided == 1
        assert o.done
        assert json.loads(o.usage)["total_tokens"] == 12


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("step", [1, 2, 7, 40])
def test_elision_in_small_pieces(sse, chunked, step):
    data = frame(CHAT, 9, upper=True, ext=b";e=1") if chunked else CHAT
    o = sse.StreamObserver(chunked=chunked, elide_injected_usage=True)
    out = observe(o, data, step)
    assert (dechunk(out) if chunked else out) == CHAT_WITHOUT_USAGE
    assert (o.elided, o.events, o.done, o.complete) == (1, 4, True, True)


@pytest.mark.parametrize("ending", [b"\r\n\r\n", b"\r\r", b"\n\n", b"\r\n", b"\n", b""])
@pytest.mark.parametrize("chunked", [False, True])
def test_elision_of_the_last_event_with_any_ending(sse, ending, chunked):
    head = b"data: " + CHUNK % b"a" + b"\r\n\r\n"
    data = head + b"data: " + USAGE_ONLY + ending
    body = frame(data, 16) if chunked else data
    for step in (1, 3, 16, 1000):
        o = sse.StreamObserver(chunked=chunked, elide_injected_usage=True)
        out = observe(o, body, step)
        assert (dechunk(out) if chunked else out) == head
        assert o.elided == 1


def test_elision_keeps_trailers(sse):
    body = frame(CHAT, 21, trailers=b"X-Checksum: abc\r\n")
    for step in (1, 4, 10000):
        o = sse.StreamObserver(elide_injected_usage=True)
        out = observe(o, body, step)
        assert out.endswith(b"0\r\nX-Checksum: abc\r\n\r\n")
        assert dechunk(out) == CHAT_WITHOUT_USAGE


def test_only_the_usage_only_chunk_is_elided(sse):
    kept = [
        b"event: x\ndata: " + USAGE_ONLY + b"\n\n",  # a typed event is never the OpenAI chunk
        b"data: " + USAGE_ONLY.replace(b'"choices":[]', b'"choices":[{"index":0}]') + b"\n\n",
        b"data: " + USAGE_ONLY.replace(b'"usage":{', b'"x":{"usage":{') + b"}\n\n",  # nested
        b'data: {"choices":[],"usage":null}\n\n',
        b'data: {"a":{"choices":[]},"usage":{"t":1}}\n\n',
    ]
    for block in kept:
        o = sse.StreamObserver(chunked=False, elide_injected_usage=True)
        assert observe(o, block, 5) == block
        assert o.elided == 0
    spaced = b'data: { "choices" : [ ] , "usage" : { "t" : 1 } }\n\n'
    o = sse.StreamObserver(chunked=False, elide_injected_usage=True)
    assert observe(o, b"data: [DONE]\n\n" + spaced) == b"data: [DONE]\n\n"
    assert o.elided == 1


def test_an_unfinished_event_over_the_hold_limit_is_released(sse):
    from gwcore._sse_py import HOLD_LIMIT

    big = b'data: {"choices":[{"delta":{"content":"' + b"x" * HOLD_LIMIT + b'"}}]}\n\n'
    data = big + b"data: " + USAGE_ONLY + b"\n\n" + big
    o = sse.StreamObserver(chunked=False, elide_injected_usage=True)
    assert observe(o, data, 4096) == big + big
    assert o.elided == 1


def test_usage_null_does_not_overwrite_and_first_usage_is_kept(sse):
    data = (
        b'data: {"usage":null}\n\n'
        b'data: {"usage":{"a":1}}\n\n'
        b'data: {"usage":null}\n\n'
        b'data: {"usage" : {"a":2, "n":{"x":"}\\"{"}}}\n\n'
        b'data: {"usage":null}\n\n'
    )
    for step in (1, 7, 1000):
        o = sse.StreamObserver(chunked=False)
        observe(o, data, step)
        assert o.first_usage == b'{"a":1}'
        assert o.usage == b'{"a":2, "n":{"x":"}\\"{"}}'
        assert json.loads(o.usage) == {"a": 2, "n": {"x": '}"{'}}


def test_usage_inside_a_string_is_not_a_key(sse):
    data = (
        b'data: {"choices":[{"delta":{"content":"the \\"usage\\":{ key"}}]}\n\n'
        b'data: {"content":"\\\\\\"usage\\":{\\"a\\":1}","usage":null}\n\n'
        b'data: {"t":"x\\\\","v":"\\"usage\\" : {}"}\n\n'
        b'data: {"content":"say \\"usage\\"","b":{"c":{"usage":{"deep":1}}}}\n\n'
        b'data: "\\"usage\\":{}"\n\n'
        b'data: {"usage":{"a":\n\n'
    )
    o = sse.StreamObserver(chunked=False)
    observe(o, data, 3)
    assert o.usage is None
    assert o.first_usage is None
    assert o.events == 6


def test_usage_key_at_every_offset(sse):
    # Covers the vectorised key search: its 32-byte steps and the byte-wise tail.
    for k in range(0, 90):
        for tail in (b"", b',"z":"' + b"y" * 40 + b'"'):
            data = b'data: {"' + b"x" * k + b'":1,"usage":{"a":1}' + tail + b"}\n\n"
            o = sse.StreamObserver(chunked=False)
            assert o.feed(data) is data
            assert o.usage == b'{"a":1}', (k, tail)


def test_usage_per_dialect(sse):
    anthropic = (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":10,'
        b'"output_tokens":1}}}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":5}}\n\n'
    )
    responses = (
        b"event: response.created\n"
        b'data: {"type":"response.created","response":{"tools":[{"parameters":{"properties":'
        b'{"usage":{"type":"string"}}}}],"usage":null}}\n\n'
        b"event: response.completed\n"
        b'data: {"type":"response.completed","response":{"usage":{"input_tokens":3}}}\n\n'
    )
    gemini = b'data: {"candidates":[],"usageMetadata":{"promptTokenCount":4}}\r\n\r\n'
    cases = [
        (anthropic, b'{"input_tokens":10,"output_tokens":1}', b'{"output_tokens":5}'),
        (responses, b'{"input_tokens":3}', b'{"input_tokens":3}'),
        (gemini, b'{"promptTokenCount":4}', b'{"promptTokenCount":4}'),
    ]
    for data, first, last in cases:
        o = sse.StreamObserver(chunked=False)
        observe(o, data, 11)
        assert (o.first_usage, o.usage) == (first, last)


def test_error_events(sse):
    for data, error in [
        (b'event: error\ndata: {"type":"error","error":{"message":"overloaded"}}\n\n', True),
        (b'data: {"error":{"message":"boom","code":500}}\n\n', True),
        (b'data: { "error" : null}\n\n', True),
        (b"event: error\ndata: not json\n\n", True),
        (b'data: {"id":"x","error":{}}\n\n', False),  # not the first key
        (b'data: {"choices":[{"delta":{"content":"error"}}]}\n\n', False),
        (b"event: error\n\n", False),  # no data: no event
    ]:
        o = sse.StreamObserver(chunked=False)
        observe(o, data, 4)
        expected = data.split(b"data: ")[1].rstrip(b"\n") if error else None
        assert o.error == expected, data
    o = sse.StreamObserver(chunked=False)
    observe(o, b'data: {"error":1}\n\ndata: {"error":2}\n\n')
    assert o.error == b'{"error":1}'  # the first error is the cause


def test_done_needs_the_exact_data(sse):
    for data, done in [
        (b"data: [DONE]\n\n", True),
        (b"data:[DONE]", True),
        (b"data: [DONE] \n\n", False),
        (b"data: [DONE]\ndata: x\n\n", False),
        (b": [DONE]\n\n", False),
    ]:
        o = sse.StreamObserver(chunked=False)
        observe(o, data, 2)
        assert o.done is done, data


def test_observer_limit_skips_inspection_but_counts_and_passes(sse):
    data = b'data: {"usage":{"a":1},"pad":"' + b"p" * 200 + b'"}\n\ndata: [DONE]\n\n'
    for step in (1, 50, 1000):
        o = sse.StreamObserver(chunked=False, max_event_size=100)
        assert observe(o, data, step) == data
        assert (o.events, o.usage, o.done) == (2, None, True)


def test_observer_over_chunked_bom_and_crlf(sse):
    data = b"\xef\xbb\xbfdata: " + USAGE_ONLY + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    body = frame(data, 5)
    for step in (1, 2, 9, 1000):
        o = sse.StreamObserver(elide_injected_usage=True)
        out = observe(o, body, step)
        assert dechunk(out) == b"\xef\xbb\xbfdata: [DONE]\r\n\r\n"
        assert o.elided == 1


def test_at_boundary_tracks_where_an_event_may_be_appended(sse):
    o = sse.StreamObserver(chunked=False)
    seen = []
    for piece in [b"", b"data: a", b"\n", b"\n", b": ping\n", b"event: x\n", b"\n", b"\xef"]:
        o.feed(piece)
        seen.append(o.at_boundary)
    assert seen == [True, False, False, True, True, False, True, False]
    c = sse.StreamObserver()
    seen = []
    for piece in [b"9\r\ndata: a\n\n\r\n", b"1", b"\r\n", b"\n\r\n", b"0\r\n\r\n"]:
        c.feed(piece)
        seen.append(c.at_boundary)
    assert seen == [True, False, False, True, False]
    e = sse.StreamObserver(elide_injected_usage=True)
    assert e.feed(b"9\r\ndata: a\n") == b""  # held back: the client has none of this event
    assert e.at_boundary
    assert e.feed(b"\n\r\n") == b"9\r\ndata: a\n\n\r\n"
    assert e.at_boundary


def chunks(*parts: bytes) -> bytes:
    """One chunk per part (how providers frame a stream: one event a chunk), then the last."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def observed(sse, body: bytes, chunked: bool, step: int = 0) -> tuple:
    o = sse.StreamObserver(chunked=chunked, elide_injected_usage=True)
    out = observe(o, body, step)
    return dechunk(out) if chunked else out, o.usage, o.first_usage, o.done, o.error, o.events


# Events that one chunk each carries whole, and that are not one data line and a blank line ended
# by LF: a line end inside (before a usage key or an error's rest, at every offset), a CR, a split
# BOM. The compiled scanner takes a whole one-line event at once; these must still be walked line by
# line, with the result of the same bytes unchunked.
ONE_CHUNK_EVENTS = [
    *(
        b'data: {"a":"'
        + b"x" * k
        + b'"}'
        + end
        + b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n'
        for k in range(0, 70, 3)
        for end in (b"\r", b"\n", b"\r\n")
    ),
    *(
        b'data: {"error":"' + b"y" * k + b'",' + end + b'data: "usage":{"t":1}}\n\n'
        for k in range(0, 40)
        for end in (b"\r", b"\n")
    ),
    *(  # keys one byte off "usage", at every alignment of the compiled search
        b'data: {"choices":[],"p":"' + b"x" * k + b'",' + key + b':{"t":1}}\n\n'
        for k in range(0, 40, 3)
        for key in (b'"Xsage"', b'"uXage"', b'"usXge"', b'"usaXe"', b'"usagX"', b'"usage', b"usage")
    ),
    *(  # (the same after an error: no usage key, the search runs to the end)
        b'data: {"error":"' + b"x" * k + b'"}' + end + b"y" * j + b"\n\n"
        for k in range(20, 60, 7)
        for end in (b"\r", b"\n")
        for j in range(1, 6)
    ),
    *(  # a line end in the last bytes of the data line, which the compiled search takes last
        b'data: {"choices":[],"p":"' + b"x" * k + b'","usage":{"t":1}}' + end + b"y" * j + b"\n\n"
        for k in range(0, 40, 7)
        for end in (b"\r", b"\n")
        for j in range(1, 6)
    ),
    b'data: {"choices":[],"usage":{"total_tokens":3}}\r\n\n',
    b'data: {"choices":[],"usage":{"total_tokens":3}}\n\r\n',
    b'data: {"a":1}\r\n',  # no blank line: the next chunk's data line joins this event
    b"data:[DONE]\n\n",
    b"data: \n\n",
    b"data:\n\n",
    b"datum: x\n\n",
    b"event: error\ndata: {}\n\n",
]


@pytest.mark.parametrize("event", ONE_CHUNK_EVENTS)
def test_an_event_in_one_chunk_is_read_as_unchunked(sse, event):
    first = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
    plain = first + event + b"data: [DONE]\n\n"
    expected = observed(sse, plain, False)
    body = chunks(first, event, b"data: [DONE]\n\n")
    for step in (0, 1, 7):
        assert observed(sse, body, True, step) == expected


def test_a_bom_split_over_two_chunks_is_the_first_line_start(sse):
    # The partial BOM in the first chunk starts the first line: "\xef\xbbdata" is no data field.
    body = chunks(b"\xef\xbb", b"data: [DONE]\n\n", b"data: 1\n\n")
    assert observed(sse, body, True) == (
        b"\xef\xbbdata: [DONE]\n\ndata: 1\n\n",
        None,
        None,
        False,
        None,
        1,
    )
    body = chunks(b"\xef\xbb\xbf", b"data: [DONE]\n\n")
    assert observed(sse, body, True)[3:] == (True, None, 1)


@pytest.mark.parametrize("elide", [False, True])
def test_an_event_field_in_an_earlier_chunk_types_the_next_data(sse, elide):
    o = sse.StreamObserver(elide_injected_usage=elide)
    seen = []
    for part in (b"event: error\n", b'data: {"x":1}\n\n', b"data: 2\n\n"):
        o.feed(b"%x\r\n%s\r\n" % (len(part), part))
        seen.append(o.at_boundary)
    assert (o.error, o.events) == (b'{"x":1}', 2)
    assert seen == [False, True, True]  # (a typed event is never elided: it is not held back)


# ---- the relay pump: its writes to the client's socket ----------------------------------------


class _Owner:
    def __init__(self) -> None:
        self.complete = 0
        self.failed: list[Exception] = []

    def pump_complete(self) -> None:
        self.complete += 1

    def pump_failed(self, exc: Exception) -> None:
        self.failed.append(exc)


class _Transport:
    """What the pump sees of the client transport: ``write`` buffers, as an event loop's does
    until the socket takes the bytes (``flush``); ``get_write_buffer_size`` tells what waits."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.writes = 0
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.buf += data

    def get_write_buffer_size(self) -> int:
        return len(self.buf)

    def flush(self) -> None:
        while self.buf:
            try:
                n = self.sock.send(self.buf)
            except BlockingIOError:
                return
            del self.buf[:n]


def _pump_pieces(events: int, size: int) -> list[bytes]:
    """A chunked stream, one event a chunk, with the usage chunk the pump's observer elides."""
    content = b'{"choices":[{"delta":{"content":"' + b"x" * size + b'"}}],"usage":null}'
    evs = [b"data: " + content + b"\n\n"] * events
    evs.append(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n')
    evs.append(b"data: [DONE]\n\n")
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in evs] + [b"0\r\n\r\n"]


def _pump_reference(sse, pieces: list[bytes]) -> bytes:
    out: list[bytes] = []
    pump = sse.RelayPump(sse.StreamObserver(True, True), out.append, _Owner())
    for piece in pieces:
        pump.data_received(piece)
    return b"".join(out)


def _direct_pump(sse, t: _Transport, owner: _Owner):
    observer = sse.StreamObserver(True, True)
    return sse.RelayPump(observer, t.write, owner, None, t.sock.fileno(), t)


def _read_all(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    sock.settimeout(5)
    while len(got) < n:
        chunk = sock.recv(1 << 20)
        assert chunk
        got += chunk
    return bytes(got)


def test_pump_writes_to_the_socket_itself_when_nothing_waits(sse):
    pieces = _pump_pieces(20, 200)
    expected = _pump_reference(sse, pieces)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        t = _Transport(a)
        owner = _Owner()
        pump = _direct_pump(sse, t, owner)
        for piece in pieces:
            pump.data_received(piece)
        assert t.writes == 0  # every piece went to the socket
        assert owner.complete == 1 and not owner.failed
        assert _read_all(b, len(expected)) == expected
        assert pump.pieces == len(pieces)


class _Held:
    """A channel's ``take_held`` for the pump's ``first``: ``head`` once (counted), then None."""

    def __init__(self, head: bytes | None) -> None:
        self.head = head
        self.taken = 0

    def take_held(self) -> bytes | None:
        self.taken += 1
        head, self.head = self.head, None
        return head


def test_pump_first_write_carries_the_held_head_sent_as_any_piece(sse):
    """``first`` (the client's channel) hands over its held head once, which goes out in front of
    the first bytes to write, in the same system call: through the socket itself like every piece,
    so the transport holds nothing from the start."""
    pieces = _pump_pieces(6, 80)
    expected = _pump_reference(sse, pieces)
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        t = _Transport(a)
        owner = _Owner()
        held = _Held(head)
        pump = sse.RelayPump(sse.StreamObserver(True, True), t.write, owner, held, a.fileno(), t)
        for piece in pieces:
            pump.data_received(piece)
        assert t.writes == 0  # the first write too went to the socket
        assert held.taken == 1
        assert _read_all(b, len(head) + len(expected)) == head + expected
    # Without a socket: the head and the first bytes go to ``write`` as one; None (no head held)
    # writes the bytes alone; b"" (the client is gone, or the channel wrote a HEAD response's
    # head itself) writes nothing of the first bytes.
    first_out = _pump_reference(sse, pieces[:1])
    for returned, start in ((head, head + first_out), (None, first_out), (b"", b"")):
        out: list[bytes] = []
        held = _Held(returned)
        pump = sse.RelayPump(sse.StreamObserver(True, True), out.append, _Owner(), held)
        for piece in pieces:
            pump.data_received(piece)
        assert held.taken == 1
        assert out[0] == start if start else not out[0].startswith(b"HTTP")
        assert b"".join(out) == start + expected[len(first_out) :]


def test_pump_first_write_through_a_full_socket_loses_nothing(sse):
    """The held head and the first bytes meet a socket with room for part of them only (the cut
    within the head, or within the bytes): the transport gets the rest, in order, and the client
    every byte once."""
    pieces = _pump_pieces(2, 60_000)
    expected = _pump_reference(sse, pieces)
    first_out = _pump_reference(sse, pieces[:1])
    cuts = set()
    for pad in (100, 80_000):  # a head shorter, and one longer, than the room the socket makes
        head = b"HTTP/1.1 200 OK\r\nx-pad: " + b"p" * pad + b"\r\n\r\n"
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            junk = 0
            while True:  # fill the socket, then make some room
                try:
                    junk += a.send(b"j" * 4096)
                except BlockingIOError:
                    break
            got = bytearray()
            while len(got) < 16384:
                got += b.recv(16384 - len(got))
            t = _Transport(a)
            pump = sse.RelayPump(
                sse.StreamObserver(True, True), t.write, _Owner(), _Held(head), a.fileno(), t
            )
            pump.data_received(pieces[0])
            taken = len(head) + len(first_out) - len(t.buf)
            if t.writes:
                assert t.writes == 1 and 0 <= taken < len(head) + len(first_out)
                cuts.add("head" if taken < len(head) else "bytes")
            for piece in pieces[1:]:
                pump.data_received(piece)
            deadline = time.monotonic() + 5
            while len(got) < junk + len(head) + len(expected) and time.monotonic() < deadline:
                t.flush()
                with contextlib.suppress(BlockingIOError):
                    got += b.recv(1 << 20)
            assert bytes(got) == b"j" * junk + head + expected
    assert cuts == {"head", "bytes"}  # both ways a first write can be cut were taken


def test_pump_writes_behind_what_the_transport_holds(sse):
    pieces = _pump_pieces(5, 50)
    expected = _pump_reference(sse, pieces)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        t = _Transport(a)
        t.buf += b"HEAD"  # the head, still waiting in the transport
        pump = _direct_pump(sse, t, _Owner())
        for piece in pieces[:3]:
            pump.data_received(piece)
        assert t.writes == 3  # nothing overtook the waiting bytes
        t.flush()
        for piece in pieces[3:]:
            pump.data_received(piece)
        assert t.writes == 3  # the transport empty: the socket again
        assert _read_all(b, 4 + len(expected)) == b"HEAD" + expected


def test_pump_hands_what_a_full_socket_refuses_to_the_transport_in_order(sse):
    """A client that reads nothing: the socket takes part of a piece, the transport the rest and
    every piece after it until it has written them; then the socket again. The client gets every
    byte once, in order."""
    pieces = _pump_pieces(60, 20_000)  # pieces larger than what the socket takes at once
    expected = _pump_reference(sse, pieces)
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        a.setblocking(False)
        t = _Transport(a)
        owner = _Owner()
        pump = _direct_pump(sse, t, owner)
        got = bytearray()
        b.setblocking(False)

        def client_reads() -> None:
            while True:
                try:
                    chunk = b.recv(1 << 20)
                except BlockingIOError:
                    return
                got.extend(chunk)

        fell_back = direct_again = False
        for i, piece in enumerate(pieces):
            before = t.writes
            pump.data_received(piece)
            if t.writes > before and not fell_back:
                fell_back = True
                assert t.buf  # the rest of the piece waits in the transport
                partial = len(t.buf) < len(piece)
            elif fell_back and t.writes == before:
                direct_again = True
            if i % 15 == 14:  # now and then the client reads, and the transport writes
                client_reads()
                t.flush()
        while len(got) < len(expected):
            t.flush()
            client_reads()
        assert fell_back and partial and direct_again  # the three ways a piece can go
        assert bytes(got) == expected
        assert owner.complete == 1


def test_pump_without_a_socket_writes_through_the_transport(sse):
    pieces = _pump_pieces(3, 10)
    out: list[bytes] = []
    pump = sse.RelayPump(sse.StreamObserver(True, True), out.append, _Owner(), None, 5, None)
    for piece in pieces:
        pump.data_received(piece)  # no transport: the fd is not used (5 is not ours)
    assert b"".join(out) == _pump_reference(sse, pieces)


def test_pump_never_writes_to_the_socket_of_a_closing_transport(sse):
    """A transport that is closing may have closed its fd already, and the number may be another
    connection's by now: the pump leaves every piece to the transport from then on."""
    pieces = _pump_pieces(6, 10)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        t = _Transport(a)
        pump = _direct_pump(sse, t, _Owner())
        for piece in pieces[:3]:
            pump.data_received(piece)
        assert t.writes == 0
        t.closing = True
        for piece in pieces[3:]:
            pump.data_received(piece)
        assert t.writes >= 3  # (the elided usage chunk writes nothing)
        sent = _read_all(b, 1)
        b.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sent += b.recv(1 << 20)
        expected = _pump_reference(sse, pieces)
        assert sent + bytes(t.buf) == expected
        assert len(sent) < len(expected)


def test_send_direct_sends_what_the_socket_takes_and_never_raises(sse):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert sse.send_direct(a.fileno(), b"") == 0
        assert sse.send_direct(a.fileno(), b"hello") == 5
        assert b.recv(16) == b"hello"
        # a full socket takes part of a piece, then none: the rest is the caller's to queue
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        piece = b"x" * 65536
        taken = []
        while not taken or taken[-1] > 0:
            taken.append(sse.send_direct(a.fileno(), piece))
        assert taken[-1] == -1 and sum(taken[:-1]) > 0
        b.close()
        # the peer gone: an error, neither an exception nor SIGPIPE (Python ignores it; a
        # compiled send never raises it)
        assert sse.send_direct(a.fileno(), b"late") == -1
    assert sse.send_direct(a.fileno(), b"closed") == -1  # no such socket any more
    with pytest.raises(TypeError):
        sse.send_direct(0, "text")


def test_head_end_is_bytes_find_of_the_blank_line(sse):
    import random

    rng = random.Random(7)
    pieces = [b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"a", b"HTTP/1.1 200 OK", b"x" * 40]
    for _ in range(3000):
        buf = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        start = rng.randrange(-5, len(buf) + 5)
        assert sse.head_end(buf, start) == buf.find(b"\r\n\r\n", max(start, 0)), (buf, start)
    assert sse.head_end(b"\r\n\r\n") == 0
    with pytest.raises(TypeError):
        sse.head_end("text")
