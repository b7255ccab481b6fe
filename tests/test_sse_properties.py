"""Property tests of the SSE scanner: any split of a stream gives the same result, arbitrary bytes
never crash or hang, and the compiled scanner agrees with its pure-Python twin on every input."""

from __future__ import annotations

import itertools
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# GWCORE_HYPOTHESIS_EXAMPLES raises the example count for a soak run; the default keeps CI fast.
EXAMPLES = int(os.environ.get("GWCORE_HYPOTHESIS_EXAMPLES", "150"))
SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

USAGE_ONLY = (
    b'{"id":"c","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}}'
)
VALUES = [
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}',
    b'{"id":"c","choices":[{"index":0,"delta":{"content":"the \\"usage\\":{ key"}}]}',
    USAGE_ONLY,
    b'{ "choices" : [ ], "usage" : {"total_tokens":1,"d":{"x":"}\\"{"}} }',
    b'{"type":"message_start","message":{"usage":{"input_tokens":10}}}',
    b'{"type":"message_delta","usage":{"output_tokens":5}}',
    b'{"candidates":[],"usageMetadata":{"promptTokenCount":4}}',
    b'{"error":{"message":"overloaded"}}',
    b'{"choices":[],"usage":null}',
    b"[DONE]",
    b"{",
    b"}",
    b"",
]
TERMS = [b"\n", b"\r\n", b"\r"]

text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
value = st.one_of(st.sampled_from(VALUES), text)
line = st.one_of(
    st.builds(lambda sp, v: b"data:" + sp + v, st.sampled_from([b"", b" "]), value),
    st.builds(lambda sp, v: b"data:" + sp + v, st.sampled_from([b"", b" "]), value),
    st.builds(lambda v: b"event: " + v, st.sampled_from([b"error", b"ping", b""])),
    st.builds(lambda v: b"id: " + v, text),
    st.builds(lambda v: b":" + v, text),
    st.sampled_from([b"retry: 100", b"foo: bar", b"data", b"event"]),
)


def field(ln: bytes) -> tuple[bytes, bytes]:
    name, _, val = ln.partition(b":")
    return name, val[1:] if val.startswith(b" ") else val


def elidable(lines: list[bytes]) -> bool:
    """The model of the usage-only OpenAI chunk: no event type, data is such a JSON object."""
    fields = [field(ln) for ln in lines if not ln.startswith(b":")]
    if any(name == b"event" for name, _ in fields):
        return False
    data = [val for name, val in fields if name == b"data"]
    if not data:
        return False
    try:
        obj = json.loads(b"\n".join(data))
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


@st.composite
def streams(draw) -> tuple[bytes, bytes, list[bytes]]:
    """(stream, stream minus the usage-only events, the stream's blocks): valid SSE, any line
    ends, maybe a BOM (the first block, maybe empty)."""
    bom = b"\xef\xbb\xbf" if draw(st.integers(0, 4)) == 0 else b""
    raw, kept = [bom], [bom]
    prev = b""
    blocks = draw(st.lists(st.lists(line, max_size=4), max_size=7))
    for n, lines in enumerate(blocks):
        block = b""
        for ln in lines:
            prev = draw(st.sampled_from(TERMS))
            block += ln + prev
        last = n == len(blocks) - 1
        ending = draw(st.integers(0, 3)) if last and lines else 0
        if ending == 0:  # a CR line end then an LF blank line would be one CRLF
            prev = draw(st.sampled_from(TERMS[1:] if prev == b"\r" else TERMS))
            block += prev
        elif ending == 2:  # no final line end either
            block = block[: -len(prev)]
        raw.append(block)
        kept.append(b"" if elidable(lines) else block)
    return b"".join(raw), b"".join(kept), raw


def frame(payload: bytes, sizes: list[int], upper: bool, ext: bytes) -> bytes:
    out, pos, k = [], 0, 0
    while pos < len(payload):
        size = sizes[k % len(sizes)] if sizes else 64
        part = payload[pos : pos + size]
        pos += size
        k += 1
        out.append((b"%X" if upper else b"%x") % len(part) + ext + b"\r\n" + part + b"\r\n")
    return b"".join(out) + b"0\r\n" + (b"X-T: 1\r\n" if upper else b"") + b"\r\n"


