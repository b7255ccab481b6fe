"""Typed surface of the compiled SSE scanner (``gwcore._sse``); ``gwcore._sse_py`` matches it."""

from collections.abc import Iterator
from typing import Any, Final, overload

from gwcore._sse_py import SSEError as SSEError

__all__ = [
    "FIELD_SLACK",
    "HOLD_LIMIT",
    "MAX_FRAMING_LINE",
    "EventParser",
    "RelayPump",
    "RequestHeadMemo",
    "ResponseHead",
    "SSEError",
    "StreamObserver",
    "bytes_tail",
    "chat_request_fields",
    "head_end",
    "lane_available",
    "lane_scan",
    "printable_ascii",
    "quick_request_head",
    "quick_response_head",
    "request_bytes",
    "response_head",
    "send_direct",
    "usage_counts",
    "with_member",
]

MAX_FRAMING_LINE: Final[int]
HOLD_LIMIT: Final[int]
FIELD_SLACK: Final[int]

Event = tuple[bytes | None, bytes, bytes | None]
# prompt, completion, total, cached, reasoning tokens
UsageCounts = tuple[int | None, int | None, int | None, int | None, int | None]

class EventParser:
    """Parse mode: ``feed`` returns the ``(event, data, id)`` tuples completed by each piece."""

    def __init__(self, *, chunked: bool = False, max_event_size: int = 8388608) -> None: ...
    @property
    def complete(self) -> bool: ...
    def feed(self, data: bytes) -> list[Event]: ...
    def close(self) -> list[Event]: ...

class StreamObserver:
    """Observe mode: ``feed`` returns the bytes owed to the client (``data`` if unchanged)."""

    def __init__(
        self,
        chunked: bool = True,
        elide_injected_usage: bool = False,
        max_event_size: int = 8388608,
    ) -> None: ...
    @property
    def complete(self) -> bool: ...
    @property
    def usage(self) -> bytes | None: ...
    @property
    def first_usage(self) -> bytes | None: ...
    @property
    def done(self) -> bool: ...
    @property
    def error(self) -> bytes | None: ...
    @property
    def events(self) -> int: ...
    @property
    def elided(self) -> int: ...
    @property
    def at_boundary(self) -> bool: ...
    def feed(self, data: bytes) -> bytes: ...
    def close(self) -> bytes: ...

class RelayPump:
    """Where the upstream connection sends each piece of a relayed body (feed + write)."""

    pieces: int
    def __init__(
        self,
        observer: StreamObserver,
        write: Any,
        owner: Any,
        first: Any = None,
        fd: int = -1,
        transport: Any = None,
    ) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def lane_start(self, transport: Any) -> bool:
        """Read the upstream ``transport`` (uvloop's) in C from here on: plain reads go to the
        client's socket from the event loop's read callback, the others to ``data_received``."""
    def lane_stop(self, resume: bool = True) -> None: ...
    def lane_pause(self) -> bool: ...
    def lane_resume(self) -> bool: ...
    @property
    def lane_reads(self) -> int: ...
    @property
    def laned(self) -> bool: ...

def lane_available() -> bool:
    """Whether this process can run relay lanes (compiled, uvloop, not switched off)."""

def head_end(buf: bytes, start: int = 0) -> int:
    """Where the first ``\\r\\n\\r\\n`` at or after ``start`` in ``buf`` is, or -1."""

def send_direct(fd: int, data: bytes) -> int:
    """One non-blocking ``send`` of ``data`` to the socket ``fd`` (no SIGPIPE): the bytes the
    socket took, or -1 for none; the rest is for the transport, which nothing waits in."""

def lane_scan(data: bytes, max_event_size: int = ...) -> int:
    """The number of events in ``data`` when it is whole chunks of plain ``data:`` events, or -1."""

def chat_request_fields(raw: bytes) -> tuple[str, bool, bool] | None:
    """``(model, stream, usage_asked)`` of a plain OpenAI chat request body (the whole body
    checked as JSON; what orjson would read from it), or None (read it with orjson then)."""

class RequestHeadMemo:
    """One connection's last plain head, kept by ``quick_request_head`` for the next."""

    def __init__(self) -> None: ...

def quick_request_head(
    data: bytes,
    memo: RequestHeadMemo | None = None,
) -> tuple[bytes, bytes, dict[str, str], int, int, bool, int, int] | None:
    """``(method, target, headers, content_length, end, keep_alive, count, header_bytes)`` of a
    plain HTTP/1.1 request head at the start of ``data``, or None (httptools parses it then).
    ``headers``: lowercase name -> value (latin-1; a repeated name's values joined with ", ");
    ``count`` header lines, ``header_bytes`` the total of their name and value lengths. With
    ``memo`` (one per connection), a head whose header lines are the connection's last ones but
    for the Content-Length digits is answered from a copy of that head's dict (the same answer)."""

def quick_response_head(buf: bytes, end: int) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
    """``(status, version, headers)`` of a plain response head ``buf[:end]``, or None."""

class ResponseHead:
    """A plain response head read in place: a sequence of ``(name, value)`` bytes pairs made on
    demand, with the status, the version and the framing read while parsing."""

    @property
    def status(self) -> int: ...
    @property
    def version(self) -> str: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def connection(self) -> bytes: ...
    def pairs(self) -> list[tuple[bytes, bytes]]: ...
    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, k: int) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, k: slice) -> list[tuple[bytes, bytes]]: ...
    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...
    def value_of(self, name: bytes) -> bytes | None: ...
    def passed_lines(self, names: tuple[bytes, ...]) -> str: ...

def printable_ascii(text: str) -> bool:
    """``text.isascii() and text.isprintable()``: every character from space to ``~``."""

def bytes_tail(data: bytes, start: int) -> bytes:
    """``data[start:]`` (``start`` >= 0), made in one step."""

def with_member(raw: bytes, member: bytes) -> bytes:
    """``raw`` (a checked JSON object) with ``member`` added last, every other byte kept."""

def request_bytes(lines: list[str], body: bytes, framed: bool) -> bytes:
    """``"".join(lines)``, Content-Length (when ``body`` or ``framed``), ``Connection:
    keep-alive``, the blank line (latin-1), then ``body``: in one allocation."""

def response_head(buf: bytes, end: int) -> ResponseHead | None:
    """The plain response head ``buf[:end]`` as a ``ResponseHead``, or None."""

def usage_counts(raw: bytes) -> UsageCounts | None:
    """``(prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens)`` of a
    plain OpenAI chat usage object, exactly what orjson and ``usage_from_openai`` give, or
    None."""

def _simd(level: int | None = None) -> int: ...
