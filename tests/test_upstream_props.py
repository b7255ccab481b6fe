"""Property tests of the response-head finder, driven without sockets: whatever the read
boundaries, the listener gets the right head and, after it, the very bytes objects received."""

from __future__ import annotations

import asyncio
import random

import httptools
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gwcore.upstream import (
    Origin,
    UpstreamConnection,
    UpstreamPool,
    _http_version,
)


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_extra_info(self, name: str, default=None):
        return default

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Listener:
    def __init__(self) -> None:
        self.head = None
        self.data: list[bytes] = []
        self.eof = 0
        self.errors: list = []
        self.head_ends: list[int] = []  # bytes of body received when each on_head_end came

    def on_head(self, conn, status, headers, chunked, content_length):
        self.head = (status, headers, chunked, content_length)

    def on_data(self, data):
        self.data.append(data)

    def on_head_end(self):
        self.head_ends.append(sum(map(len, self.data)))

    def on_eof(self):
        self.eof += 1

    def on_error(self, exc):
        self.errors.append(exc)


def feed(response: bytes, cuts: list[int], method: str = "POST"):
    loop = asyncio.new_event_loop()
    try:
        pool = UpstreamPool(header_timeout=None, idle_timeout=None)
        conn = UpstreamConnection(pool, Origin("http", "127.0.0.1", 1), loop)
        conn.connection_made(FakeTransport())
        listener = Listener()
        fut = conn._send(b"GET / HTTP/1.1\r\n\r\n", listener, method)
        bounds = sorted({c for c in cuts if 0 < c < len(response)})
        pieces = [
            response[a:b] for a, b in zip([0, *bounds], [*bounds, len(response)], strict=True)
        ]
        for piece in pieces:
            conn.data_received(piece)
        return listener, pieces, fut
    finally:
        loop.close()


HEADER = st.tuples(
    st.sampled_from(["X-A", "x-request-id", "Server", "Set-Cookie"]),
    st.text(alphabet="abcdefghij0123456789 -_/:;=", min_size=0, max_size=30).map(str.strip),
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(min_size=1, max_size=300),
    headers=st.lists(HEADER, max_size=5),
    interim=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
)
def test_chunked_head_found_at_any_split(body, headers, interim, cuts):
    head = b"HTTP/1.1 200 OK\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    wire = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    prefix = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" if interim else b""
    response = prefix + head + wire
    listener, pieces, fut = feed(response, cuts)
    assert fut.done() and fut.exception() is None
    status, got_headers, chunked, length = listener.head
    assert (status, chunked, length) == (200, True, None)
    assert [(k.decode(), v.decode()) for k, v in got_headers[:-1]] == headers
    assert b"".join(listener.data) == wire
    # every piece wholly after the head is handed over as the same object, not a copy
    head_end = len(prefix) + len(head)
    offset = 0
    for piece in pieces:
        if offset >= head_end:
            assert any(piece is d for d in listener.data)
        offset += len(piece)
    assert listener.eof == 0 and not listener.errors  # the scanner, not the connection, ends it
    # on_head_end comes once, when the rest of the piece that completed the head was handed on
    offset = 0
    for piece in pieces:
        offset += len(piece)
        if offset >= head_end:
            break
    assert listener.head_ends == [offset - head_end]


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(min_size=0, max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_content_length_counted_at_any_split(body, cuts):
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    listener, _pieces, _ = feed(response, cuts)
    assert listener.head[2:] == (False, len(body))
    assert b"".join(listener.data) == body
    assert listener.eof == 1 and not listener.errors
    head_end = response.index(b"\r\n\r\n") + 4
    offset = 0
    for piece in _pieces:
        offset += len(piece)
        if offset >= head_end:
            break
    assert listener.head_ends == ([offset - head_end] if body else [])


# ------------------------------------------------------------------------------- request heads

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _Parsed:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.one_of(
                st.text(_TOKEN_CHARS, min_size=1, max_size=12),
                st.text(max_size=6),  # anything: a space, a colon, CR/LF, non-latin-1
            ),
            st.one_of(
                st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
                st.text(max_size=10),
            ),
        ),
        max_size=6,
    ),
    body=st.binary(max_size=40),
)
def test_build_request_head_parses_back_or_is_refused(headers, body):
    """Whatever the caller's headers: either the head parses back (httptools) to exactly the
    end-to-end ones it was given, or a 400 refuses it; the same twice (the line cache)."""
    import httptools

    from gwcore.errors import GatewayError
    from gwcore.upstream import _TOKEN, build_request, strip_hop_by_hop

    origin = Origin("http", "127.0.0.1", 9000)
    kept = strip_hop_by_hop(headers)
    valid = all(
        _TOKEN(n) and all(c == "\t" or 0x20 <= ord(c) <= 0x7E or 0x80 <= ord(c) <= 0xFF for c in v)
        for n, v in kept
    )
    for _ in range(2):
        try:
            data = build_request(origin, "POST", "/v1/x", headers, body)
        except GatewayError as exc:
            assert not valid and exc.status == 400
            continue
        assert valid
        parsed = _Parsed()
        parser = httptools.HttpRequestParser(parsed)
        parser.feed_data(data)
        # A field value excludes its surrounding whitespace (RFC 9110 5.5); parsers differ on
        # what they strip of it, so both sides are compared without it.
        expected = [
            (n.encode(), v.encode("latin-1").strip(b" \t"))
            for n, v in kept
            if n.lower() not in ("host", "content-length")
        ]
        assert [(n, v.strip(b" \t")) for n, v in parsed.headers[1:-2]] == expected
        assert parsed.body == body


