"""Property tests of the front door's quick request parser (``quick_request_head`` of the
compiled scanner module and of its pure-Python twin): for any request bytes it either declines
(httptools then parses them) or answers exactly what httptools' callbacks would have said, its
header dict being what the front door's ``on_header`` makes of them."""

from __future__ import annotations

import httptools
from hypothesis import given, settings
from hypothesis import strategies as st


class _Callbacks:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = 0
        self.parser: httptools.HttpRequestParser | None = None
        self.head: tuple | None = None

    def on_headers_complete(self) -> None:
        # What the front door asks then (llhttp forgets the head's flags once the message ends).
        p = self.parser
        self.head = (p.get_method(), p.should_keep_alive(), p.get_http_version())

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete += 1


def on_header_dict(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The header dict the front door's ``on_header`` builds from httptools' ``(name, value)``
    callbacks: latin-1 text, lowercase names, a repeated name's values joined with ", " in the
    order they came (its place in the dict that of its first line)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def assert_headers_as_on_header(quick: tuple, pairs: list[tuple[bytes, bytes]]) -> None:
    """``quick``'s dict (in order), count and bytes are those of the callbacks' ``pairs``."""
    headers, count, size = quick[2], quick[6], quick[7]
    assert type(headers) is dict
    assert list(headers.items()) == list(on_header_dict(pairs).items())
    assert all(type(k) is str and type(v) is str for k, v in headers.items())
    assert count == len(pairs)
    assert size == sum(len(name) + len(value) for name, value in pairs)


_PLAIN_LINES = [
    b"POST /v1/chat/completions HTTP/1.1",
    b"GET /v1/models HTTP/1.1",
    b"GET /health?x=1&y=%20z HTTP/1.1",
    b"HEAD / HTTP/1.1",
    b"DELETE /admin/keys/k1 HTTP/1.1",
    b"OPTIONS /v1/chat/completions HTTP/1.1",
    b"GET /a;b,c@d:e!$'()*+=~ HTTP/1.1",
]
_ODD_LINES = [
    b"POST /v1/chat/completions HTTP/1.0",
    b"GET http://example.com/v1/models HTTP/1.1",
    b"GET * HTTP/1.1",
    b"CONNECT example.com:443 HTTP/1.1",
    b"get / HTTP/1.1",
    b"GET /a#frag HTTP/1.1",
    b"GET /a\\b HTTP/1.1",
    b"GET /caf\xe9 HTTP/1.1",
    b"GET /a b HTTP/1.1",
    b"GET  / HTTP/1.1",
    b"GET / HTTP/1.1 ",
    b"GET / HTTP/2.0",
    b"\r\nGET / HTTP/1.1",
    b"BREW / HTTP/1.1",
    b"GET /\x7f HTTP/1.1",
]
# Plain requests most of the time (so that the quick parser often answers), odd ones otherwise.
_REQUEST_LINES = st.sampled_from(_PLAIN_LINES * 4 + _ODD_LINES)
_PLAIN = st.tuples(
    st.sampled_from([b"Host", b"Content-Type", b"user-agent", b"x-stainless-os", b"Accept", b"a"]),
    st.sampled_from([b":", b": ", b":\t"]),
    st.sampled_from([b"", b"127.0.0.1", b"application/json", b"a\tb", b"  padded  ", b"\x80\xff"]),
)
# A name that comes back, in one case or another: its values are joined. Among the values, the
# empty one and one-character ones (strings CPython shares) and the same value twice.
_REPEATED = st.tuples(
    st.sampled_from([b"X-Twice", b"x-twice", b"X-TWICE", b"HOST", b"host", b"A"]),
    st.sampled_from([b":", b": "]),
    st.sampled_from([b"", b"1", b"\xe9", b"v", b"v, w", b"\x80 x\t"]),
)
_SPECIAL = st.sampled_from(
    [
        (b"Connection", b": ", b"keep-alive"),
        (b"connection", b": ", b"close"),
        (b"Connection", b": ", b"Keep-Alive"),
        (b"Connection", b": ", b"upgrade"),
        (b"Connection", b": ", b"keep-alive, te"),
        (b"Content-Length", b": ", b"0"),
        (b"content-length", b":", b"007"),
        (b"Transfer-Encoding", b": ", b"chunked"),
        (b"Expect", b": ", b"100-continue"),
        (b"Upgrade", b": ", b"websocket"),
        (b"X-Request-Id", b": ", b"abc-123"),
    ]
)
_ODD_VALUES = st.sampled_from(
    [
        b"1 2",
        b"5 ",
        b"-1",
        b"99999999999999999999",
        b"nul\x00",
        b"del\x7f",
        b"bare\rcr",
        b"bare\rXYZ: cr",
        b"bare\nlf",
        b"\x01",
        b"12",
    ]
)
_ODD = st.tuples(
    st.sampled_from(
        [b"", b"bad name", b"bad@name", b" folded", b"\tx", b"caf\xe9", b"Content-Length"]
    ),
    st.sampled_from([b":", b": ", b" :", b"::", b""]),
    _ODD_VALUES,
)
_ODD_VALUE = st.tuples(_PLAIN.map(lambda h: h[0]), st.just(b": "), _ODD_VALUES)  # a plain name
# Plain lines mostly; a special, an odd line, an odd value, or a repeated name otherwise.
_KINDS = [_PLAIN] * 8 + [_SPECIAL, _ODD, _ODD_VALUE, _REPEATED, _REPEATED]
_HEADERS = st.lists(st.integers(0, len(_KINDS) - 1).flatmap(_KINDS.__getitem__), max_size=6)


@settings(max_examples=600)
@given(
    line=_REQUEST_LINES,
    headers=_HEADERS,
    body=st.sampled_from([b"", b"{}", b'{"model":"m"}', b"x" * 40]),
    tail=st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n"]),
)
def test_quick_request_head_answers_as_httptools_or_not_at_all(sse, line, headers, body, tail):
    has_length = any(n.lower() == b"content-length" for n, _, _ in headers)
    if body and not has_length:
        headers = [*headers, (b"Content-Length", b": ", b"%d" % len(body))]
    head = line + b"\r\n" + b"".join(n + sep + v + b"\r\n" for n, sep, v in headers) + b"\r\n"
    data = head + body + tail
    quick = sse.quick_request_head(data)
    if quick is None:
        return
    assert len(quick) == 8
    method, url, _, length, end, keep_alive, _, _ = quick
    if end + length > len(data):
        return  # the body is not all there: the front door leaves the bytes to httptools
    callbacks = _Callbacks()
    parser = callbacks.parser = httptools.HttpRequestParser(callbacks)
    # An error here: the quick parser took what llhttp refuses.
    parser.feed_data(data[: end + length])
    assert callbacks.complete == 1
    assert url == callbacks.url
    assert_headers_as_on_header(quick, callbacks.headers)
    assert callbacks.head == (method, keep_alive, "1.1")
    assert data[end : end + length] == callbacks.body


@settings(max_examples=400)
@given(
    line=_REQUEST_LINES,
    headers=_HEADERS,
    body=st.sampled_from([b"", b"{}", b"x" * 40]),
)
def test_quick_request_head_compiled_answers_as_the_twin(sse_pair, line, headers, body):
    """The same answer (None included: a head one declines the other declines), dict order
    included."""
    compiled, twin = sse_pair
    head = line + b"\r\n" + b"".join(n + sep + v + b"\r\n" for n, sep, v in headers) + b"\r\n"
    ours, spec = compiled.quick_request_head(head + body), twin.quick_request_head(head + body)
    assert ours == spec
    if spec is not None:
        assert list(ours[2].items()) == list(spec[2].items())


_LENGTHS = st.sampled_from(
    [b"0", b"7", b"91", b"007", b"1234", b"999999999999999", b"1234567890123456", b"", b"9 ", b"x"]
)


@settings(max_examples=300)
@given(
    heads=st.lists(
        st.tuples(
            _REQUEST_LINES,
            _HEADERS,
            st.booleans(),  # the connection's last head's header lines again
            st.booleans(),  # with another value of one header not Content-Length
            st.one_of(st.none(), _LENGTHS),  # with this Content-Length value instead of its own
        ),
        min_size=1,
        max_size=10,
    )
)
def test_quick_request_head_with_a_memo_answers_as_without(sse_pair, heads):
    """One connection's heads in a row, a memo kept across them: each answer is the one the
    compiled parser and its twin give without one, whether the header lines repeat the last
    head's (but for the Content-Length digits: another count of digits, leading zeros, too many,
    none, a blank or a letter after them; or but for one other value) or not; each a dict of its
    own (a change to one answer shows in no later one)."""
    compiled, twin = sse_pair
    memo = compiled.RequestHeadMemo()
    last: list = [(b"Content-Length", b": ", b"12"), (b"user-agent", b": ", b"sdk/1")]
    for line, headers, again, touch, length in heads:
        if again:
            headers = list(last)
            others = [k for k, h in enumerate(headers) if h[0].lower() != b"content-length"]
            if touch and others:
                name, sep, value = headers[others[-1]]
                changed = value.swapcase() if value.swapcase() != value else value + b"1"
                headers[others[-1]] = (name, sep, changed)
        if length is not None:
            at = [k for k, h in enumerate(headers) if h[0].lower() == b"content-length"]
            if at:
                headers[at[0]] = (headers[at[0]][0], headers[at[0]][1], length)
            else:
                headers.append((b"Content-Length", b": ", length))
        last = headers
        head = line + b"\r\n" + b"".join(n + sep + v + b"\r\n" for n, sep, v in headers)
        head += b"\r\n"
        ours = compiled.quick_request_head(head, memo)
        assert ours == compiled.quick_request_head(head) == twin.quick_request_head(head)
        assert twin.quick_request_head(head, twin.RequestHeadMemo()) == ours
        if ours is not None:
            assert list(ours[2].items()) == list(twin.quick_request_head(head)[2].items())
            ours[2]["x-changed-by-a-handler"] = "1"  # (never seen by a later answer)


def test_quick_request_head_memo_answers_an_sdk_s_heads_from_its_copy():
    """A kept-alive SDK client's third head on (the first is only counted, the second kept)
    is answered from the memo's copy, its names and values the very objects of the kept head's
    (the gateway compares them by identity), its length and counts its own; three heads in a
    row that differ make the memo keep nothing more, and its answers stay right."""
    from gwcore import _sse
    from gwcore.benchmark.loadgen import SDK_HEADERS, chat_body, http_request

    memo = _sse.RequestHeadMemo()
    bodies = [chat_body("m" * k, True) for k in (1, 5, 120, 2)]
    answers = [
        _sse.quick_request_head(http_request("/v1/chat/completions", b, SDK_HEADERS), memo)
        for b in bodies
    ]
    for body, got in zip(bodies, answers, strict=True):
        want = _sse.quick_request_head(http_request("/v1/chat/completions", body, SDK_HEADERS))
        assert got == want and got[3] == len(body) and got[2]["content-length"] == str(len(body))
    third, fourth = answers[2][2], answers[3][2]
    assert third is not fourth
    same = [k for k in third if k != "content-length"]
    assert all(third[k] is fourth[k] for k in same)
    base = b"POST /v1/chat/completions HTTP/1.1\r\nuser-agent: sdk/1\r\nContent-Length: "
    for _ in range(2):  # (kept from the second)
        assert _sse.quick_request_head(base + b"12\r\nx-a: 1\r\n\r\n", memo) is not None
    for digits in (b"", b"1234567890123456", b"9 ", b" 9", b"9x", b"+9", b"0", b"99"):
        data = base + digits + b"\r\nx-a: 1\r\n\r\n"
        assert _sse.quick_request_head(data, memo) == _sse.quick_request_head(data), digits
    assert _sse.quick_request_head(base + b"\r\nx-a: 1\r\n\r\n", memo) is None
    for k in range(6):  # a trace id per request: the memo stops keeping heads
        headers = {**SDK_HEADERS, "traceparent": f"00-{k:032x}-{k:016x}-01"}
        data = http_request("/v1/chat/completions", bodies[0], headers)
        assert _sse.quick_request_head(data, memo) == _sse.quick_request_head(data)


def test_quick_request_head_takes_exactly_the_common_methods(sse_pair):
    """The compiled parser's methods are the twin's ``_QUICK_METHODS``, no more, no fewer (and
    each answer's method is an equal bytes object)."""
    from gwcore._sse_py import _QUICK_METHODS

    compiled, twin = sse_pair
    others = [b"BREW", b"get", b"Post", b"POSTS", b"GE", b"CONNECT", b"TRACE", b"PROPFIND"]
    for method in [*_QUICK_METHODS, *others]:
        head = method + b" /x HTTP/1.1\r\nHost: h\r\n\r\n"
        got = compiled.quick_request_head(head)
        assert got == twin.quick_request_head(head)
        assert (got is not None) == (method in _QUICK_METHODS)
        assert got is None or (type(got[0]) is bytes and got[0] == method)


def test_quick_request_head_takes_what_the_sdk_sends(sse):
    """The OpenAI SDK's request (httpx) is taken by the quick parser, not left to httptools."""
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}'
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\nAccept: application/json\r\n"
        b"Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.54.0\r\n"
        b"X-Stainless-Lang: python\r\nAuthorization: Bearer sk-test\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    method, url, headers, length, end, keep_alive, count, size = sse.quick_request_head(data)
    assert (method, url, length, keep_alive) == (b"POST", b"/v1/chat/completions", len(body), True)
    assert data[end:] == body
    assert headers["authorization"] == "Bearer sk-test" and len(headers) == 9
    assert headers["user-agent"] == "OpenAI/Python 1.54.0"
    assert count == 9
    assert size == sum(len(line) - 2 for line in data[:end].split(b"\r\n")[1:-2])


