"""The floor with usage accounting: ``gwcore.benchmark.floor`` plus the least a gateway must do
to account each stream, written only to be measured by the benchmarks.

What it adds to the floor's byte pipe, per request, with gwcore's own compiled pieces:

- the request body's model and stream flag read (``chat_request_fields``), and usage asked of
  the upstream when the client did not ask for it (``with_member``), in a request head of its own;
- each upstream read through the scanner (``StreamObserver``: event boundaries, the usage
  object, the injected usage event elided) on its way to the client;
- at the end of the stream, one usage record (``new_record``, ``usage_counts``), priced
  (``PriceTable``) and queued to the SQLite ledger (``UsageLedger``), which writes it in batches
  off the request path, as gwcore does.

No routing, no auth, no flow control, no pool, no error path, no response head of its own (the
upstream's is passed on): the benchmark's workload only (one request at a time with a
Content-Length, a kept-alive upstream, streams that end well). Never use it for more. Its CPU
less the floor's is what usage accounting costs at the least in a Python process on uvloop; its
CPU against nginx's tells whether the relay targets are reachable with accounting on in such a
process.

With ``memory`` for the ledger's path (the benchmarks' ``floor_counted``), the records are kept in
memory (``MemorySink``), unpriced: the accounting the relay issue itself asked for (the record
and an in-memory sink; the persistent ledger and cost came with the ledger issue), the least
reading of "usage accounting on". At SIGTERM it stops serving, stores what its ledger still
holds, and prints how many records its memory holds (the last 10,000) and their tokens.

    python -m gwcore.benchmark.floor_accounted LISTEN_PORT UPSTREAM_PORT [LEDGER_PATH | memory]
"""

import asyncio
import signal
import sys
from time import perf_counter

import uvloop

from gwcore.ledger.sqlite import SqliteStore
from gwcore.ledger.writer import UsageLedger
from gwcore.pricing import PriceTable
from gwcore.sse import StreamObserver, chat_request_fields, head_end, usage_counts, with_member
from gwcore.usage import MemorySink, PricedFanout, new_record

INCLUDE_USAGE = b'"stream_options":{"include_usage":true}'


class Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client, self.head, self.observer, self.record = client, b"", None, None

    def start(self, observer: StreamObserver, record, started: float) -> None:
        """The next response's: its head still to come, its observer and its record."""
        self.head, self.observer, self.record, self.started = b"", observer, record, started

    def data_received(self, data: bytes) -> None:
        if self.head is not None:  # the response head is still coming
            buf = self.head + data
            end = head_end(buf)
            if end < 0:
                self.head = buf
                return
            self.head = None
            out = buf[: end + 4] + self.observer.feed(buf[end + 4 :])
        else:
            out = self.observer.feed(data)
        if out:
            self.client.write(out)
        if self.observer.complete:
            self.account()

    def account(self) -> None:
        rec, usage = self.record, self.observer.usage
        counts = usage_counts(usage) if usage is not None else None
        if counts is not None:
            (
                rec.prompt_tokens,
                rec.completion_tokens,
                rec.total_tokens,
                rec.cached_tokens,
                rec.reasoning_tokens,
            ) = counts
        rec.status = 200
        rec.duration_ms = (perf_counter() - self.started) * 1000.0
        PIPELINE.record(rec)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport, self.upstream, self.buf, self.served = transport, None, b"", 0

    def data_received(self, data: bytes) -> None:
        buf = self.buf = self.buf + data
        end = head_end(buf)
        if end < 0:  # the request head is not complete yet
            return
        at = buf.find(b"ength:", 0, end)  # Content-Length (there is one: the workload's)
        size = int(buf[at + 6 : buf.find(b"\r", at)])
        if len(buf) < end + 4 + size:  # nor its body
            return
        body, self.buf = buf[end + 4 : end + 4 + size], b""
        started = perf_counter()
        model, stream, asked = chat_request_fields(body)
        if stream and not asked:
            body = with_member(body, INCLUDE_USAGE)
        request = REQUEST_HEAD % len(body) + body
        self.served += 1
        record = new_record(
            f"floor-{id(self)}-{self.served}", "bench", model, model, "relay", stream, None
        )
        observer = StreamObserver(True, stream and not asked)
        if self.upstream is None:
            self.transport.pause_reading()
            self.connecting = asyncio.ensure_future(
                self.connect(request, observer, record, started)
            )
        else:
            self.protocol.start(observer, record, started)
            self.upstream.write(request)

    async def connect(self, request: bytes, observer, record, started: float) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, self.protocol = await loop.create_connection(
            lambda: Upstream(self.transport), *UP
        )
        self.protocol.start(observer, record, started)
        self.upstream.write(request)
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, ledger_path: str) -> None:
    global PIPELINE
    loop = asyncio.get_running_loop()
    if ledger_path == "memory":
        ledger, PIPELINE = None, MemorySink()  # the last 10,000, as gwcore's would
    else:
        ledger = UsageLedger(SqliteStore(ledger_path))
        await ledger.start()
        PIPELINE = PricedFanout(PriceTable.from_config(None), [ledger])
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    server = await loop.create_server(Client, "127.0.0.1", port)
    print(f"accounted floor listening on 127.0.0.1:{port}", flush=True)
    try:
        await stopping
    finally:
        server.close()
        if ledger is not None:
            await ledger.stop()
        else:
            kept = PIPELINE.records
            tokens = sum(r.total_tokens or 0 for r in kept)
            print(f"{len(kept)} records in memory, {tokens} tokens in all", flush=True)


if __name__ == "__main__":
    UP = ("127.0.0.1", int(sys.argv[2]))
    REQUEST_HEAD = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %%d\r\n\r\n" % sys.argv[2].encode()
    )
    uvloop.run(main(int(sys.argv[1]), sys.argv[3] if len(sys.argv) > 3 else "floor-ledger.db"))