_HEADER_LISTS = st.lists(
    st.tuples(
        st.one_of(
            st.text(_TOKEN_CHARS, min_size=1, max_size=12),
            st.sampled_from(["Authorization", "Accept", "Host", "Content-Length", "TE", "Upgrade"]),
            st.text(max_size=6),  # anything: a space, a colon, CR/LF, non-latin-1
        ),
        st.one_of(
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
            st.text(max_size=10),
        ),
    ),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(first=_HEADER_LISTS, rest=_HEADER_LISTS, body=st.binary(max_size=20))
def test_header_block_writes_what_the_headers_would(first, rest, body):
    """Headers rendered once (``header_block``) and written before the per-request ones give the
    same request bytes as one list of both, and are refused when that list would be (a
    ``Connection`` header, which nominates names across both lists, is left out)."""
    from gwcore.errors import GatewayError
    from gwcore.upstream import build_request, header_block

    assume(all(n.lower() != "connection" for n, _ in first + rest))
    origin = Origin("http", "127.0.0.1", 9000)
    try:
        expected = build_request(origin, "POST", "/v1/x", first + rest, body)
    except GatewayError as exc:
        assert exc.status == 400
        expected = None
    try:
        got = build_request(origin, "POST", "/v1/x", rest, body, header_block(first))
    except GatewayError as exc:
        assert exc.status == 400
        got = None
    assert got == expected


class _Heads:
    def on_header(self, name: bytes, value: bytes) -> None:
        pass


@given(
    blank=st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]),
    protocol=st.sampled_from([b"HTTP", b"RTSP", b"ICE"]),
    version=st.tuples(st.integers(0, 9), st.integers(0, 9))
    | st.sampled_from([(0, 9), (1, 0), (1, 1), (2, 0)]),  # what llhttp accepts, often
    status=st.integers(200, 599),
    headers=st.lists(st.sampled_from([b"a: b/c\r\n", b"x-y: 1.1\r\n"]), max_size=3),
)
def test_version_is_what_httptools_says(blank, protocol, version, status, headers):
    """The version the head finder reads from the bytes is ``get_http_version()``'s, for every
    status line llhttp accepts."""
    head = blank + b"%s/%d.%d %d OK\r\n" % (protocol, *version, status) + b"".join(headers)
    head += b"\r\n"
    parser = httptools.HttpResponseParser(_Heads())
    try:
        parser.feed_data(head)
    except httptools.HttpParserError:
        assume(False)
    assert _http_version(head) == parser.get_http_version()


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