def frame_events(blocks: list[bytes], upper: bool, ext: bytes) -> bytes:
    """One chunk per event (how providers write a stream), the BOM with the first."""
    parts = [blocks[0] + blocks[1], *blocks[2:]] if len(blocks) > 1 else blocks
    out = [(b"%X" if upper else b"%x") % len(p) + ext + b"\r\n" + p + b"\r\n" for p in parts if p]
    return b"".join(out) + b"0\r\n" + (b"X-T: 1\r\n" if upper else b"") + b"\r\n"


def framed(stream: tuple, framing: tuple) -> bytes:
    """``stream`` chunked by ``framing``: (chunk sizes, or None for one chunk per event; upper
    case hex; chunk extension)."""
    sizes, upper, ext = framing
    if sizes is None:
        return frame_events(stream[2], upper, ext)
    return frame(stream[0], sizes, upper, ext)


def dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        out.append(body[pos : pos + size])
        assert body[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2
    while True:
        eol = body.index(b"\r\n", pos)
        pos, blank = eol + 2, eol == pos
        if blank:
            break
    assert pos == len(body)
    return b"".join(out)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


framings = st.tuples(
    st.none() | st.lists(st.integers(1, 40), min_size=1, max_size=5),
    st.booleans(),
    st.sampled_from([b"", b";a=1", b" ; x"]),
)
cut_lists = st.lists(st.integers(0, 2000), max_size=12)


def parse_all(sse, pieces: list[bytes], **kw) -> list:
    p = sse.EventParser(**kw)
    events = []
    for piece in pieces:
        events += p.feed(piece)
    return events + p.close()


def observe_all(sse, pieces: list[bytes], **kw) -> tuple:
    o = sse.StreamObserver(**kw)
    out = []
    for piece in pieces:
        r = o.feed(piece)
        if not kw.get("elide_injected_usage"):
            assert r is piece
        out.append(r)
    out.append(o.close())
    return b"".join(out), o.usage, o.first_usage, o.done, o.error, o.events, o.elided, o.complete


@SETTINGS
@given(stream=streams(), cuts=cut_lists, framing=framings)
def test_parse_any_split_same_events(sse, stream, cuts, framing):
    payload = stream[0]
    whole = parse_all(sse, [payload])
    assert parse_all(sse, split(payload, cuts)) == whole
    body = framed(stream, framing)
    assert parse_all(sse, split(body, cuts), chunked=True) == whole


@SETTINGS
@given(stream=streams(), cuts=cut_lists, framing=framings)
def test_observe_any_split_same_result(sse, stream, cuts, framing):
    payload, kept, _ = stream
    events = parse_all(sse, [payload])
    body = framed(stream, framing)
    for elide in (False, True):
        whole = observe_all(sse, [payload], chunked=False, elide_injected_usage=elide)
        pieces = observe_all(sse, split(payload, cuts), chunked=False, elide_injected_usage=elide)
        assert pieces == whole
        assert whole[0] == (kept if elide else payload)
        assert whole[5] == len(events)
        assert whole[3] == any(e[1] == b"[DONE]" for e in events)
        chunked = observe_all(sse, split(body, cuts), elide_injected_usage=elide)
        assert dechunk(chunked[0]) == whole[0]
        assert chunked[1:] == whole[1:]
        if not elide:
            assert chunked[0] == body


def run(mod, kind: str, kw: dict, pieces: list[bytes]) -> list:
    """Everything observable of one scanner fed ``pieces``, errors included (they are sticky)."""
    obj = mod.EventParser(**kw) if kind == "parse" else mod.StreamObserver(**kw)
    log = []
    for piece in [*pieces, None]:
        try:
            log.append(obj.feed(piece) if piece is not None else obj.close())
        except mod.SSEError as exc:
            log.append(("SSEError", str(exc)))
    if kind == "observe":
        log.append((obj.usage, obj.first_usage, obj.done, obj.error, obj.events, obj.elided))
    log.append(obj.complete)
    return log


TOKENS = [
    b"data: ",
    b"data:",
    b"event: error\n",
    b"id: 1\n",
    b"\r",
    b"\n",
    b"\r\n",
    b":",
    b" ",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"usage":{',
    b'"usage":',
    b'"usageMetadata":{',
    b'"choices":[]',
    b'"error":',
    b"[DONE]",
    b"\xef\xbb\xbf",
    b"\\",
    b'"',
    b"0\r\n",
    b"5\r\n",
    b"a;x=1\r\n",
    b"F",
    b"\x00",
]
fuzz = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=4)), max_size=40).map(
    b"".join
)
configs = st.one_of(
    st.tuples(
        st.just("parse"),
        st.fixed_dictionaries(
            {"chunked": st.booleans(), "max_event_size": st.sampled_from([0, 8, 64, 1 << 20])}
        ),
    ),
    st.tuples(
        st.just("observe"),
        st.fixed_dictionaries(
            {
                "chunked": st.booleans(),
                "elide_injected_usage": st.booleans(),
                "max_event_size": st.sampled_from([0, 16, 1 << 20]),
            }
        ),
    ),
)


