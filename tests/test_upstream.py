"""The upstream pool against the mock upstream over real sockets on 127.0.0.1, on both loops."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess

import httptools
import orjson
import pytest

from gwcore.errors import GatewayError
from gwcore.testing import MockUpstream, Scenario, recorded_fixture, run
from gwcore.testing.mock_upstream import chat_stream_events, split_sse_events
from gwcore.upstream import (
    Origin,
    UpstreamPool,
    build_request,
    parse_base_url,
    strip_hop_by_hop,
)

STREAM_BODY = b'{"model":"m","stream":true}'
CHAT = "/v1/chat/completions"
JSON = [("Content-Type", "application/json")]


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request):
    return lambda coro: run(coro, use_uvloop=request.param == "uvloop")


class _Dechunk:
    def __init__(self) -> None:
        self.complete = False

    def on_message_complete(self) -> None:
        self.complete = True


class Recorder:
    """A relay-like listener: keeps every bytes object, finds the chunked end the way the relay's
    scanner will (here with httptools), then releases (or not)."""

    def __init__(self, release: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self.release = release
        self.conn = None
        self.head = None
        self.chunks: list[bytes] = []
        self.head_ends = 0
        self.error: GatewayError | None = None
        self.done = loop.create_future()
        self.first_data = loop.create_future()
        self._state = None
        self._parser = None

    def on_head(self, conn, status, headers, chunked, content_length):
        self.conn = conn
        self.head = (status, headers, chunked, content_length)
        if chunked:
            self._state = _Dechunk()
            self._parser = httptools.HttpResponseParser(self._state)
            self._parser.feed_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")

    def on_data(self, data):
        assert type(data) is bytes
        self.chunks.append(data)
        if not self.first_data.done():
            self.first_data.set_result(None)
        if self._parser is not None:
            self._parser.feed_data(data)
            if self._state.complete:
                self._finish("complete")

    def on_head_end(self):
        self.head_ends += 1

    def on_eof(self):
        self._finish("eof")

    def on_error(self, exc):
        self.error = exc
        if not self.done.done():
            self.done.set_result("error")

    def _finish(self, how):
        if self.release:
            self.conn.release()
        if not self.done.done():
            self.done.set_result(how)

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.head[1]:
            if k.lower() == name:
                return v
        return None


def framed(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def origin_of(mock: MockUpstream) -> Origin:
    return Origin.from_url(mock.base_url)


def stats(pool: UpstreamPool, mock: MockUpstream) -> dict:
    return pool.stats().get(str(origin_of(mock)), {"open": 0, "idle": 0, "in_use": 0})


# ------------------------------------------------------------------------------------ pure parts


def test_parse_base_url_and_origin():
    origin, path = parse_base_url("http://127.0.0.1:9000/v1/")
    assert (origin, path) == (Origin("http", "127.0.0.1", 9000), "/v1")
    assert origin.host_header == "127.0.0.1:9000"
    origin, path = parse_base_url("https://api.openai.com/v1")
    assert origin.port == 443 and origin.tls and origin.host_header == "api.openai.com"
    assert parse_base_url("http://[::1]:80")[0].host_header == "[::1]"
    for bad in ("ftp://x/v1", "http:///v1", "http://u:p@h/v1", "http://h/v1?x=1"):
        with pytest.raises(ValueError):
            parse_base_url(bad)


def test_build_request_owns_framing_and_strips_hop_by_hop():
    origin = Origin("http", "127.0.0.1", 9000)
    headers = [
        ("Authorization", "Bearer k"),
        ("Connection", "close, X-Secret-Hop"),
        ("X-Secret-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Connection", "keep-alive"),
        ("Host", "evil"),
        ("Content-Length", "999"),
        ("Accept", "text/event-stream"),
    ]
    data = build_request(origin, "POST", "/v1/chat/completions", headers, b"{}")
    assert data == (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9000\r\n"
        b"Authorization: Bearer k\r\nAccept: text/event-stream\r\n"
        b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
    )
    assert b"Content-Length" not in build_request(origin, "GET", "/v1/models", [], b"")
    bad_headers = [
        ("X", "a\r\nInjected: 1"),
        ("X", "a\nInjected: 1"),
        ("X", "a\rb"),
        ("X", "a\0b"),
        ("Bad Name", "v"),
        ("X:y", "v"),
        ("", "v"),
        ("X\r\nY", "v"),
    ]
    for bad in bad_headers:
        with pytest.raises(GatewayError) as info:
            build_request(origin, "GET", "/", [bad], b"")
        assert info.value.status == 400


def test_strip_hop_by_hop_on_response_heads():
    head = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Hop"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Hop", b"1"),
        (b"Proxy-Authenticate", b"x"),
        (b"X-Request-Id", b"abc"),
    ]
    assert strip_hop_by_hop(head) == [
        (b"Content-Type", b"text/event-stream"),
        (b"X-Request-Id", b"abc"),
    ]
    assert strip_hop_by_hop([]) == []


# ---------------------------------------------------------------------------------- raw streaming


def test_raw_chunked_stream_is_passed_through_byte_exact(arun):
    async def main():
        async with MockUpstream(events=8) as mock:
            pool = UpstreamPool()
            # no scenario body: the built-in answer; pacing makes one read per event
            mock.scenarios.append(Scenario(pace_ms=5, head_separate=True))
            rec = Recorder()
            conn = await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            assert rec.conn is conn
            assert await asyncio.wait_for(rec.done, 2) == "complete"
            status, _, chunked, length = rec.head
            assert (status, chunked, length) == (200, True, None)
            assert rec.header(b"content-type") == b"text/event-stream"
            events = chat_stream_events("m", 8, False, 11)
            assert rec.body == framed(events)
            assert len(rec.chunks) >= 4  # arrived in several reads, each handed over as is
            assert stats(pool, mock) == {**stats(pool, mock), "open": 1, "idle": 1, "in_use": 0}
            req = mock.last_request
            assert req.header("host") == f"127.0.0.1:{mock.port}"
            assert req.header("connection") == "keep-alive"
            assert req.header("content-length") == str(len(STREAM_BODY))
            await pool.aclose()

    arun(main())


def test_first_body_bytes_in_the_head_read_and_split_heads(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            # head and first event in one write: on_data gets exactly the bytes after the head
            body = b"data: 1\n\ndata: 2\n\n"
            mock.scenarios.append(Scenario(body=body, pace_ms=20))
            rec = Recorder()
            await pool.open_raw(o, "POST", CHAT, JSON, b"{}", rec)
            await asyncio.wait_for(rec.done, 2)
            assert rec.chunks[0] == b"9\r\ndata: 1\n\n\r\n"
            assert rec.body == framed([b"data: 1\n\n", b"data: 2\n\n"])

            # a head split everywhere, even inside CRLFCRLF, after an interim 103
            raw = (
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
            )
            cuts = [5, 40, 60, raw.index(b"\r\n\r\nhello") + 1, raw.index(b"\r\n\r\nhello") + 3]
            mock.scenarios.append(Scenario(raw=raw, split_at=cuts, pace_ms=5))
            rec = Recorder()
            await pool.open_raw(o, "GET", "/v1/x", [], b"", rec)
            assert await asyncio.wait_for(rec.done, 2) == "eof"
            assert rec.head[0] == 200 and rec.head[3] == 5 and rec.header(b"x-a") == b"b"
            assert rec.body == b"hello"
            await pool.aclose()

    arun(main())


def test_content_length_body_counted_then_pooled(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            body = b"x" * 100_000
            mock.scenarios.append(
                Scenario(
                    body=body,
                    content_type="application/octet-stream",
                    framing="length",
                    split_at=[1, 30_000, 60_000],
                    pace_ms=2,
                )
            )
            rec = Recorder()
            conn = await pool.open_raw(origin_of(mock), "GET", "/v1/blob", [], b"", rec)
            assert await asyncio.wait_for(rec.done, 2) == "eof"
            assert rec.head[2:] == (False, 100_000)
            assert rec.body == body
            assert conn.ended and not conn.closed  # released into the pool
            assert stats(pool, mock)["idle"] == 1
            await pool.aclose()

    arun(main())


def test_keep_alive_reuses_one_connection(arun):
    async def main():
        async with MockUpstream(events=5) as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            for _ in range(3):
                rec = Recorder()
                await pool.open_raw(o, "POST", CHAT, JSON, STREAM_BODY, rec)
                assert await asyncio.wait_for(rec.done, 2) == "complete"
            resp = await pool.request(o, "GET", "/v1/models")
            assert resp.status == 200
            assert mock.connections_opened == 1

            # a late call on an ended exchange never touches the connection's next exchange
            first = Recorder()
            ex1 = await pool.open_raw(o, "POST", CHAT, JSON, STREAM_BODY, first)
            await asyncio.wait_for(first.done, 2)
            mock.scenarios.append(Scenario(pace_ms=5))
            second = Recorder()
            ex2 = await pool.open_raw(o, "POST", CHAT, JSON, STREAM_BODY, second)
            assert ex1.ended and ex2.reused and not ex2.ended
            ex1.pause_reading()
            ex1.close()
            assert await asyncio.wait_for(second.done, 2) == "complete"
            assert not ex2.closed
            assert {r.connection for r in mock.requests} == {1}
            assert stats(pool, mock)["open"] == 1
            await pool.aclose()

    arun(main())


@pytest.mark.parametrize("socket_takes", ["all", "part", "none"])
def test_the_request_leaves_through_the_socket_at_once(arun, monkeypatch, socket_takes):
    """On uvloop's plain transport the request is sent through the socket itself (uvloop would
    write it at the end of the loop's turn); what the socket does not take, the transport writes
    after it, in order: the upstream reads the very request either way. The stdlib loop's
    transport sends at once itself: no direct send there."""
    import gwcore.upstream as upstream

    sends = []
    real = upstream._send_direct

    def send(fd, data):
        sends.append(len(data))
        if socket_takes == "none":
            return -1
        if socket_takes == "part":
            return real(fd, data[:7])
        return real(fd, data)

    monkeypatch.setattr(upstream, "_send_direct", send)
    body = b'{"model":"m","stream":true,"pad":"' + b"x" * 3000 + b'"}'

    async def main():
        async with MockUpstream(events=5) as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            for _ in range(2):  # a fresh connection, then the pooled one
                rec = Recorder()
                await pool.open_raw(o, "POST", CHAT, JSON, body, rec)
                assert await asyncio.wait_for(rec.done, 2) == "complete"
                assert mock.last_request.body == body
                assert mock.last_request.path == CHAT
            assert mock.connections_opened == 1
            uv = type(asyncio.get_running_loop()).__module__.startswith("uvloop")
            await pool.aclose()
            return uv

    uv = arun(main())
    expected = len(build_request(Origin("http", "127.0.0.1", 1), "POST", CHAT, JSON, body))
    # (the Host line differs in length from the mock's: compare the sizes loosely)
    assert len(sends) == (2 if uv else 0)
    assert all(abs(n - expected) < 16 for n in sends)


def test_bodiless_responses_end_at_the_head(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            mock.scenarios.append(Scenario(status=204, body=b"", framing="length"))
            rec = Recorder()
            await pool.open_raw(o, "DELETE", "/v1/x", [], b"", rec)
            assert await asyncio.wait_for(rec.done, 2) == "eof"
            assert rec.head[3] == 0 and rec.body == b""
            mock.scenarios.append(Scenario(body=b"abc", framing="length"))
            rec = Recorder()
            await pool.open_raw(o, "HEAD", "/v1/x", [], b"", rec)
            assert await asyncio.wait_for(rec.done, 2) == "eof"
            assert rec.header(b"content-length") == b"3" and rec.head[3] == 0
            await pool.aclose()

    arun(main())


def test_close_delimited_body_ends_with_on_eof(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            mock.scenarios.append(Scenario(body=b"data: a\n\ndata: b\n\n", framing="close"))
            rec = Recorder()
            await pool.open_raw(o, "POST", CHAT, JSON, b"{}", rec)
            assert await asyncio.wait_for(rec.done, 2) == "eof"
            assert rec.head[2:] == (False, None)
            assert rec.body == b"data: a\n\ndata: b\n\n"
            mock.scenarios.append(Scenario(body=b"whole", framing="close"))
            resp = await pool.request(o, "GET", "/v1/x")
            assert resp.body == b"whole"
            assert stats(pool, mock)["open"] == 0  # never pooled
            await pool.aclose()

    arun(main())


# ------------------------------------------------------------------------------------- buffered


def test_buffered_request_dechunks_and_reads_errors(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            resp = await pool.request(o, "POST", CHAT, JSON, b'{"model":"mock-model"}')
            assert resp.status == 200 and resp.header("content-type") == "application/json"
            assert orjson.loads(resp.body)["usage"]["total_tokens"] == 11 + 30

            body = b"data: x\n\n" * 50
            mock.scenarios.append(Scenario(body=body, split_at=[3, 100, 101, 300]))
            resp = await pool.request(o, "POST", CHAT, JSON, b"{}")
            assert resp.body == body

            mock.scenarios.append(Scenario.error(429, "slow down", "rate_limit_error"))
            resp = await pool.request(o, "POST", CHAT, JSON, b"{}")
            assert resp.status == 429
            assert orjson.loads(resp.body)["error"]["message"] == "slow down"
            assert mock.connections_opened == 1
            await pool.aclose()

    arun(main())


def test_buffered_replay_of_a_recorded_stream(arun):
    path = recorded_fixture(__file__, "openai", "chat_completion_stream.txt")
    if path is None:
        pytest.skip("recorded fixtures are not in this checkout")
    body = path.read_bytes()

    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            mock.scenarios.append(Scenario(body=body, split_at=range(7, len(body), 97)))
            resp = await pool.request(origin_of(mock), "POST", CHAT, JSON, b"{}")
            assert resp.body == body
            mock.scenarios.append(Scenario(body=body))  # one write per event
            rec = Recorder()
            await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, b"{}", rec)
            await asyncio.wait_for(rec.done, 2)
            assert rec.body == framed(split_sse_events(body))
            await pool.aclose()

    arun(main())


# --------------------------------------------------------------------------------------- retries


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            assert (await pool.request(o, "GET", "/v1/models")).status == 200
            # the upstream closes the pooled connection as the next request arrives
            mock.scenarios.append(Scenario(reset=True))
            rec = Recorder()
            conn = await pool.open_raw(o, "POST", CHAT, JSON, STREAM_BODY, rec)
            assert await asyncio.wait_for(rec.done, 2) == "complete"
            assert conn.reused is False and conn.ended  # ran on the fresh connection
            assert len(mock.requests) == 3
            assert [r.connection for r in mock.requests] == [1, 1, 2]
            assert stats(pool, mock)["open"] == 1
            await pool.aclose()

    arun(main())


def test_no_retry_on_a_fresh_connection_or_after_a_response_byte(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            o = origin_of(mock)
            mock.scenarios.append(Scenario(reset=True))  # a fresh connection's failure
            with pytest.raises(GatewayError) as info:
                await pool.request(o, "POST", CHAT, JSON, b"{}")
            assert (info.value.status, info.value.code) == (502, "upstream_closed")
            assert len(mock.requests) == 1

            assert (await pool.request(o, "GET", "/v1/models")).status == 200
            mock.scenarios.append(Scenario(raw=b"HTTP/1.1 200"))  # a byte arrived, then close
            with pytest.raises(GatewayError) as info:
                await pool.request(o, "POST", CHAT, JSON, b"{}")
            assert (info.value.status, info.value.code) == (502, "upstream_closed")
            assert len(mock.requests) == 3  # not retried
            assert stats(pool, mock)["open"] == 0
            await pool.aclose()

    arun(main())


# -------------------------------------------------------------------------------- failures, timers


def test_connect_refused_is_502_unreachable(arun):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now

    async def main():
        pool = UpstreamPool()
        with pytest.raises(GatewayError) as info:
            await pool.request(Origin("http", "127.0.0.1", port), "GET", "/v1/models")
        assert (info.value.status, info.value.code) == (502, "upstream_unreachable")
        assert info.value.type == "upstream_error"
        assert pool.stats()[f"http://127.0.0.1:{port}"]["open"] == 0

    arun(main())


def test_connect_timeout_is_504(arun):
    # a listener whose accept queue is full drops SYNs: the connect hangs
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)

    async def main():
        pool = UpstreamPool(connect_timeout=0.2)
        with pytest.raises(GatewayError) as info:
            await pool.request(Origin("http", "127.0.0.1", port), "GET", "/")
        assert (info.value.status, info.value.code) == (504, "upstream_timeout")

    try:
        arun(main())
    finally:
        filler.close()
        server.close()


def test_header_timeout_is_504_and_closes(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool(header_timeout=0.15)
            mock.scenarios.append(Scenario(hang=True))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(GatewayError) as info:
                await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, b"{}", Recorder())
            assert (info.value.status, info.value.code) == (504, "upstream_timeout")
            assert 0.14 <= loop.time() - t0 < 1.0
            await mock.wait_closed(1)
            assert stats(pool, mock)["open"] == 0

    arun(main())


def test_idle_timeout_mid_body_reports_504(arun):
    async def main():
        async with MockUpstream(events=10) as mock:
            pool = UpstreamPool(idle_timeout=0.2)
            mock.scenarios.append(Scenario(pace_ms=1, stall_at=300))
            rec = Recorder()
            loop = asyncio.get_running_loop()
            await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            await rec.first_data
            t0 = loop.time()
            assert await asyncio.wait_for(rec.done, 2) == "error"
            assert (rec.error.status, rec.error.code) == (504, "upstream_timeout")
            assert 0.15 <= loop.time() - t0 < 0.6
            await mock.wait_closed(1)
            assert stats(pool, mock)["open"] == 0

    arun(main())


def test_upstream_drop_mid_body_reports_502(arun):
    async def main():
        async with MockUpstream(events=10) as mock:
            pool = UpstreamPool()
            mock.scenarios.append(Scenario(drop_at=250))  # mid-chunk, mid-event
            rec = Recorder()
            await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            assert await asyncio.wait_for(rec.done, 2) == "error"
            assert (rec.error.status, rec.error.code) == (502, "upstream_closed")
            assert rec.error.message == "upstream closed the connection mid-response"
            assert len(rec.body) == 250  # every byte before the drop was handed over
            # a Content-Length body cut short is an error too
            mock.scenarios.append(Scenario(body=b"y" * 1000, framing="length", drop_at=10))
            rec = Recorder()
            await pool.open_raw(origin_of(mock), "GET", "/v1/x", [], b"", rec)
            assert await asyncio.wait_for(rec.done, 2) == "error"
            assert rec.error.status == 502
            assert stats(pool, mock)["open"] == 0

    arun(main())


def test_invalid_response_is_502_bad_response(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool()
            mock.scenarios.append(Scenario(raw=b"SSH-2.0-OpenSSH\r\n\r\n"))
            with pytest.raises(GatewayError) as info:
                await pool.request(origin_of(mock), "GET", "/")
            assert (info.value.status, info.value.code) == (502, "upstream_bad_response")

    arun(main())


def test_close_drops_the_upstream_connection_at_once(arun):
    async def main():
        async with MockUpstream(events=40, pace_ms=20) as mock:
            pool = UpstreamPool()
            rec = Recorder(release=False)
            conn = await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            await rec.first_data
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            conn.close()  # the client went away
            closed_at = await mock.wait_closed(1, timeout=1)
            assert closed_at - t0 < 0.05
            assert conn.closed and stats(pool, mock)["open"] == 0
            conn.release()  # a no-op now: never back to the pool
            assert stats(pool, mock)["idle"] == 0
            assert not rec.done.done()  # the listener hears nothing after close()

    arun(main())


def test_pause_and_resume_reading(arun):
    async def main():
        async with MockUpstream(events=20, pace_ms=5) as mock:
            pool = UpstreamPool(idle_timeout=0.1)  # a pause is not upstream idleness
            rec = Recorder()
            conn = await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            await rec.first_data
            conn.pause_reading()
            seen = len(rec.chunks)
            await asyncio.sleep(0.35)  # the mock writes everything meanwhile
            assert len(rec.chunks) == seen and not rec.done.done()
            conn.resume_reading()
            assert await asyncio.wait_for(rec.done, 2) == "complete"
            assert rec.body == framed(chat_stream_events("m", 20, False, 11))
            await pool.aclose()

    arun(main())


# ------------------------------------------------------------------------------------------ pool


def test_idle_connections_expire_and_leave_when_closed(arun):
    async def main():
        async with MockUpstream() as mock:
            pool = UpstreamPool(keepalive_idle=0.1)
            o = origin_of(mock)
            await pool.request(o, "GET", "/v1/models")
            assert stats(pool, mock)["idle"] == 1
            await mock.wait_closed(1, timeout=1)  # the pool closed it after keepalive_idle
            assert stats(pool, mock)["open"] == 0

            pool = UpstreamPool()
            await pool.request(o, "GET", "/v1/models")
            assert mock.close_idle_connections() == 1  # the upstream closes it while pooled
            await mock.wait_closed(2)
            for _ in range(50):
                if stats(pool, mock)["open"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert stats(pool, mock) == {**stats(pool, mock), "open": 0, "idle": 0}
            assert (await pool.request(o, "GET", "/v1/models")).status == 200
            assert mock.connections_opened == 3
            await pool.aclose()

    arun(main())


def test_max_per_origin_bounds_connections_and_waits(arun):
    async def main():
        async with MockUpstream(events=6) as mock:
            pool = UpstreamPool(max_per_origin=1, connect_timeout=0.3)
            o = origin_of(mock)
            mock.scenarios.append(Scenario(stall_at=50))
            first = Recorder(release=False)
            conn = await pool.open_raw(o, "POST", CHAT, JSON, STREAM_BODY, first)
            with pytest.raises(GatewayError) as info:  # waits connect_timeout, then 504
                await pool.request(o, "GET", "/v1/models")
            assert (info.value.status, info.value.code) == (504, "upstream_timeout")

            waiting = asyncio.ensure_future(pool.request(o, "GET", "/v1/models"))
            await asyncio.sleep(0.05)
            assert stats(pool, mock)["waiting"] == 1 and mock.connections_opened == 1
            conn.close()  # frees the slot
            assert (await asyncio.wait_for(waiting, 1)).status == 200
            assert mock.connections_opened == 2 and stats(pool, mock)["open"] == 1
            await pool.aclose()

    arun(main())


def test_https_origin_with_a_trusted_certificate(arun, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))

    async def main():
        async with MockUpstream(events=5, ssl_context=server_ctx) as mock:
            assert mock.base_url.startswith("https://")
            pool = UpstreamPool(ssl_context=client_ctx)
            rec = Recorder()
            await pool.open_raw(origin_of(mock), "POST", CHAT, JSON, STREAM_BODY, rec)
            assert await asyncio.wait_for(rec.done, 2) == "complete"
            assert rec.body == framed(chat_stream_events("m", 5, False, 11))
            # the system trust store does not know this certificate
            with pytest.raises(GatewayError) as info:
                await UpstreamPool().request(origin_of(mock), "GET", "/v1/models")
            assert (info.value.status, info.value.code) == (502, "upstream_unreachable")
            await pool.aclose()

    arun(main())