# Plain heads most of the time (so that the quick parser often answers), odd pieces otherwise.
_PLAIN_NAMES = st.sampled_from(
    [b"Content-Type", b"x-request-id", b"Connection", b"openai-processing-ms", b"a", b"x~y!z"]
)
_PLAIN_VALUES = st.sampled_from(
    [b"", b"text/event-stream", b"close", b"keep-alive", b"a\tb", b"  padded  ", b"\x80\xff", b"1"]
)
_FRAMING = st.sampled_from(
    [
        (b"Content-Length", b": ", b"12"),
        (b"content-length", b":", b"012"),
        (b"Transfer-Encoding", b": ", b"chunked"),
        (b"TRANSFER-ENCODING", b":", b"gzip, chunked"),
    ]
)
_ANY_NAMES = st.sampled_from(
    [
        b"",
        b"Content-Length",
        b"Transfer-Encoding",
        b"bad name",
        b"bad@name",
        b" folded",
        b"\tx",
        b"caf\xe9",
        b"a",
    ]
)
_ANY_SEPARATORS = st.sampled_from([b":", b": ", b":\t", b" :", b"::", b""])
_ANY_VALUES = st.sampled_from(
    [
        b"chunked",
        b"gzip, chunked",
        b"1 2",
        b"5 ",
        b" 7",
        b"99999999999999999999",
        b"-1",
        b"nul\x00",
        b"del\x7f",
        b"bare\rcr",
        b"bare\rXYZ: cr",
        b"bare\nlf",
        b"\x01",
        b"12",
        b"",
    ]
)
_ODD_HEADER = st.tuples(_ANY_NAMES, _ANY_SEPARATORS, _ANY_VALUES)
_PLAIN = st.tuples(_PLAIN_NAMES, st.sampled_from([b":", b": ", b":\t"]), _PLAIN_VALUES)
_ODD_VALUE = st.tuples(_PLAIN_NAMES, st.just(b": "), _ANY_VALUES)
_HEADERS = st.integers(0, 7).flatmap(
    lambda k: _FRAMING if k == 5 else _ODD_HEADER if k == 6 else _ODD_VALUE if k == 7 else _PLAIN
)
_GOOD_STATUS = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 204 No",
        b"HTTP/1.1 103 Early Hints",
        b"HTTP/1.1 099 x",
        b"HTTP/1.1 999 x",
        b"HTTP/1.1 200 \xe9t\xe9",
        b"HTTP/1.1 200\tOK",
    ]
)
_ODD_STATUS = st.sampled_from(
    [
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/2.0 200 OK",
        b"HTTP/0.9 200 OK",
        b"\r\nHTTP/1.1 200 OK",
        b"ICE/1.0 200 OK",
        b"HTTP/1.1 200 O\x01K",
        b"HTTP/1.1  200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.2 200 OK",
        b"HTTP/1.9 200 OK",
    ]
)
_STATUS_LINES = st.integers(0, 3).flatmap(lambda k: _ODD_STATUS if k == 3 else _GOOD_STATUS)


def _response_bytes(status_line: bytes, headers: list, tail: bytes) -> tuple[bytes, int]:
    """A response's bytes of these (name, separator, value) lines and where its head ends (just
    past the first blank line; the example is not used when there is none)."""
    head = status_line + b"\r\n" + b"".join(n + sep + v + b"\r\n" for n, sep, v in headers)
    buf = head + b"\r\n" + tail
    end = buf.find(b"\r\n\r\n")
    assume(end >= 0)
    return buf, end + 4


@settings(max_examples=600)
@given(
    status_line=_STATUS_LINES,
    headers=st.lists(_HEADERS, max_size=6),
    tail=st.sampled_from([b"", b"body bytes", b"\r\n"]),
)
def test_quick_head_answers_as_httptools_or_not_at_all(sse, status_line, headers, tail):
    """The one-pass head parser (``quick_response_head`` of the compiled scanner module and of
    its twin) either declines (httptools then parses) or gives exactly httptools' status,
    version and header list, for a head httptools accepts."""
    buf, end = _response_bytes(status_line, headers, tail)
    quick = sse.quick_response_head(buf, end)
    if quick is None:
        return
    collect = _Collect()
    parser = httptools.HttpResponseParser(collect)
    parser.feed_data(buf[:end])  # an error here: the quick parser took what llhttp refuses
    assert quick == (parser.get_status_code(), parser.get_http_version(), collect.headers)