@SETTINGS
@given(data=fuzz, cuts=cut_lists, config=configs)
def test_arbitrary_bytes_never_crash(sse, data, cuts, config):
    kind, kw = config
    whole = run(sse, kind, kw, [data])
    pieces = run(sse, kind, kw, split(data, cuts))
    # Same outcome whatever the split: the same failure, or the same events / observations.
    failed = [x for x in whole if isinstance(x, tuple) and x[:1] == ("SSEError",)]
    assert failed[:1] == [x for x in pieces if isinstance(x, tuple) and x[:1] == ("SSEError",)][:1]
    if not failed:
        if kind == "parse":
            assert [e for r in whole[:-1] for e in r] == [e for r in pieces[:-1] for e in r]
        else:
            assert b"".join(whole[:-2]) == b"".join(pieces[:-2]) or kw["chunked"]
            assert whole[-2:] == pieces[-2:]


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(data=fuzz, cuts=cut_lists, config=configs)
def test_compiled_agrees_with_twin(sse_pair, data, cuts, config):
    compiled, twin = sse_pair
    kind, kw = config
    pieces = split(data, cuts)
    assert run(compiled, kind, kw, pieces) == run(twin, kind, kw, pieces)


@settings(max_examples=EXAMPLES, deadline=None)
@given(stream=streams(), cuts=cut_lists, framing=framings)
def test_compiled_agrees_with_twin_on_valid_streams(sse_pair, stream, cuts, framing):
    compiled, twin = sse_pair
    body = framed(stream, framing)
    for chunked, data in ((False, stream[0]), (True, body)):
        pieces = split(data, cuts)
        for kind, kw in (
            ("parse", {"chunked": chunked}),
            ("observe", {"chunked": chunked, "elide_injected_usage": True}),
        ):
            assert run(compiled, kind, kw, pieces) == run(twin, kind, kw, pieces)


@SETTINGS
@given(stream=streams(), cut=st.integers(0, 2000), framing=framings, elide=st.booleans())
def test_at_boundary_means_an_appended_event_stands_alone(sse, stream, cut, framing, elide):
    payload = stream[0]
    error = b'data: {"error":{"message":"upstream failed"}}\n\n'
    for chunked in (False, True):
        data = framed(stream, framing) if chunked else payload
        o = sse.StreamObserver(chunked=chunked, elide_injected_usage=elide)
        sent = o.feed(data[:cut])
        if not o.at_boundary:
            continue
        tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(error), error) if chunked else error
        p = sse.EventParser(chunked=chunked)
        before = p.feed(sent)
        # (the last event id persists, so only the type and the data are compared)
        assert [e[:2] for e in p.feed(tail) + p.close()] == [(None, error[6:-2])]
        q = sse.EventParser(chunked=chunked)
        assert q.feed(sent + tail)[: len(before)] == before


# JSON text whose strings are long enough for the compiled walk's 16-byte string skipping, with
# quotes and backslashes at every alignment, and usage objects at several depths: the compiled
# scanner must find the same usage (and elide the same events) as the byte-by-byte twin.
_json_text = st.text(alphabet=st.sampled_from('ab"\\{}[]:, u\u00e9'), max_size=60)
_json_values = st.recursive(
    st.none() | st.integers(-5, 10**6) | _json_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["usage", "choices", "x", "usageMetadata", 'k"\\']), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    objs=st.lists(
        st.dictionaries(
            st.sampled_from(["usage", "choices", "id", "usageMetadata"]), _json_values, max_size=4
        ),
        min_size=1,
        max_size=5,
    ),
    cuts=cut_lists,
)
def test_compiled_agrees_with_twin_on_json_with_long_strings(sse_pair, objs, cuts):
    compiled, twin = sse_pair
    events = [b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs]
    body = b"".join(events)
    chunked = frame_events([b"", *events], False, b"")  # one chunk per event, as providers send
    for elide in (False, True):
        for data, kw in (
            (body, {"chunked": False, "elide_injected_usage": elide}),
            (chunked, {"chunked": True, "elide_injected_usage": elide}),
        ):
            for pieces in (split(data, cuts), [data]):
                assert run(compiled, "observe", kw, pieces) == run(twin, "observe", kw, pieces)


