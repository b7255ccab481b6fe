"""The event loop's transports whose socket gwcore may write to itself.

uvloop defers a transport's write to the end of the loop's turn (the stdlib loop sends at once).
Where a write should leave now (a relayed piece to the client, a request to the upstream), its
writer sends through the socket itself while nothing waits in the transport, and hands the
transport whatever the socket did not take. That is only sound for uvloop's plain stream
transports: not TLS (the bytes must be encrypted), not another loop's.
"""

from __future__ import annotations

__all__ = ["DIRECT_TRANSPORTS"]


def _direct_transports() -> frozenset[type]:
    try:
        import uvloop.loop as uvl
    except ImportError:
        return frozenset()
    return frozenset(
        getattr(uvl, name) for name in ("TCPTransport", "UnixTransport") if hasattr(uvl, name)
    )


DIRECT_TRANSPORTS: frozenset[type] = _direct_transports()