_PASSING = [b"openai-processing-ms", b"x-request-id", b"connection", b"content-type", b"a"]


@settings(max_examples=600)
@given(
    status_line=_STATUS_LINES,
    headers=st.lists(_HEADERS, max_size=8),
    tail=st.sampled_from([b"", b"body bytes", b"\r\n"]),
    names=st.lists(st.sampled_from(_PASSING), unique=True),
    asked=st.sampled_from([*_PASSING, b"content-length", b"transfer-encoding", b"absent"]),
)
def test_response_head_reads_what_the_pairs_say(sse, status_line, headers, tail, names, asked):
    """``response_head`` takes the heads ``quick_response_head`` takes (held to httptools
    above), and its ``ResponseHead`` is that head's list of pairs (length, items, negative
    indices, slices, iteration, equality) with the framing, the first value of a name and the
    passing lines read from its bytes: each as computed here from the pairs."""
    buf, end = _response_bytes(status_line, headers, tail)
    quick = sse.quick_response_head(buf, end)
    got = sse.response_head(buf, end)
    if quick is None:
        assert got is None
        return
    status, version, pairs = quick
    assert type(got) is sse.ResponseHead
    assert (got.status, got.version) == (status, version)
    assert len(got) == len(pairs)
    assert [got[k] for k in range(len(pairs))] == pairs
    assert [got[-k] for k in range(1, len(pairs) + 1)] == pairs[::-1]
    assert got[1:3] == pairs[1:3] and got[::-1] == pairs[::-1]
    assert list(got) == pairs and got == pairs and got.pairs() == pairs
    assert got != [*pairs, (b"x", b"y")]
    lows = [(n.lower(), v) for n, v in pairs]
    lengths = [int(v) for n, v in lows if n == b"content-length"]
    assert got.content_length == (lengths[0] if lengths else None)
    assert got.chunked == any(n == b"transfer-encoding" for n, _ in lows)
    assert got.connection == b"".join(b"," + v.lower() for n, v in lows if n == b"connection")
    assert got.value_of(asked) == next((v for n, v in lows if n == asked), None)
    wanted = tuple(names)
    assert got.passed_lines(wanted) == "".join(
        f"{n.decode('latin-1')}: {v.decode('latin-1')}\r\n" for n, v in pairs if n.lower() in wanted
    )


def test_header_names_read_16_bytes_a_step_as_byte_by_byte(sse_pair):
    """The compiled parsers read most of a name 16 bytes a step (letters, digits, '-') and the
    rest from the token table: a name with any byte at any place of it, in names of 1 to 40
    bytes, gets the twin's answer, request and response."""
    compiled, twin = sse_pair
    odd = b":; _!~.^`|@[{/\x80\xff\x00\tAZaz09-"
    for size in range(1, 41):
        for at in range(size):
            for c in odd:
                name = b"x" * at + bytes([c]) + b"Y" * (size - at - 1)
                request = b"POST /v HTTP/1.1\r\n" + name + b": v\r\nHost: h\r\n\r\n"
                response = b"HTTP/1.1 200 OK\r\n" + name + b": v\r\nA: b\r\n\r\n"
                assert compiled.quick_request_head(request) == twin.quick_request_head(request)
                assert compiled.quick_response_head(response, len(response)) == (
                    twin.quick_response_head(response, len(response))
                )


def test_response_head_refuses_what_it_cannot_answer(sse):
    """Its errors: no public constructor, an index out of range, names that are not a tuple of
    bytes."""
    head = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n"
    got = sse.response_head(head, len(head))
    assert got.passed_lines(()) == "" and got.passed_lines((b"b",)) == "B: 2\r\n"
    with pytest.raises(TypeError):
        sse.ResponseHead()
    for k in (2, -3, 1 << 40):
        with pytest.raises(IndexError):
            got[k]
    for names in ([b"a"], ("a",), (b"a", None)):
        with pytest.raises(TypeError):
            got.passed_lines(names)
    with pytest.raises(TypeError):
        got.value_of("a")
    assert got.value_of(b"a") == b"1" and got.value_of(b"A") is None  # the name asked: lowercase