# One event's data as a run of JSON fragments: usage and choices keys, brackets closing early or
# never, strings holding brackets, quotes and backslashes, objects side by side. The compiled
# scanner reads usage and decides elision in one walk over the object; the twin walks it several
# times: every such event must give the same usage and the same elision.
_FRAGMENTS = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b" ",
    b"1",
    b"null",
    b'"usage":{',
    b'"usage":{}',
    b'"usage":null',
    b'"usage" : {"t":1}',
    b'"usageMetadata":{',
    b'"choices":[]',
    b'"choices" : [ ]',
    b'"choices":[',
    b'"x"',
    b'"x":',
    b'"}{]["',
    b'"\\""',
    b'"\\\\"',
    b'"',
    b"\\",
]


@settings(max_examples=4 * EXAMPLES, deadline=None)
@given(
    parts=st.lists(st.sampled_from(_FRAGMENTS), max_size=30),
    head=st.sampled_from([b"{", b' {"choices":[],', b'{"usage":{"a":{}},', b""]),
)
def test_compiled_agrees_with_twin_on_usage_and_choices_fragments(sse_pair, parts, head):
    compiled, twin = sse_pair
    data = head + b"".join(parts)
    event = b"data: " + data + b"\n\n"
    for elide in (False, True):
        kw = {"chunked": False, "elide_injected_usage": elide}
        assert run(compiled, "observe", kw, [event]) == run(twin, "observe", kw, [event])
    # ... and the well-formed usage-only chunk with those fragments as extra members is elided
    # by both exactly when it is still one object with an empty top-level choices
    whole = b'{"choices":[],"usage":{"n":1},"k":[' + b"".join(parts) + b"]}"
    event = b"data: " + whole + b"\n\n"
    kw = {"chunked": False, "elide_injected_usage": True}
    got = run(compiled, "observe", kw, [event])
    assert got == run(twin, "observe", kw, [event])
    try:
        obj = json.loads(whole)
    except ValueError:
        return
    assert got[0] == b""  # the usage-only chunk, still valid JSON: elided
    assert obj["choices"] == []


@pytest.mark.parametrize(
    ("data", "elided", "usage"),
    [
        (b'{"choices":[],"usage":{"n":1}}', True, b'{"n":1}'),
        (b'{ "choices" : [ ] , "usage" : { } } ', True, b"{ }"),
        (b'{"usage":{"a":"}"},"choices":[]}', True, b'{"a":"}"}'),
        (b'{"choices":[],"usage":{"n":1},"usage":{"n":2}}', True, b'{"n":2}'),
        (b'{"usage":{"choices":[]},"choices":[]}', True, b'{"choices":[]}'),
        (b'{"usage":{"choices":[]}}', False, b'{"choices":[]}'),
        (b'{"a":{"choices":[]},"usage":{}}', False, b"{}"),
        (b'{"x":"\\"choices\\":[]","usage":{"n":1}}', False, b'{"n":1}'),
        (b'{"choices":[{"a":1}],"usage":{"n":1}}', False, b'{"n":1}'),
        (b'{"choices":[],"usage":{"n":1}}{}', False, b'{"n":1}'),
        (b'{}"choices":[],"usage":{"n":1}', False, b'{"n":1}'),
        (b'{"choices":[],"usage":{"n":1}', False, b'{"n":1}'),
        (b'{"choices":[],"usage":{"n":1', False, None),
        (b'{"usageMetadata":{"a":1},"choices":[]}', False, b'{"a":1}'),
        (b'{"choices":[],"a":{"usage":{"n":1}}}', False, b'{"n":1}'),
        (b'{"choices":[],"a":[{"usage":{"n":1}}]}', False, None),
        (b'{"choices":[],"a":{"b":{"usage":{"n":1}}}}', False, None),
    ],
)
def test_usage_only_chunk_elided_only_when_it_is_one_object_with_top_level_empty_choices(
    sse, data, elided, usage
):
    o = sse.StreamObserver(chunked=False, elide_injected_usage=True)
    out = o.feed(b"data: " + data + b"\n\n")
    assert (out == b"", o.elided, o.usage) == (elided, int(elided), usage)