def assert_quick_head_of(sse, pairs: list[tuple[bytes, bytes]]) -> None:
    """A GET head of ``pairs`` is taken, and its dict, count and bytes are the callbacks'."""
    data = (
        b"GET / HTTP/1.1\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in pairs)
        + b"\r\n"
    )
    quick = sse.quick_request_head(data)
    assert quick is not None
    assert_headers_as_on_header(quick, pairs)


def test_quick_request_head_names_many_long_and_evicted(sse):
    """Hundreds of distinct names (more than any cache of names holds), in several cases, some
    longer than 32 bytes, again and again: each request still gets its own names, lowercased."""
    for r in range(3):
        for k in range(0, 600, 30):
            pairs = []
            for j in range(k, k + 30):
                name = b"X-Header-%d" % j if j % 3 else b"x-HEADER-%d" % j
                if j % 7 == 0:
                    name = b"X-A-Rather-Long-Header-Name-Number-%d" % j  # over 32 bytes
                pairs.append((name, b"v%d-%d" % (r, j)))
            pairs.append((pairs[0][0].upper(), b"again"))  # the first name again, another case
            assert_quick_head_of(sse, pairs)


def test_quick_request_head_values_many_empty_long_and_evicted(sse):
    """Thousands of distinct values (more than any cache of values holds), empty ones, 32 and 33
    bytes long, again and again, as repeated names: each request gets its own values; a short
    value the request before had too is (compiled) that same string, its hash made."""
    previous = None
    for _ in range(3):
        for k in range(0, 900, 45):
            pairs = []
            for j in range(k, k + 45):
                value = b"v%d" % (j % 300)
                if j % 5 == 0:
                    value = b""
                elif j % 7 == 0:
                    value = (b"w%d" % j).ljust(32 + j % 2, b"x")  # 32 (cached) or 33 bytes
                pairs.append((b"X-V-%d" % (j % 40), value))
            assert_quick_head_of(sse, pairs)
    sdk = b"GET / HTTP/1.1\r\nUser-Agent: AsyncOpenAI/Python 3.57.0\r\nAccept: */*\r\n\r\n"
    for _ in range(2):
        headers = sse.quick_request_head(sdk)[2]
        if previous is not None and sse.__name__ == "gwcore._sse":
            assert headers["user-agent"] is previous["user-agent"]
            assert headers["accept"] is previous["accept"]
        previous = headers
    assert previous == {"user-agent": "AsyncOpenAI/Python 3.57.0", "accept": "*/*"}


