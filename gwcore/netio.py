"""Writes past the event loop's transport, where that is safe and saves work.

uvloop's ``transport.write`` only buffers: a check handle writes the stream at the end of the
loop's turn, and that callback takes the GIL once more per turn. A relayed stream writes once per
upstream read, so the relay (``RelayPump``), the upstream request and the response's first write
send to the socket themselves, with ``send_nowait`` (one non-blocking ``send``), when:

- the transport is one of uvloop's plain TCP or Unix transports (``direct_fd`` gives its fd; -1
  for TLS, for the stdlib loop, whose write already sends at once, and for anything else);
- it is not closing (``is_closing()``: a closed transport's fd number may be another
  connection's by now), checked right before each send;
- nothing waits in its buffer (``get_write_buffer_size()``), so nothing is overtaken.

What the socket does not take goes to ``transport.write``, which keeps the order from then on and
finds, reports and closes on any error. See docs/architecture.md.
"""

from __future__ import annotations

import asyncio

from gwcore.sse import send_nowait

__all__ = ["direct_fd", "send_nowait"]


def _uvloop_transports() -> tuple[type, ...]:
    try:
        import uvloop.loop as uvl
    except ImportError:
        return ()
    return tuple(getattr(uvl, n) for n in ("TCPTransport", "UnixTransport") if hasattr(uvl, n))


_DIRECT = _uvloop_transports()


def direct_fd(transport: asyncio.BaseTransport | None) -> int:
    """The socket fd of a uvloop plain TCP or Unix transport, else -1 (see the module's text)."""
    if transport is None or type(transport) not in _DIRECT:
        return -1
    sock = transport.get_extra_info("socket")
    return sock.fileno() if sock is not None else -1