def test_response_head_with_many_fields_or_many_names(sse):
    """Past what the compiled reader keeps on its stack (256 fields, 32 names asked for) the
    answers are the same: every field found, every name asked for matched."""
    rnd = random.Random(11)
    fields = [(b"X-F%d" % rnd.randrange(400), b"v%d" % k) for k in range(300)]
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    head += b"\r\n"
    got = sse.response_head(head, len(head))
    assert got == fields and len(got) == 300 and got[299] == fields[299]
    for names in (
        (b"x-f7", b"x-f399"),
        tuple(b"x-f%d" % k for k in range(40)),
        tuple(b"x-f%d" % k for k in range(0, 400, 3)),
    ):
        assert got.passed_lines(names) == "".join(
            f"{n.decode()}: {v.decode()}\r\n" for n, v in fields if n.lower() in names
        )
    short = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields[:9])
    short += b"\r\n"
    names = tuple(b"x-f%d" % k for k in range(400))  # more than 32 names, few fields
    assert sse.response_head(short, len(short)).passed_lines(names) == "".join(
        f"{n.decode()}: {v.decode()}\r\n" for n, v in fields[:9]
    )


def test_response_head_passing_lines_keep_latin1_text(sse_pair):
    """The passing lines are the values' latin-1 text, the same string the twin makes (one
    made ASCII when every byte is, as Python makes it: equal, hashed the same)."""
    compiled, twin = sse_pair
    for value in (b"1", b"\xe9t\xe9", b"a\tb", b"", b"\x80\xff x"):
        head = b"HTTP/1.1 200 OK\r\nKeep: " + value + b"\r\nDrop: x\r\n\r\n"
        lines = compiled.response_head(head, len(head)).passed_lines((b"keep",))
        assert lines == twin.response_head(head, len(head)).passed_lines((b"keep",))
        assert lines == "Keep: " + value.decode("latin-1") + "\r\n"
        assert hash(lines) == hash("Keep: " + value.decode("latin-1") + "\r\n")
        assert lines.isascii() == value.isascii()


def test_quick_head_takes_the_plain_heads(sse):
    """What every provider sends is taken by the quick parser, not left to httptools."""
    head = (
        b"HTTP/1.1 200 OK\r\nDate: Fri, 27 Nov 2026 06:00:00 GMT\r\n"
        b"Content-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: keep-alive\r\nopenai-processing-ms:  112\r\n"
        b"x-ratelimit-remaining-tokens: 149999\t\r\n\r\n"
    )
    assert sse.quick_response_head(head + b"data: x", len(head)) == (
        200,
        "1.1",
        [
            (b"Date", b"Fri, 27 Nov 2026 06:00:00 GMT"),
            (b"Content-Type", b"text/event-stream; charset=utf-8"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"keep-alive"),
            (b"openai-processing-ms", b"112"),
            (b"x-ratelimit-remaining-tokens", b"149999\t"),
        ],
    )
    length = b"HTTP/1.0 404 Not Found\r\nContent-Length: 17\r\n\r\n"
    assert sse.quick_response_head(length, len(length)) == (
        404,
        "1.0",
        [(b"Content-Length", b"17")],
    )