def test_quick_heads_refuse_a_control_byte_anywhere_in_a_value(sse):
    """Header values are checked 16 bytes at a time where compiled: a control byte (but HTAB) or
    DEL at any position of a value of any length refuses the head, request or response; HTAB,
    obs-text and the rest pass."""
    bad = [c for c in range(32) if c != 9] + [127]
    for n in range(0, 40):
        # letters, HTAB and obs-text inside; a letter first and last
        good = bytes(
            (9 if k % 2 else 0xE9) if k % 5 == 2 and 0 < k < n - 1 else 65 + k % 26
            for k in range(n)
        )
        request = b"GET / HTTP/1.1\r\nX-V: " + good + b"\r\nHost: h\r\n\r\n"
        quick = sse.quick_request_head(request)
        assert quick is not None and quick[2]["x-v"] == good.decode("latin-1")
        response = b"HTTP/1.1 200 OK\r\nX-V: " + good + b"\r\nServer: s\r\n\r\n"
        head = sse.quick_response_head(response, len(response))
        assert head is not None and head[2][0][1] == good
        for at in range(n):
            for c in (bad[at % len(bad)], 127, 0, 10, 13):
                value = good[:at] + bytes([c]) + good[at + 1 :]
                if c == 13 and value[at + 1 : at + 2] == b"\n":
                    continue  # (a line end: the value stops there)
                request = b"GET / HTTP/1.1\r\nX-V: " + value + b"\r\nHost: h\r\n\r\n"
                assert sse.quick_request_head(request) is None, (n, at, c)
                response = b"HTTP/1.1 200 OK\r\nX-V: " + value + b"\r\nServer: s\r\n\r\n"
                assert sse.quick_response_head(response, len(response)) is None, (n, at, c)
