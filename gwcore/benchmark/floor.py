"""The floor of a Python relay: a uvloop byte pipe, written only to be measured by the benchmarks.

Per client connection: find the end of each request head, forward the bytes to the mock over one
kept-alive upstream connection, write every upstream read back unchanged. No HTTP parsing beyond
the head's end, no flow control, no pool: good enough for the benchmark's workload only (each
request arrives in one read, the upstream keeps its connection alive). Never use it for more.

    python -m gwcore.benchmark.floor LISTEN_PORT UPSTREAM_PORT
"""

import asyncio
import sys

import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)  # the response bytes, unchanged

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport, self.upstream, self.buf = transport, None, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" not in self.buf:  # the request head is not complete yet
            return
        request, self.buf = self.buf, b""
        if self.upstream is None:
            self.transport.pause_reading()
            self.connecting = asyncio.ensure_future(self.connect(request))
        else:
            self.upstream.write(request)

    async def connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_connection(lambda: Upstream(self.transport), *UP)
        self.upstream.write(request)
        self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", port)
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    UP = ("127.0.0.1", int(sys.argv[2]))
    uvloop.run(main(int(sys.argv[1])))