def test_quick_head_names_from_its_cache_are_the_names_received(sse_pair):
    """The compiled parser hands out a response's header names from a small cache (the same
    object for a name seen before, its hash made once): over many heads whose names collide,
    evict each other, differ only in case or are longer than a slot, every answer is the
    twin's, byte for byte."""
    compiled, twin = sse_pair
    rnd = random.Random(7)
    pool = [b"X-H%d" % k for k in range(300)] + [b"x-h%d" % k for k in range(40)]
    pool += [b"X-" + b"n" * k for k in range(25, 45)] + [b"Content-Type", b"content-type"]
    for _ in range(400):
        names = rnd.sample(pool, rnd.randint(1, 12))
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": v\r\n" for n in names) + b"\r\n"
        got = compiled.quick_response_head(head, len(head))
        assert got == twin.quick_response_head(head, len(head))
        assert [n for n, _ in got[2]] == names
    head = b"HTTP/1.1 200 OK\r\nopenai-version: 2020-10-01\r\n\r\n"
    first = compiled.quick_response_head(head, len(head))[2][0][0]
    assert compiled.quick_response_head(head, len(head))[2][0][0] is first


def test_header_caches_keep_a_client_s_and_a_provider_s_names_and_values(sse_pair):
    """The compiled parsers' caches hold every header name and short value of the official
    SDK's requests, and every name of a provider's response, at once: parsed again, each is the
    very object handed out the first time (the gateway's cache of forwarded lines compares them
    by identity). With two ways in 64 sets, three SDK names and three values evicted each other
    on every request."""
    from gwcore.benchmark.loadgen import SDK_HEADERS, chat_body, http_request
    from gwcore.testing.mock_upstream import provider_response_headers

    compiled, _ = sse_pair
    request = http_request("/v1/chat/completions", chat_body("m", True), SDK_HEADERS)
    first = compiled.quick_request_head(request)[2]
    again = compiled.quick_request_head(request)[2]
    assert len(first) == len(SDK_HEADERS) + 3  # host, content-type and content-length
    assert list(first.items()) == list(again.items())
    for (name, value), (name2, value2) in zip(first.items(), again.items(), strict=True):
        assert name2 is name and value2 is value, name
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(
        f"{n}: {v}\r\n".encode() for n, v in provider_response_headers(1)
    )
    head += b"\r\n"
    names = [n for n, _ in compiled.response_head(head, len(head))]
    again_names = [n for n, _ in compiled.response_head(head, len(head))]
    assert again_names == names and len(names) == len(provider_response_headers(1))
    assert all(a is b for a, b in zip(names, again_names, strict=True))


@settings(max_examples=400)
@given(
    lines=st.lists(
        st.text(alphabet=st.characters(max_codepoint=0x17F), max_size=12)
        | st.sampled_from(["POST /v1/chat/completions HTTP/1.1\r\n", "Host: h\r\n", ""]),
        max_size=6,
    ),
    body=st.binary(max_size=40) | st.sampled_from([b"", b"x" * 100_000]),
    framed=st.booleans(),
)
def test_request_bytes_is_the_joined_head_and_the_body(sse_pair, lines, body, framed):
    """The request in one allocation (compiled) is the twin's join, encode and concatenation,
    byte for byte; a line that is not latin-1 raises the same ``UnicodeEncodeError``."""
    compiled, twin = sse_pair

    def answer(module):
        try:
            return module.request_bytes(list(lines), body, framed)
        except UnicodeEncodeError as exc:
            return ("UnicodeEncodeError", str(exc))

    want = answer(twin)
    assert answer(compiled) == want
    if type(want) is bytes:
        tail = b"Connection: keep-alive\r\n\r\n" + body
        if body or framed:
            tail = b"Content-Length: %d\r\n" % len(body) + tail
        assert want == "".join(lines).encode("latin-1") + tail


def test_request_bytes_refuses_what_is_not_lines_and_bytes(sse):
    for bad in ((("a",), b"", True), (["a"], "body", True), (["a", 1], b"", True)):
        with pytest.raises(TypeError):
            sse.request_bytes(*bad)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), start=st.integers(0, 80))
def test_bytes_tail_is_the_slice(sse, data, start):
    """``bytes_tail(data, start)`` is ``data[start:]`` (the whole object itself from 0), on both
    implementations; a negative start or a non-bytes refused."""
    out = sse.bytes_tail(data, start)
    assert type(out) is bytes and out == data[start:]
    if start == 0:
        assert out is data or not data
    with pytest.raises(ValueError):
        sse.bytes_tail(data, -1)
    with pytest.raises(TypeError):
        sse.bytes_tail(bytearray(data), start)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=40) | st.text(st.characters(max_codepoint=0x80), max_size=40))
def test_printable_ascii_is_isascii_and_isprintable(sse, text):
    """``printable_ascii(text)`` is ``text.isascii() and text.isprintable()`` on both
    implementations (space to ``~``: no tab, no DEL, nothing past ASCII); a non-str refused."""
    assert sse.printable_ascii(text) is (text.isascii() and text.isprintable())
    for edge in (" ", "~", "\t", "\x7f", "\x80", "", "a\x1fb"):
        assert sse.printable_ascii(edge) is (edge.isascii() and edge.isprintable())
    with pytest.raises(TypeError):
        sse.printable_ascii(text.encode())


# ------------------------------------------------------------- request bytes against the reference


def _reference_request(origin, method, path, headers, body, block=""):
    """The request bytes as build_request wrote them before its caches and fast loop: every
    header stripped, checked and rendered one by one, every time."""
    from gwcore.errors import GatewayError
    from gwcore.upstream import _header_line, strip_hop_by_hop

    if not path.startswith("/") or any(c in path for c in "\r\n\0 ") or "\r" in method:
        raise GatewayError(500, f"invalid upstream request target {path!r}")
    if "\n" in method or "\0" in method:
        raise GatewayError(500, f"invalid upstream request target {path!r}")
    lines = [f"{method} {path} HTTP/1.1\r\n", f"Host: {origin.host_header}\r\n", block]
    for pair in strip_hop_by_hop(headers):
        hash(pair)  # the line cache's key: a list pair is refused (TypeError)
        lines.append(_header_line(pair[0], pair[1]))
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("Connection: keep-alive\r\n\r\n")
    return "".join(lines).encode("latin-1") + body


class _Str(str):
    """A str subclass: never taken by build_request's exact-type fast paths."""


_REQ_NAMES = st.one_of(
    st.sampled_from(
        [
            "x-request-id",
            "X-Request-Id",
            "Accept",
            "Host",
            "content-length",
            "Connection",
            "Keep-Alive",
            "Proxy-Foo",
            "X-Hop",
            "User-Agent",
        ]
    ),
    st.text(_TOKEN_CHARS, min_size=1, max_size=8),
    st.text(max_size=4),  # a space, a colon, CR/LF, non-latin-1
    st.sampled_from(["x-request-id", "Accept"]).map(_Str),
)
_REQ_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12),
    st.sampled_from(["close, X-Hop", "a\tb", "caf\xe9", "\x7f", "a\r\nb: c", "\x00", "\u20ac", ""]),
    st.sampled_from(["\x1f", "x\x7f", "\t", "\xff", "ok\n"]),
    st.text(max_size=6),
    st.just("x").map(_Str),
)
_REQ_PAIRS = st.one_of(
    st.tuples(_REQ_NAMES, _REQ_VALUES),
    st.tuples(_REQ_NAMES, _REQ_VALUES).map(list),  # not a tuple: refused as unhashable
)


@settings(max_examples=500, deadline=None)
@given(
    headers=st.lists(_REQ_PAIRS, max_size=5),
    container=st.sampled_from(["list", "tuple", "iterator"]),
    method=st.sampled_from(["POST", "GET", "HEAD", "DELETE", "PUT", "GE\rT"]),
    path=st.sampled_from(["/v1/x", "/", "v1/x", "/a b", "/a\nb", "/caf\xe9"]),
    block=st.sampled_from(["", "Authorization: Bearer k\r\nAccept: text/event-stream\r\n"]),
    body=st.sampled_from([b"", b"{}", b'{"model":"m"}']),
    origin=st.sampled_from(
        [
            Origin("http", "127.0.0.1", 9000),
            Origin("https", "api.example.com", 443),
            Origin("http", "::1", 80),
        ]
    ),
)
@example(  # a name the fast loop knows, then a value it must not take
    headers=[("X-Learnt", "ok"), ("X-Learnt", "\x7f")],
    container="list",
    method="POST",
    path="/v1/x",
    block="",
    body=b"{}",
    origin=Origin("http", "127.0.0.1", 9000),
)
@example(  # a value the check refuses, for a header a later Connection header drops: no error
    headers=[("x-request-id", "x"), ("0", "\x7f"), ("Connection", "0")],
    container="list",
    method="POST",
    path="/v1/x",
    block="",
    body=b"",
    origin=Origin("http", "127.0.0.1", 9000),
)
def test_build_request_writes_what_the_reference_writes(
    headers, container, method, path, block, body, origin
):
    """build_request (its start-of-head cache, its fast loop over known names, its careful way
    for the rest) gives byte for byte the reference's request, or the very error (type, status,
    message) the reference raises; the same on a second call, when the caches know the names."""
    from gwcore.errors import GatewayError
    from gwcore.upstream import build_request

    def outcome(fn):
        given = {"list": list, "tuple": tuple, "iterator": iter}[container](headers)
        try:
            return fn(origin, method, path, given, body, block)
        except GatewayError as exc:
            return ("GatewayError", exc.status, exc.message)
        except TypeError:
            return ("TypeError",)

    expected = outcome(_reference_request)
    assert outcome(build_request) == expected
    assert outcome(build_request) == expected


# ------------------------------------------------------ response framing against the reference


def _reference_framing(version, method, status, headers):
    """(chunked, length, keep_alive) as _on_head decided them before its fast paths, or None for
    an invalid Content-Length."""
    length = te = None
    tokens = b""
    for name, value in headers:
        low = name.lower()
        if low == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and length != int(value)):
                return None
            length = int(value)
        elif low == b"transfer-encoding":
            te = value.lower()
        elif low == b"connection":
            tokens += b"," + value.lower()
    if tokens:
        found = {t.strip() for t in tokens.split(b",")}
        keep_alive = (b"keep-alive" in found) if version == "1.0" else (b"close" not in found)
    else:
        keep_alive = version != "1.0"
    chunked = False
    if method == "HEAD" or status in (204, 304):
        length = 0
    elif te is not None:
        chunked = te.rstrip().endswith(b"chunked")
        if length is not None or not chunked:
            keep_alive = False
        length = None
    elif length is None:
        keep_alive = False
    return chunked, length, keep_alive


_FRAMING_NAMES = st.sampled_from(
    [
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"TRANSFER-ENCODING",
        b"Content-Length",
        b"Connection",
        b"Content-Type",
        b"Transfer-Encodinx",
        b"X-Length-Of-14",
    ]
)
_FRAMING_VALUES = st.sampled_from(
    [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip", b"gzip", b"12", b"0", b"close"]
)


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(["1.1", "1.0"]),
    method=st.sampled_from(["POST", "HEAD"]),
    status=st.sampled_from([200, 204, 304]),
    headers=st.lists(st.tuples(_FRAMING_NAMES, _FRAMING_VALUES), max_size=4),
)
@example(
    version="1.1", method="POST", status=200, headers=[(b"Transfer-Encoding", b"gzip, chunked")]
)
@example(version="1.1", method="POST", status=200, headers=[(b"Connection", b"close")])
def test_on_head_frames_as_the_reference(version, method, status, headers):
    """_on_head's framing (names read only at the lengths of the three it reads, the plain
    ``chunked`` taken without lowering) decides as the reference does."""
    loop = asyncio.new_event_loop()
    try:
        pool = UpstreamPool(header_timeout=None, idle_timeout=None)
        conn = UpstreamConnection(pool, Origin("http", "127.0.0.1", 1), loop)
        conn.connection_made(FakeTransport())
        listener = Listener()
        listener.on_head_failed = lambda exc: listener.errors.append(exc)
        conn._send(b"GET / HTTP/1.1\r\n\r\n", listener, method, await_head=False)
        conn._on_head(status, version, list(headers), b"", 0)
    finally:
        loop.close()
    expected = _reference_framing(version, method, status, headers)
    if expected is None:
        assert listener.head is None and len(listener.errors) == 1
        return
    assert listener.head[2:] == expected[:2]
    assert conn._keep_alive == expected[2]
