"""Pure-Python twin of ``gwcore._sse``: the SSE scanner and HTTP/1.1 chunked-framing walker.

Owns the byte-level reading of an upstream event stream, in two modes:

* ``EventParser`` (translate path): bytes in, ``(event, data, id)`` tuples out.
* ``StreamObserver`` (relay path): bytes in, the same bytes out (the same object when nothing
  changes), while it notes the usage object, ``[DONE]``, errors, the event count and the end of
  the chunked body; optionally it elides the usage-only chunk the gateway asked for itself.

This module is the executable spec of the compiled one: same names, same results, same exceptions,
tested side by side. It must never touch a socket or the event loop, never split lines on anything
but CR and LF, and never buffer more of a stream than what straddles two pieces (bounded).

Deliberate deviation from WHATWG: at end of stream (``close()``, or the last chunk of a chunked
body) an event whose data lines are complete but which lacks its final blank line IS dispatched,
because upstreams omit it; a trailing line without a line end counts as a complete line.
"""

from __future__ import annotations

import operator
import os
import re
from typing import Any

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

MAX_FRAMING_LINE = 8192  # bound of a chunk-size line and of all trailer lines together
HOLD_LIMIT = 65536  # elide mode: an unfinished event bigger than this is released, never elided
FIELD_SLACK = 64  # a line may exceed max_event_size by this much (room for the field name)

_LF = 0x0A
_CR = 0x0D
_SP = 0x20
_HTAB = 0x09
_COLON = 0x3A
_SEMI = 0x3B
_QUOTE = 0x22
_BSLASH = 0x5C
_LBRACE = 0x7B
_RBRACE = 0x7D
_LBRACKET = 0x5B
_RBRACKET = 0x5D
_BOM = b"\xef\xbb\xbf"
_JSON_WS = frozenset(b" \t\r\n")

# Chunked framing states (the numbering is shared with the compiled module).
_C_NONE = 0
_C_SIZE = 1
_C_SIZE_WS = 2
_C_EXT = 3
_C_SIZE_LF = 4
_C_DATA = 5
_C_DATA_CR = 6
_C_DATA_LF = 7
_C_TRAILER = 8
_C_TRAILER_LINE = 9
_C_TRAILER_LF = 10
_C_FINAL_LF = 11
_C_DONE = 12

_HEX = [-1] * 256
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
del _i, _c


class SSEError(ValueError):
    """The stream cannot be read on: malformed chunked framing, or an event over the size limit."""


def _skip_ws(d: bytes, i: int) -> int:
    n = len(d)
    while i < n and d[i] in _JSON_WS:
        i += 1
    return i


def _object_end(d: bytes, i: int) -> int:
    """Index after the JSON value opened by ``d[i]`` (a brace), or -1 when it is unbalanced."""
    n = len(d)
    depth = 0
    in_str = False
    while i < n:
        c = d[i]
        if in_str:
            if c == _BSLASH:
                i += 1
            elif c == _QUOTE:
                in_str = False
        elif c == _QUOTE:
            in_str = True
        elif c in (_LBRACE, _LBRACKET):
            depth += 1
        elif c in (_RBRACE, _RBRACKET):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


class _Nesting:
    """Walks JSON text forward, tracking container depth and whether it is inside a string."""

    __slots__ = ("d", "depth", "esc", "in_str", "pos")

    def __init__(self, d: bytes, pos: int) -> None:
        self.d = d
        self.pos = pos
        self.depth = 0
        self.in_str = False
        self.esc = False

    def advance(self, target: int) -> None:
        d = self.d
        i = self.pos
        depth = self.depth
        in_str = self.in_str
        esc = self.esc
        while i < target:
            c = d[i]
            if in_str:
                if esc:
                    esc = False
                elif c == _BSLASH:
                    esc = True
                elif c == _QUOTE:
                    in_str = False
            elif c == _QUOTE:
                in_str = True
            elif c in (_LBRACE, _LBRACKET):
                depth += 1
            elif c in (_RBRACE, _RBRACKET):
                depth -= 1
            i += 1
        self.pos = i
        self.depth = depth
        self.in_str = in_str
        self.esc = esc


def _key_value_at(d: bytes, k: int, opener: int) -> int:
    """After a key's closing quote at ``k``: index of ``opener`` past ``: `` or -1."""
    n = len(d)
    k = _skip_ws(d, k)
    if k >= n or d[k] != _COLON:
        return -1
    k = _skip_ws(d, k + 1)
    if k >= n or d[k] != opener:
        return -1
    return k


def _usage_value_at(d: bytes, p: int) -> tuple[int, bool]:
    """At ``'"usage'`` (``d[p]``): where the object value of a ``"usage"`` or ``"usageMetadata"``
    key opens, and whether it is the latter; -1 when it is neither key or its value no object."""
    k = p + 6
    meta = d.startswith(b'Metadata"', k)
    if meta:
        k += 9
    elif k < len(d) and d[k] == _QUOTE:
        k += 1
    else:
        return -1, False
    return _key_value_at(d, k, _LBRACE), meta


def _has_empty_choices(d: bytes, start: int) -> bool:
    """True when the object has a top-level ``"choices":[]`` (the OpenAI usage-only chunk)."""
    nest = _Nesting(d, start)
    n = len(d)
    p = d.find(b'"choices"', start)
    while p >= 0:
        k = _key_value_at(d, p + 9, _LBRACKET)
        if k >= 0:
            k = _skip_ws(d, k + 1)
            if k < n and d[k] == _RBRACKET:
                nest.advance(p)
                if not nest.in_str and nest.depth == 1:
                    return True
        p = d.find(b'"choices"', p + 1)
    return False


class _Scanner:
    """State shared by both modes: chunked framing, SSE line splitting, the event in progress."""

    __slots__ = (
        "_blk",
        "_blk_disq",
        "_blk_here",
        "_bom",
        "_cdigits",
        "_chunked",
        "_cline",
        "_closed",
        "_complete",
        "_cr",
        "_csize",
        "_cst",
        "_cuts",
        "_dfirst",
        "_dmore",
        "_done",
        "_doverflow",
        "_dtotal",
        "_elide",
        "_elide_lf",
        "_elided",
        "_error",
        "_etype",
        "_etype_error",
        "_events",
        "_failed",
        "_first_usage",
        "_has_data",
        "_hold",
        "_id",
        "_lbuf",
        "_line_limit",
        "_line_open",
        "_ltrue",
        "_max",
        "_observe",
        "_out",
        "_prefix",
        "_seg_end",
        "_segs",
        "_term_at",
        "_typed",
        "_usage",
    )

    def __init__(self, chunked: bool, max_event_size: int, observe: bool, elide: bool) -> None:
        if max_event_size < 0:
            raise ValueError("max_event_size must be >= 0")
        self._chunked = bool(chunked)
        self._observe = observe
        self._elide = elide
        self._max = max_event_size
        self._line_limit = max_event_size + FIELD_SLACK
        self._cst = _C_SIZE if self._chunked else _C_NONE
        self._csize = 0
        self._cdigits = 0
        self._cline = 0
        self._complete = False
        self._closed = False
        self._failed: str | None = None
        self._bom = 0  # bytes of a BOM matched so far; -1 once the stream start is behind us
        self._cr = False  # the last byte was a CR ending a line: a following LF belongs to it
        self._lbuf = bytearray()
        self._ltrue = 0  # true length of the carried partial line (the observer may truncate it)
        self._line_open = False
        self._has_data = False
        self._dfirst = b""
        self._dmore: bytearray | None = None
        self._dtotal = 0
        self._doverflow = False
        self._etype: bytes | None = None
        self._etype_error = False
        self._typed = False  # observe mode: the event in progress has an event field
        self._id: bytes | None = None
        self._out: list = []
        self._events = 0
        self._usage: bytes | None = None
        self._first_usage: bytes | None = None
        self._done = False
        self._error: bytes | None = None
        self._elided = 0
        # Elide-mode bookkeeping: the block is the raw bytes of one event up to its blank line.
        self._blk = False
        self._blk_here = -1  # where the block's bytes start in the current piece (-1: not here)
        self._blk_disq = False  # the block can no longer be elided
        self._elide_lf = False  # the LF completing an elided block's CRLF is still to come
        self._hold = bytearray()
        self._prefix = bytearray()
        self._segs: list = []
        self._cuts: list = []
        self._seg_end = -1
        self._term_at = -1

    @property
    def complete(self) -> bool:
        return self._complete

    # ---- input ---------------------------------------------------------------------------------

    def _begin(self, data: object) -> None:
        if type(data) is not bytes:
            raise TypeError(f"feed() takes bytes, not {type(data).__name__}")
        if self._failed is not None:
            raise SSEError(self._failed)
        if self._closed:
            raise SSEError("feed() after close()")

    def _run(self, data: bytes) -> None:
        try:
            if self._chunked:
                self._walk(data)
            else:
                self._segment(data, 0, len(data))
        except SSEError as exc:
            self._failed = str(exc)
            raise

    def _walk(self, data: bytes) -> None:
        """Walk the chunked framing; hand each run of payload bytes to ``_segment``."""
        n = len(data)
        pos = 0
        st = self._cst
        try:
            while pos < n:
                if st == _C_DATA:
                    take = min(self._csize, n - pos)
                    self._segment(data, pos, pos + take)
                    pos += take
                    self._csize -= take
                    if self._csize == 0:
                        st = _C_DATA_CR
                    continue
                b = data[pos]
                pos += 1
                if st == _C_SIZE:
                    v = _HEX[b]
                    if v >= 0:
                        if self._cdigits >= 15:
                            raise SSEError("malformed chunked body: chunk size too large")
                        self._csize = self._csize * 16 + v
                        self._cdigits += 1
                    elif self._cdigits == 0:
                        raise SSEError(
                            f"malformed chunked body: expected a hex chunk size, got byte 0x{b:02x}"
                        )
                    elif b == _CR:
                        st = _C_SIZE_LF
                    elif b == _SEMI:
                        st = _C_EXT
                    elif b in (_SP, _HTAB):
                        st = _C_SIZE_WS
                    else:
                        raise SSEError(
                            f"malformed chunked body: unexpected byte 0x{b:02x} in chunk size"
                        )
                    self._cline += 1
                elif st == _C_SIZE_WS:
                    if b == _CR:
                        st = _C_SIZE_LF
                    elif b == _SEMI:
                        st = _C_EXT
                    elif b != _SP and b != _HTAB:
                        raise SSEError(
                            f"malformed chunked body: unexpected byte 0x{b:02x} in chunk size"
                        )
                    self._cline += 1
                    if self._cline > MAX_FRAMING_LINE:
                        raise SSEError(
                            f"malformed chunked body: chunk size line over {MAX_FRAMING_LINE} bytes"
                        )
                elif st == _C_EXT:
                    if b == _CR:
                        st = _C_SIZE_LF
                    elif b == _LF:
                        raise SSEError("malformed chunked body: bare LF in chunk size line")
                    self._cline += 1
                    if self._cline > MAX_FRAMING_LINE:
                        raise SSEError(
                            f"malformed chunked body: chunk size line over {MAX_FRAMING_LINE} bytes"
                        )
                elif st == _C_SIZE_LF:
                    if b != _LF:
                        raise SSEError("malformed chunked body: chunk size line not ended by CRLF")
                    self._cline = 0
                    self._cdigits = 0
                    if self._csize:
                        st = _C_DATA
                    else:
                        st = _C_TRAILER
                        self._last_chunk(pos)
                elif st == _C_DATA_CR:
                    if b != _CR:
                        raise SSEError("malformed chunked body: chunk data not followed by CRLF")
                    st = _C_DATA_LF
                elif st == _C_DATA_LF:
                    if b != _LF:
                        raise SSEError("malformed chunked body: chunk data not followed by CRLF")
                    st = _C_SIZE
                elif st in (_C_TRAILER, _C_TRAILER_LINE):
                    if b == _CR:
                        st = _C_FINAL_LF if st == _C_TRAILER else _C_TRAILER_LF
                    elif b == _LF:
                        raise SSEError("malformed chunked body: bare LF in trailer")
                    else:
                        st = _C_TRAILER_LINE
                    self._cline += 1
                    if self._cline > MAX_FRAMING_LINE:
                        raise SSEError(
                            f"malformed chunked body: trailers over {MAX_FRAMING_LINE} bytes"
                        )
                elif st == _C_TRAILER_LF:
                    if b != _LF:
                        raise SSEError("malformed chunked body: trailer line not ended by CRLF")
                    st = _C_TRAILER
                    self._cline += 1
                    if self._cline > MAX_FRAMING_LINE:
                        raise SSEError(
                            f"malformed chunked body: trailers over {MAX_FRAMING_LINE} bytes"
                        )
                elif st == _C_FINAL_LF:
                    if b != _LF:
                        raise SSEError("malformed chunked body: last chunk not ended by CRLF")
                    st = _C_DONE
                    self._complete = True
                else:  # _C_DONE
                    raise SSEError("data after the end of the chunked body")
        finally:
            self._cst = st

    def _finish(self) -> bool:
        """close(): True when the end of the event stream is still to be processed."""
        if self._failed is not None:
            raise SSEError(self._failed)
        if self._closed:
            return False
        self._closed = True
        if self._chunked:
            return not self._complete  # a finished chunked body already ended the event stream
        self._complete = True
        return True

    def _run_eof(self) -> None:
        try:
            self._eof(-1)
        except SSEError as exc:
            self._failed = str(exc)
            raise

    def _boundary(self) -> bool:
        """The input is between two chunks (or past the last-chunk line, or not chunked)."""
        st = self._cst
        return st == _C_NONE or (st == _C_SIZE and self._cdigits == 0) or st >= _C_TRAILER

    def _last_chunk(self, pos: int) -> None:
        """The last-chunk line ended at ``pos``: the event stream ends here."""
        self._term_at = pos
        self._eof(self._seg_end)

    def _segment(self, data: bytes, s: int, e: int) -> None:
        """Split the payload bytes ``data[s:e]`` into SSE lines (any piece, any split)."""
        if self._elide:
            self._segs.append((s, e))
            self._seg_end = e
            if self._blk and self._blk_here < 0:
                self._blk_here = s
        pos = s
        if pos >= e:
            return
        if self._cr:
            self._cr = False
            if data[pos] == _LF:
                if self._elide_lf:
                    self._cuts.append((pos, pos + 1))
                pos += 1
            self._elide_lf = False
        if self._bom >= 0:
            k = self._bom
            while k < 3 and pos < e:
                if data[pos] != _BOM[k]:
                    break
                k += 1
                pos += 1
            if k == 3:
                self._bom = -1
            elif pos == e:
                self._bom = k
                return
            else:
                self._bom = -1
                if k:  # a false start of a BOM is the beginning of the first line
                    self._carry(_BOM, 0, k)
        # Positions of the next LF and CR, each searched again only once passed; -1: none left.
        nlf = data.find(b"\n", pos, e)
        ncr = data.find(b"\r", pos, e)
        while pos < e:
            if self._elide and not self._blk:
                self._blk = True
                self._blk_here = pos
            if 0 <= nlf < pos:
                nlf = data.find(b"\n", pos, e)
            if 0 <= ncr < pos:
                ncr = data.find(b"\r", pos, e)
            if nlf < 0:
                i = ncr
            elif ncr < 0 or nlf < ncr:
                i = nlf
            else:
                i = ncr
            if i < 0:
                self._carry(data, pos, e)
                return
            nxt = i + 1
            if data[i] == _CR:
                if nxt < e:
                    if data[nxt] == _LF:
                        nxt += 1
                else:
                    self._cr = True
            if self._line_open:
                if i > pos:
                    self._carry(data, pos, i)
                buf = self._lbuf
                ln = self._ltrue
                self._lbuf = bytearray()
                self._ltrue = 0
                self._line_open = False
                self._line(buf, 0, len(buf), ln, nxt)
            else:
                self._line(data, pos, i, i - pos, nxt)
            pos = nxt

    def _carry(self, data: bytes, s: int, e: int) -> None:
        """Keep the start of a line whose end is in a later piece."""
        self._line_open = True
        self._ltrue += e - s
        if self._ltrue > self._line_limit:
            if not self._observe:
                raise SSEError(f"SSE line exceeds max_event_size ({self._max} bytes)")
            room = self._line_limit - len(self._lbuf)
            if room > 0:
                self._lbuf += data[s : s + room]
        else:
            self._lbuf += data[s:e]

    def _line(self, buf: bytes, s: int, e: int, length: int, nxt: int) -> None:
        """One complete line ``buf[s:e]`` (``length`` is its true length) ended before ``nxt``."""
        if length == 0:
            self._dispatch(nxt)
            return
        if length > self._line_limit and not self._observe:
            raise SSEError(f"SSE line exceeds max_event_size ({self._max} bytes)")
        if buf[s] == _COLON:
            return
        colon = buf.find(b":", s, e)
        if colon < 0:
            name = buf[s:e]
            vs = e
        else:
            name = buf[s:colon]
            vs = colon + 1
            if vs < e and buf[vs] == _SP:
                vs += 1
        if name == b"data":
            self._on_data(buf, vs, e, length - (vs - s))
        elif name == b"event":
            if self._observe:
                self._blk_disq = True
                self._typed = True
                self._etype_error = buf[vs:e] == b"error"
            else:
                self._etype = bytes(buf[vs:e]) or None
        elif name == b"id" and not self._observe:
            v = bytes(buf[vs:e])
            if b"\x00" not in v:
                self._id = v or None

    def _on_data(self, buf: bytes, vs: int, e: int, vlen: int) -> None:
        total = self._dtotal + 1 + vlen if self._has_data else vlen
        self._dtotal = total
        if total > self._max:
            if not self._observe:
                raise SSEError(f"SSE event exceeds max_event_size ({self._max} bytes)")
            self._doverflow = True
        elif not self._doverflow:
            if not self._has_data:
                self._dfirst = bytes(buf[vs:e])
            else:
                if self._dmore is None:
                    self._dmore = bytearray(self._dfirst)
                self._dmore.append(_LF)
                self._dmore += buf[vs:e]
        self._has_data = True

    def _dispatch(self, nxt: int) -> None:
        """A blank line (or the end of the stream) ends the event in progress."""
        if self._observe:
            elidable = False
            if self._has_data:
                self._events += 1
                if not self._doverflow:
                    d = bytes(self._dmore) if self._dmore is not None else self._dfirst
                    elidable = self._analyze(d)
            if self._elide and self._blk:
                if elidable:
                    self._elided += 1
                    if self._blk_here >= 0:
                        self._cuts.append((self._blk_here, nxt))
                    self._hold.clear()
                    self._elide_lf = self._cr
                elif self._hold:
                    self._prefix += self._hold
                    self._hold.clear()
            self._etype_error = False
            self._typed = False
            self._blk = False
            self._blk_here = -1
            self._blk_disq = False
        else:
            if self._has_data:
                d = bytes(self._dmore) if self._dmore is not None else self._dfirst
                self._out.append((self._etype, d, self._id))
            self._etype = None
        self._has_data = False
        self._dfirst = b""
        self._dmore = None
        self._dtotal = 0
        self._doverflow = False

    def _eof(self, end: int) -> None:
        """End of the event stream: a pending partial line and event count as complete."""
        if 0 < self._bom < 3:
            self._carry(_BOM, 0, self._bom)
        self._bom = -1
        self._cr = False
        if self._line_open:
            buf = self._lbuf
            ln = self._ltrue
            self._lbuf = bytearray()
            self._ltrue = 0
            self._line_open = False
            self._line(buf, 0, len(buf), ln, end)
        self._dispatch(end)

    # ---- observe mode: what the stream tells the gateway ----------------------------------------

    def _analyze(self, d: bytes) -> bool:
        """Note [DONE], an error, the usage object; True when the event is to be elided."""
        n = len(d)
        if n == 6 and d == b"[DONE]":
            self._done = True
            return False
        if self._etype_error and self._error is None:
            self._error = d
        i = _skip_ws(d, 0)
        if i >= n or d[i] != _LBRACE:
            return False
        j = _skip_ws(d, i + 1)
        if self._error is None and d.startswith(b'"error"', j):
            k = _skip_ws(d, j + 7)
            if k < n and d[k] == _COLON:
                self._error = d
        p = d.find(b'"usage', i)
        if p < 0:
            return False
        nest = _Nesting(d, i)
        first = last = None
        top_usage = False
        while p >= 0:
            o, meta = _usage_value_at(d, p)
            if o < 0:
                p = d.find(b'"usage', p + 1)
                continue
            nest.advance(p)
            if nest.in_str or nest.depth > 2:
                p = d.find(b'"usage', p + 1)
                continue
            q = _object_end(d, o)
            if q < 0:
                break
            last = (o, q)
            if first is None:
                first = last
            if not meta and nest.depth == 1:
                top_usage = True
            p = d.find(b'"usage', q)
        if last is None:
            return False
        self._usage = d[last[0] : last[1]]
        if self._first_usage is None:
            self._first_usage = d[first[0] : first[1]]
        if not (self._elide and top_usage and not self._blk_disq):
            return False
        # Elide only an event whose data is exactly one object with an empty top-level choices.
        end = _object_end(d, i)
        return end > 0 and _skip_ws(d, end) == n and _has_empty_choices(d, i)


class EventParser(_Scanner):
    """Parse mode, for the translation path: raw bytes in, completed events out.

    ``feed(data)`` returns the events completed by this piece as ``(event, data, id)`` tuples of
    ``bytes | None, bytes, bytes | None``: ``event`` is None for the default type ("message"),
    ``id`` is the last event ID (None while empty). ``close()`` flushes at end of stream; with
    ``chunked=True`` the last chunk already ends the event stream and ``complete`` turns True after
    the body's final CRLF. Raises ``SSEError`` on malformed chunked framing, on an event whose data
    exceeds ``max_event_size`` or a line longer than that plus ``FIELD_SLACK``; errors are sticky.
    """

    __slots__ = ()

    def __init__(self, *, chunked: bool = False, max_event_size: int = 8 * 1024 * 1024) -> None:
        super().__init__(chunked, max_event_size, False, False)

    def feed(self, data: bytes) -> list[tuple[bytes | None, bytes, bytes | None]]:
        self._begin(data)
        out = self._out = []
        self._run(data)
        self._out = []
        return out

    def close(self) -> list[tuple[bytes | None, bytes, bytes | None]]:
        if not self._finish():
            return []
        out = self._out = []
        self._run_eof()
        self._out = []
        return out


class StreamObserver(_Scanner):
    """Observe mode, for the zero-copy relay: watches the upstream body bytes on their way out.

    ``feed(data)`` returns what to write to the client: ``data`` itself (same object) unless an
    elided event is in or straddles this piece; ``close()`` returns bytes still owed at EOF. No
    per-event state is kept beyond counters and the usage bytes; only a line or an elidable event
    straddling two pieces is buffered.

    Usage, every dialect at once: ``usage`` / ``first_usage`` are the last / first object value
    of a ``"usage"`` or ``"usageMetadata"`` key at nesting depth <= 2 outside JSON strings (OpenAI
    chat, Anthropic message_start.message / message_delta, Responses response.usage, Gemini);
    ``"usage":null`` changes nothing. ``error`` is the data of the first ``event: error`` event or
    event whose JSON object's first key is ``"error"``. An event whose data exceeds
    ``max_event_size`` is counted and passed on but not inspected.

    Elision (``elide_injected_usage``): an event without an ``event:`` field whose data is exactly
    one JSON object with a top-level ``"choices":[]`` and a top-level ``"usage"`` object is removed
    with its blank line; chunked output is re-framed around it, and an unfinished event is held
    back until it is known (never more than ``HOLD_LIMIT`` bytes: a bigger one is released as is).
    """

    __slots__ = ()

    def __init__(
        self,
        chunked: bool = True,
        elide_injected_usage: bool = False,
        max_event_size: int = 8 * 1024 * 1024,
    ) -> None:
        super().__init__(chunked, max_event_size, True, bool(elide_injected_usage))

    @property
    def usage(self) -> bytes | None:
        return self._usage

    @property
    def first_usage(self) -> bytes | None:
        return self._first_usage

    @property
    def done(self) -> bool:
        return self._done

    @property
    def error(self) -> bytes | None:
        return self._error

    @property
    def events(self) -> int:
        return self._events

    @property
    def elided(self) -> int:
        return self._elided

    @property
    def at_boundary(self) -> bool:
        """The bytes returned so far end between two events (and two chunks): the relay may
        append an event of its own, e.g. a terminal error, without corrupting the stream."""
        if self._chunked:
            if self._elide:  # a re-framed piece always ends between two chunks
                if self._cst >= _C_TRAILER:
                    return False
            elif self._cst != _C_SIZE or self._cdigits:
                return False
        if 0 < self._bom < 3:
            return False
        if self._elide and self._blk and not self._blk_disq:
            return True  # the event in progress is held back: the client has none of it
        return not (self._line_open or self._has_data or self._typed)

    def feed(self, data: bytes) -> bytes:
        self._begin(data)
        if not self._elide:
            self._run(data)
            return data
        # Held bytes, or input framing not at a chunk boundary, at either end: re-frame the piece.
        changed = bool(self._hold) or not self._boundary()
        self._run(data)
        return self._assemble(data, changed or not self._boundary())

    def close(self) -> bytes:
        if not self._finish():
            return b""
        self._run_eof()
        if not self._elide:
            return b""
        out = bytes(self._prefix) + bytes(self._hold)
        self._prefix.clear()
        self._hold.clear()
        if self._chunked and out:
            return b"%x\r\n%s\r\n" % (len(out), out)
        return out

    def _assemble(self, data: bytes, changed: bool) -> bytes:
        """Elide mode: the bytes owed to the client for this piece, re-framed only if changed."""
        segs = self._segs
        hold_from = -1
        if self._blk:
            if self._blk_disq:
                if self._hold:
                    self._prefix += self._hold
                    self._hold.clear()
            elif self._blk_here >= 0:
                tail = 0
                for s, e in segs:
                    if e > self._blk_here:
                        tail += e - max(s, self._blk_here)
                if len(self._hold) + tail > HOLD_LIMIT:
                    self._prefix += self._hold
                    self._hold.clear()
                    self._blk_disq = True
                else:
                    hold_from = self._blk_here
        if not (changed or self._hold or self._cuts or self._prefix or hold_from >= 0):
            out = data
        else:
            payload = bytearray(self._prefix)
            tail_bytes = bytearray()
            cuts = self._cuts
            for s, e in segs:
                a = s
                for cs, ce in cuts:
                    if ce <= a or cs >= e:
                        continue
                    if cs > a:
                        payload += data[a:cs]
                    a = max(a, ce)
                if a < e:
                    if 0 <= hold_from < e:
                        h = max(a, hold_from)
                        payload += data[a:h]
                        tail_bytes += data[h:e]
                    else:
                        payload += data[a:e]
            self._hold += tail_bytes
            if self._chunked:
                out = b"%x\r\n%s\r\n" % (len(payload), payload) if payload else b""
                if self._term_at >= 0:
                    out += b"0\r\n" + data[self._term_at :]
            else:
                out = bytes(payload)
        self._prefix.clear()
        self._segs = []
        self._cuts = []
        self._seg_end = -1
        self._term_at = -1
        if self._blk:
            self._blk_here = -1
        return out


class RelayPump:
    """Where the upstream connection sends each piece while a relayed body flows: through the
    observer and straight to the client's ``write``.

    ``owner`` hears once: ``pump_complete()`` when the chunked body ended, ``pump_failed(exc)`` on
    broken framing. Connection events stay with the upstream connection. ``pieces`` counts what
    was received (the connection's idle timer reads it). ``first``, when given, is the client's
    channel, whose head held back (``take_held()``: the head's bytes; None when none is held; b""
    for nothing to write at all, the client being gone) goes out once, in front of the first
    bytes to write: in one system call and one segment with them, as every piece goes.

    ``fd`` (with ``transport``, the client transport that owns it): the client's socket, which
    the pump then writes to itself, one non-blocking write a piece, whenever nothing waits in the
    transport's buffer (``get_write_buffer_size()``, checked before the first such write, and
    again after any piece the socket did not take whole, whose rest goes to ``write``) and the
    transport is not closing (``is_closing()``, checked before every write: a closed transport's
    fd may already be another connection's). The bytes and their order are what ``write`` alone
    would send; what it saves is the event loop's deferred write (a second callback, and a second
    take of the GIL, in each turn of the loop). -1: ``write`` only.
    """

    __slots__ = (
        "_client",
        "_direct",
        "_fd",
        "_first",
        "_observer",
        "_over",
        "_owner",
        "_write",
        "pieces",
    )

    def __init__(
        self,
        observer: StreamObserver,
        write: Any,
        owner: Any,
        first: Any = None,
        fd: int = -1,
        transport: Any = None,
    ) -> None:
        if observer is None:
            raise TypeError("observer must be a StreamObserver")
        self._observer = observer
        self._write = write
        self._owner = owner
        self._first = first
        self.pieces = 0
        self._over = False
        self._direct = False
        if fd >= 0 and transport is not None:
            self._fd = fd
            self._client = transport
        else:
            self._fd = -1
            self._client = None

    def _send(self, out: bytes) -> None:
        """``write(out)``, through the socket itself when nothing is waiting in the transport."""
        if self._client.is_closing():  # its fd closed, or about to be (for good): the transport's
            self._write(out)
            return
        if not self._direct:
            if self._client.get_write_buffer_size():
                self._write(out)  # behind what waits: the transport keeps the order
                return
            self._direct = True
        try:
            sent = os.write(self._fd, out)  # the socket is non-blocking (the event loop's)
        except OSError:  # full (BlockingIOError) or failing: the transport's to handle
            sent = 0
        if sent == len(out):
            return
        self._direct = False
        self._write(out[sent:] if sent > 0 else out)

    def data_received(self, data: bytes) -> None:
        if self._over:
            return
        self.pieces += 1
        try:
            out = self._observer.feed(data)
        except SSEError as exc:
            self._over = True
            self._owner.pump_failed(exc)
            return
        if out:
            first = self._first
            if first is not None:
                self._first = None
                head = first.take_held()
                if head is not None:
                    out = head + out if head else b""  # (b"": nothing to write)
            if out:
                if self._fd >= 0:
                    self._send(out)
                else:
                    self._write(out)
        if self._observer.complete:
            self._over = True
            self._owner.pump_complete()

    # The lane (the compiled pump's: reads sent on in C, without the GIL) needs libuv's read
    # callbacks; in Python it would only be slower than ``data_received``. Never started here.

    def lane_start(self, transport: Any) -> bool:
        """Read the upstream ``transport`` in C from here on; False: not here (see the compiled
        ``RelayPump.lane_start``)."""
        return False

    def lane_stop(self, resume: bool = True) -> None:
        return None

    def lane_pause(self) -> bool:
        return False

    def lane_resume(self) -> bool:
        return False

    @property
    def lane_reads(self) -> int:
        return 0

    @property
    def laned(self) -> bool:
        return False


def lane_available() -> bool:
    """Whether this process can run relay lanes: never with the pure-Python scanner."""
    return False


def head_end(buf: bytes, start: int = 0) -> int:
    """Where the first ``\\r\\n\\r\\n`` at or after ``start`` in ``buf`` is (the end of an HTTP
    head), or -1."""
    if type(buf) is not bytes:
        raise TypeError(f"buf must be bytes, not {type(buf).__name__}")
    return buf.find(b"\r\n\r\n", max(start, 0))


def printable_ascii(text: str) -> bool:
    """``text.isascii() and text.isprintable()``: every character from space to ``~``."""
    if type(text) is not str:
        raise TypeError(f"text must be str, not {type(text).__name__}")
    return text.isascii() and text.isprintable()


def bytes_tail(data: bytes, start: int) -> bytes:
    """``data[start:]`` (``start`` >= 0)."""
    if type(data) is not bytes:
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if start < 0:
        raise ValueError("start must not be negative")
    return data[start:]


def with_member(raw: bytes, member: bytes) -> bytes:
    """``raw``, a JSON object with at least one member (a checked one), with ``member`` added
    last: every byte the client sent is kept, the whitespace after the object too."""
    if type(raw) is not bytes or type(member) is not bytes:
        raise TypeError("with_member() takes two bytes")
    end = raw.rstrip(b" \t\r\n")
    return end[:-1] + b"," + member + b"}" + raw[len(end) :]


def request_bytes(lines: list[str], body: bytes, framed: bool) -> bytes:
    """An upstream request: ``"".join(lines)``, then ``Content-Length`` (when ``body`` or
    ``framed``) and ``Connection: keep-alive`` and the blank line, as latin-1 bytes, then
    ``body``. The lines are checked header text (latin-1): a string that is not raises as
    ``str.encode("latin-1")`` does."""
    if type(lines) is not list or type(body) is not bytes:
        raise TypeError("request_bytes() takes a list of str and bytes")
    if body or framed:
        tail = f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    else:
        tail = "Connection: keep-alive\r\n\r\n"
    return ("".join(lines) + tail).encode("latin-1") + body


def send_direct(fd: int, data: bytes) -> int:
    """One non-blocking ``send`` of ``data`` to the socket ``fd``, never raising SIGPIPE: the
    number of bytes the socket took, or -1 for none (full, or an error, which the transport then
    meets when it writes the rest). For a writer that owns the socket's transport and has checked
    that nothing waits in it: the rest goes to ``transport.write``, in order."""
    if type(data) is not bytes:
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    if not data:
        return 0
    try:  # the socket is non-blocking (the event loop's); Python ignores SIGPIPE: EPIPE raises
        return os.write(fd, data)
    except OSError:
        return -1


def lane_scan(data: bytes, max_event_size: int = 8 * 1024 * 1024) -> int:
    """The number of events in ``data`` when it is whole chunks of whole plain events, else -1.
    Plain: what the observer notes nothing of but its number: ``data:``, one line, LF LF; no
    ``"usage"`` or ``"usageMetadata"`` key whose value is an object, as ``_analyze`` reads them
    (``"usage":null`` is plain); not ``[DONE]``; not an object whose first key is ``"error"``.
    A compiled lane sends such a read on without the observer seeing it."""
    n = len(data)
    pos = k = 0
    while pos < n:
        j = pos
        size = 0
        while j < n and j - pos < 15 and _HEX[data[j]] >= 0:
            size = size * 16 + _HEX[data[j]]
            j += 1
        if size == 0 or size > max_event_size or j + 1 >= n or data[j : j + 2] != b"\r\n":
            return -1
        s = j + 2
        e = s + size
        if e + 2 > n or data[e : e + 2] != b"\r\n":
            return -1
        chunk = data[s:e]
        while chunk:
            rest = _lane_event(chunk)
            if rest is None:
                return -1
            chunk = rest
            k += 1
        pos = e + 2
    return k if k else -1


def _lane_event(d: bytes) -> bytes | None:
    """What follows the plain event at the start of ``d`` (after its blank line), or None."""
    if len(d) < 7 or not d.startswith(b"data:"):
        return None
    vs = 6 if d[5] == _SP else 5
    cr, lf = d.find(b"\r", vs), d.find(b"\n", vs)
    eol = lf if cr < 0 else cr if lf < 0 else min(cr, lf)
    if eol < 0 or eol + 1 >= len(d) or d[eol : eol + 2] != b"\n\n":
        return None
    line = d[vs:eol]
    p = line.find(b'"usage')
    while p >= 0:  # only a key whose value is an object counts, as _analyze reads them
        if _usage_value_at(line, p)[0] >= 0:
            return None
        p = line.find(b'"usage', p + 6)
    if line == b"[DONE]":
        return None
    i = _skip_ws(line, 0)
    if i < len(line) and line[i] == _LBRACE and line.startswith(b'"error"', _skip_ws(line, i + 1)):
        return None
    return d[eol + 2 :]


# ----------------------------------------------------------- plain HTTP/1.x heads, in one pass


# RFC 9110 tchar, as a table: 1 for each byte a method or a header name may hold.
_TCHAR = bytes(
    1 if chr(c).isascii() and (chr(c).isalnum() or chr(c) in "!#$%&'*+-.^_`|~") else 0
    for c in range(256)
)
# The bytes of a plain request target: printable ASCII but space, ``#`` and ``\\``.
_TARGET = bytes(1 if 33 <= c <= 126 and c not in (35, 92) else 0 for c in range(256))
_QUICK_METHODS = frozenset({b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD"})


def _line_end(buf: bytes, i: int) -> int:
    """Where the CR LF that ends the field value (or reason phrase) at ``i`` starts; -1 when a
    control byte (but a tab) or DEL comes first, or the CR has no LF."""
    c = buf[i]
    while c != 13:
        if (c < 32 and c != 9) or c == 127:
            return -1
        i += 1
        c = buf[i]
    return i if buf[i + 1] == 10 else -1


def _header_fields(buf: bytes, i: int, last: int) -> list | None:
    """The ``(name, value)`` of the header lines from ``i`` to the blank line at ``last``: token
    names with the colon right after them, values without their leading blanks; None for any
    other line."""
    tchar = _TCHAR
    headers = []
    while i < last:
        start = i
        while tchar[buf[i]]:
            i += 1
        if i == start or buf[i] != 58:  # an empty name, or not a colon right after the name
            return None
        name = buf[start:i]
        i += 1
        c = buf[i]
        while c == 32 or c == 9:
            i += 1
            c = buf[i]
        end = _line_end(buf, i)
        if end < 0:
            return None
        headers.append((name, buf[i:end]))
        i = end + 2
    return headers


class RequestHeadMemo:
    """What the compiled ``quick_request_head`` keeps of one connection's last plain head, to
    answer the next one whose header lines are the same but for the ``Content-Length`` digits
    with a copy of that head's dict. The twin keeps nothing: it reads every head whole, which
    gives the same answer (the spec the compiled module is held to)."""

    __slots__ = ()


def quick_request_head(data: bytes, memo: RequestHeadMemo | None = None) -> tuple | None:
    """``(method, target, headers, content_length, end, keep_alive, count, header_bytes)`` of
    the plain HTTP/1.1 request head that starts ``data`` (``end`` just past its blank line), else
    None and httptools parses.

    ``headers`` is the dict the front door's ``on_header`` builds from llhttp's callbacks: each
    name decoded as latin-1 and lowercased (names are tokens: ASCII), each value decoded as
    latin-1, the values of a repeated name joined with ``", "`` in the order they came.
    ``count`` is the number of header lines and ``header_bytes`` the total of
    ``len(name) + len(value)`` over them (the bytes received), what the front door's header
    limits count.

    Plain: a common method, an origin-form target of printable ASCII (no ``#``, no ``\\``),
    ``HTTP/1.1``, token header names with the colon right after them, values of printable or
    obs-text bytes and tabs; at most one ``Content-Length`` (1 to 15 digits), no
    ``Transfer-Encoding``, ``Upgrade`` or ``Expect``, at most one ``Connection``, which says
    ``keep-alive`` or ``close``. For such a head llhttp makes the same callbacks with the same
    bytes (``tests/test_server_props.py`` holds the two to the same answer) but at the cost of a
    parser pass and a Python call per callback."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    end += 4
    tchar = _TCHAR
    i = 0
    while tchar[data[i]]:
        i += 1
    method = data[:i]
    if method not in _QUICK_METHODS or data[i] != 32 or data[i + 1] != 47:  # " /"
        return None
    i += 1
    start = i
    target = _TARGET
    while target[data[i]]:
        i += 1
    if data[i : i + 11] != b" HTTP/1.1\r\n":
        return None
    url = data[start:i]
    fields = _header_fields(data, i + 11, end - 2)
    if fields is None:
        return None
    length = -1
    keep_alive = True
    seen = False  # a Connection header
    headers: dict[str, str] = {}
    size = 0
    for name, value in fields:
        low = name.lower()  # ASCII lowercasing: what str.lower() does to a token
        if 6 <= len(name) <= 17:  # as long as one of the names that need a look
            if low == b"content-length":
                if length >= 0 or not value.isdigit() or len(value) > 15:
                    return None
                length = int(value)
            elif low == b"connection":
                token = value.lower()
                if seen or (token != b"keep-alive" and token != b"close"):
                    return None
                seen = True
                keep_alive = token == b"keep-alive"
            elif low == b"transfer-encoding" or low == b"upgrade" or low == b"expect":
                return None
        key = low.decode("latin-1")
        text = value.decode("latin-1")
        old = headers.get(key)
        headers[key] = text if old is None else f"{old}, {text}"
        size += len(name) + len(value)
    return method, url, headers, length if length > 0 else 0, end, keep_alive, len(fields), size


class ResponseHead:
    """A plain response head (``response_head``): the status, the version, the framing (read
    while parsing) and the header fields, the sequence of ``(name, value)`` bytes pairs
    ``quick_response_head`` gives (iteration, ``len``, indexing, ``==`` with a list). The
    compiled module's keeps offsets into the received bytes and makes a pair only when asked for;
    ``value_of`` and ``passed_lines`` read the fields the relay needs without them."""

    __slots__ = ("_pairs", "chunked", "connection", "content_length", "status", "version")

    def __init__(self) -> None:
        raise TypeError("ResponseHead objects come from response_head()")

    @classmethod
    def _of(cls, status: int, version: str, pairs: list[tuple[bytes, bytes]]) -> ResponseHead:
        head = object.__new__(cls)
        head.status = status
        head.version = version
        head._pairs = pairs
        head.chunked = False
        head.content_length = None
        connection = b""
        for name, value in pairs:
            low = name.lower()
            if low == b"content-length":
                head.content_length = int(value)
            elif low == b"transfer-encoding":
                head.chunked = True
            elif low == b"connection":
                connection += b"," + value.lower()
        head.connection = connection
        return head

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The fields as a list of ``(name, value)`` pairs (the same list each time)."""
        return self._pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, k: int | slice) -> Any:
        if isinstance(k, slice):
            return self._pairs[k]
        try:
            return self._pairs[operator.index(k)]
        except IndexError:
            raise IndexError("ResponseHead index out of range") from None

    def __iter__(self):
        return iter(self._pairs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ResponseHead):
            other = other._pairs
        if type(other) is not list:
            return NotImplemented
        return self._pairs == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.version!r}, {self._pairs!r})"

    def value_of(self, name: bytes) -> bytes | None:
        """The value of the first field called ``name`` (lowercase ASCII; the field's name in any
        case), or None."""
        if type(name) is not bytes:
            raise TypeError("value_of() takes bytes")
        for field, value in self._pairs:
            if field.lower() == name:
                return value
        return None

    def passed_lines(self, names: tuple[bytes, ...]) -> str:
        """``name: value\\r\\n`` (the name in the upstream's case, the value as latin-1 text) for
        each field whose name is one of ``names`` (lowercase ASCII bytes), in order; "" for
        none. A value here holds no CR, LF or other control byte but tabs (the parse refused
        them), so the lines are safe to write as they are."""
        if type(names) is not tuple or any(type(n) is not bytes for n in names):
            raise TypeError("passed_lines() takes a tuple of bytes")
        return "".join(
            [
                f"{name.decode('latin-1')}: {value.decode('latin-1')}\r\n"
                for name, value in self._pairs
                if name.lower() in names
            ]
        )


def response_head(buf: bytes, end: int) -> ResponseHead | None:
    """The plain response head ``buf[:end]`` (``end`` just past its blank line) as a
    ``ResponseHead``, else None and httptools decides.

    Plain: ``HTTP/1.1`` or ``HTTP/1.0``, a three-digit status, a reason phrase and header values
    of printable or obs-text bytes and tabs, token names, a colon right after the name; at most
    one ``Content-Length`` (1 to 15 digits) or one ``Transfer-Encoding: chunked``, not both.
    What llhttp gives for such a head is exactly this: each value without its leading blanks,
    with its trailing ones (``tests/test_upstream_props.py`` holds the two to the same answer).
    It costs one pass over the bytes, where httptools costs a parser and a Python call per
    header."""
    if end < 16 or buf[:7] != b"HTTP/1.":
        return None
    minor = buf[7]
    if (minor != 48 and minor != 49) or buf[8] != 32:
        return None
    d0 = buf[9] - 48
    d1 = buf[10] - 48
    d2 = buf[11] - 48
    if not (0 <= d0 <= 9 and 0 <= d1 <= 9 and 0 <= d2 <= 9):
        return None
    c = buf[12]
    if c == 32:  # a reason phrase
        i = _line_end(buf, 13)
    elif c == 13 and buf[13] == 10:
        i = 12
    else:
        return None
    if i < 0:
        return None
    headers = _header_fields(buf, i + 2, end - 2)
    if headers is None:
        return None
    framing = False  # a Content-Length or Transfer-Encoding header
    for name, value in headers:
        if len(name) == 14 or len(name) == 17:  # as long as content-length or transfer-encoding
            low = name.lower()
            if low == b"content-length":
                if framing or not value.isdigit() or len(value) > 15:
                    return None
                framing = True
            elif low == b"transfer-encoding":
                if framing or value.lower() != b"chunked":
                    return None
                framing = True
    return ResponseHead._of(d0 * 100 + d1 * 10 + d2, "1.1" if minor == 49 else "1.0", headers)


def quick_response_head(buf: bytes, end: int) -> tuple | None:
    """``(status, version, headers)`` of ``response_head(buf, end)`` (``headers`` a list of
    ``(name, value)`` bytes pairs), or None."""
    head = response_head(buf, end)
    if head is None:
        return None
    return head.status, head.version, head.pairs()


# ------------------------------------------------------------ the counts of a plain usage object

# The keys usage_counts reads, as bytes (a plain key has no escapes: its bytes are its name), and
# the slot of each in the result: the three counts, then the two details objects, with the count
# read inside each.
_COUNT_SLOTS = {b"prompt_tokens": 0, b"completion_tokens": 1, b"total_tokens": 2}
_DETAILS_SLOTS = {
    b"prompt_tokens_details": (3, b"cached_tokens"),
    b"completion_tokens_details": (4, b"reasoning_tokens"),
}
# prompt, completion, total, cached, reasoning tokens
_UsageCounts = tuple[int | None, int | None, int | None, int | None, int | None]
_MAX_DIGITS = 18  # any 18-digit count fits a C long long, and so does the sum of two
# 1 for each byte a plain string (key or value) holds: printable ASCII but ``"`` and ``\\``.
_PLAIN_STRING = bytes(
    1 if 32 <= c <= 126 and c != _QUOTE and c != _BSLASH else 0 for c in range(256)
)
# The kinds of a plain scalar value.
_K_INT = 0
_K_FLOAT = 1  # plain only where its value is not read
_K_OTHER = 2  # null, true, false, a string


def _string_end(buf: bytes, i: int) -> int:
    """Where the closing quote of the plain string whose first byte is at ``i`` is: printable
    ASCII, no backslash; -1 for any other byte first."""
    plain = _PLAIN_STRING
    while plain[buf[i]]:
        i += 1
    return i if buf[i] == _QUOTE else -1


def _usage_scalar(buf: bytes, i: int) -> tuple[int, int | None, int] | None:
    """``(kind, value, end)`` of the plain scalar at ``i`` (``value`` for an integer only), or
    None. Plain: a non-negative integer (``0`` or no leading zero, at most 18 digits), one with a
    fraction (at most 18 digits each side, no exponent), ``null``, ``true``, ``false``, a plain
    string. What follows is left to the caller: a leading zero, an exponent or a sign fail there,
    where only a blank, a comma or a brace may come."""
    c = buf[i]
    if 48 <= c <= 57:
        start = i
        i += 1
        if c != 48:
            while 48 <= buf[i] <= 57:
                i += 1
        if i - start > _MAX_DIGITS:
            return None
        if buf[i] != 46:  # "."
            return _K_INT, int(buf[start:i]), i
        i += 1
        start = i
        while 48 <= buf[i] <= 57:
            i += 1
        if i == start or i - start > _MAX_DIGITS:
            return None
        return _K_FLOAT, None, i
    if c == _QUOTE:
        i = _string_end(buf, i + 1)
        return None if i < 0 else (_K_OTHER, None, i + 1)
    word = buf[i : i + 4]
    if word == b"true" or word == b"null":
        return _K_OTHER, None, i + 4
    if buf[i : i + 5] == b"false":
        return _K_OTHER, None, i + 5
    return None


def _ws(buf: bytes, i: int) -> int:
    while buf[i] in _JSON_WS:
        i += 1
    return i


def _usage_members(buf: bytes, i: int, target: bytes | None) -> tuple[int | None, int] | None:
    """``(count, end)`` of the plain object whose ``{`` is at ``i``: its members' values are
    plain scalars; ``count`` is the last ``target`` member's value when that is an integer, else
    None; ``end`` is just past the ``}``. None when not plain, or when ``target`` has a fraction."""
    count = None
    i = _ws(buf, i + 1)
    if buf[i] == _RBRACE:
        return count, i + 1
    while True:
        if buf[i] != _QUOTE:
            return None
        start = i + 1
        i = _string_end(buf, start)
        if i < 0:
            return None
        key = buf[start:i]
        i = _ws(buf, i + 1)
        if buf[i] != _COLON:
            return None
        got = _usage_scalar(buf, _ws(buf, i + 1))
        if got is None:
            return None
        kind, value, i = got
        if key == target:
            if kind == _K_FLOAT:
                return None
            count = value
        i = _ws(buf, i)
        c = buf[i]
        if c == _RBRACE:
            return count, i + 1
        if c != 0x2C:  # ","
            return None
        i = _ws(buf, i + 1)


def usage_counts(raw: bytes) -> _UsageCounts | None:
    """``(prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens)`` of an
    OpenAI chat usage object (the bytes of the JSON object, as ``StreamObserver.usage`` holds
    them) when it is a plain one, else None and the caller reads it with orjson and
    ``gwcore.usage.usage_from_openai``, whose answer this is exactly (``tests/test_usage_counts.py``
    holds the two to the same answer).

    Plain: one JSON object with JSON blanks around its tokens and nothing after it; keys of
    printable ASCII without a backslash; values that are non-negative integers (``0`` or no
    leading zero, at most 18 digits), ``null``, ``true``, ``false``, strings like the keys, or
    objects of these (no deeper one, no array). A number with a fraction (no exponent, at most 18
    digits each side; Groq reports its timings so) is plain only where its value is not read: not
    as a count nor as the value of a details key or of the count inside one. A later duplicate key
    replaces an earlier one, as in orjson. A count that is not an integer is None; the total, when
    it is None, is the sum of the prompt and completion counts when both are there."""
    buf = raw + b"\0"  # the compiled function stops at the NUL that ends every bytes object
    counts: list[int | None] = [None] * 5
    i = _ws(buf, 0)
    if buf[i] != _LBRACE:
        return None
    i = _ws(buf, i + 1)
    if buf[i] != _RBRACE:
        while True:
            if buf[i] != _QUOTE:
                return None
            start = i + 1
            i = _string_end(buf, start)
            if i < 0:
                return None
            key = buf[start:i]
            i = _ws(buf, i + 1)
            if buf[i] != _COLON:
                return None
            i = _ws(buf, i + 1)
            slot = _COUNT_SLOTS.get(key)
            details = _DETAILS_SLOTS.get(key)
            if buf[i] == _LBRACE:
                got = _usage_members(buf, i, None if details is None else details[1])
                if got is None:
                    return None
                value, i = got
                if details is not None:
                    counts[details[0]] = value
                elif slot is not None:
                    counts[slot] = None
            else:
                got = _usage_scalar(buf, i)
                if got is None:
                    return None
                kind, value, i = got
                if details is not None:
                    if kind == _K_FLOAT:
                        return None
                    counts[details[0]] = None  # not an object: no count inside
                elif slot is not None:
                    if kind == _K_FLOAT:
                        return None
                    counts[slot] = value  # None unless an integer
            i = _ws(buf, i)
            c = buf[i]
            if c == _RBRACE:
                break
            if c != 0x2C:  # ","
                return None
            i = _ws(buf, i + 1)
    if _ws(buf, i + 1) != len(raw):
        return None
    prompt, completion, total, cached, reasoning = counts
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return prompt, completion, total, cached, reasoning


def _simd(level: int | None = None) -> int:
    """The compiled scanner's line-search width (tests switch it); the twin searches byte by
    byte: always 0, and ``level`` changes nothing."""
    return 0


# ---------------------------------------------------------- the members of a chat request body

_J_MAX_DEPTH = 32  # deeper containers: not plain (orjson's limit is 1024)
_J_MAX_NUMBER = 24  # a longer number token: not plain
_J_RUN = re.compile(rb"[\x20\x21\x23-\x5b\x5d-\x7e]*").match  # what _PLAIN_STRING holds
_J_HIGH = re.compile(rb"[\x80-\xff]+").match
_J_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?([0-9]*))?").match
_J_ESCAPES = frozenset(b'"\\/bfnrt')
_J_HEX = frozenset(b"0123456789abcdefABCDEF")


def _j_string(buf: bytes, i: int) -> tuple[int, bool] | None:
    """``(end, simple)`` of the plain string whose opening quote is at ``i`` (``end`` past the
    closing quote; ``simple``: no escape and no byte above 0x7e), or None. Plain: bytes 0x20 to
    0x7e but the quote and the backslash, the escapes of JSON (``\\u`` not for a surrogate: a
    pair is left to orjson), and whole UTF-8 sequences (RFC 3629: no overlong form, no
    surrogate, nothing above U+10FFFF)."""
    simple = True
    i += 1
    while True:
        i = _J_RUN(buf, i).end()
        c = buf[i]
        if c == _QUOTE:
            return i + 1, simple
        if c == _BSLASH:
            simple = False
            c = buf[i + 1]
            if c == 0x75:  # \uXXXX
                digits = buf[i + 2 : i + 6]
                if len(digits) != 4 or not all(d in _J_HEX for d in digits):
                    return None
                if digits[0] | 0x20 == 0x64 and digits[1] | 0x20 >= 0x38:  # d8-df: a surrogate
                    return None
                i += 6
            elif c in _J_ESCAPES:
                i += 2
            else:
                return None
        elif c >= 0x80:
            simple = False
            end = _J_HIGH(buf, i).end()
            try:
                buf[i:end].decode("utf-8")
            except UnicodeDecodeError:
                return None
            i = end
        else:  # a control character, DEL, or the end
            return None


def _j_value(buf: bytes, i: int, depth: int) -> int:
    """The end of the plain JSON value at ``i`` (no blank before it), or -1. Plain: strings as
    ``_j_string`` reads them, ``true``, ``false``, ``null``, numbers of JSON's grammar of at most
    24 bytes with an exponent of at most two digits (orjson refuses an infinite one), and objects
    and arrays of these, nested at most 32 deep."""
    c = buf[i]
    if c == _QUOTE:
        got = _j_string(buf, i)
        return -1 if got is None else got[0]
    if c == _LBRACE or c == 0x5B:
        if depth >= _J_MAX_DEPTH:
            return -1
        close = c + 2  # "}" or "]"
        i = _ws(buf, i + 1)
        if buf[i] == close:
            return i + 1
        while True:
            if c == _LBRACE:
                if buf[i] != _QUOTE:
                    return -1
                got = _j_string(buf, i)
                if got is None:
                    return -1
                i = _ws(buf, got[0])
                if buf[i] != _COLON:
                    return -1
                i = _ws(buf, i + 1)
            i = _j_value(buf, i, depth + 1)
            if i < 0:
                return -1
            i = _ws(buf, i)
            if buf[i] == close:
                return i + 1
            if buf[i] != 0x2C:
                return -1
            i = _ws(buf, i + 1)
    for word in (b"true", b"null", b"false"):
        if c == word[0]:
            return i + len(word) if buf.startswith(word, i) else -1
    m = _J_NUMBER(buf, i)
    if m is None:
        return -1
    exponent = m.group(1)
    if exponent is not None and not 1 <= len(exponent) <= 2:
        return -1
    return m.end() if m.end() - i <= _J_MAX_NUMBER else -1


def _j_options(buf: bytes, i: int) -> tuple[int, bool]:
    """``(end, asked)`` of the plain ``stream_options`` object at ``i`` (end -1 when it is not
    one); ``asked``: whether its last ``include_usage`` member is ``true``."""
    asked = False
    i = _ws(buf, i + 1)
    if buf[i] == _RBRACE:
        return i + 1, asked
    while True:
        if buf[i] != _QUOTE:
            return -1, asked
        got = _j_string(buf, i)
        if got is None or not got[1]:  # (an escaped key could spell include_usage)
            return -1, asked
        hit = buf[i + 1 : got[0] - 1] == b"include_usage"
        i = _ws(buf, got[0])
        if buf[i] != _COLON:
            return -1, asked
        i = _ws(buf, i + 1)
        if hit:
            asked = buf[i] == 0x74  # true (checked as a value below)
        i = _j_value(buf, i, 2)
        if i < 0:
            return -1, asked
        i = _ws(buf, i)
        if buf[i] == _RBRACE:
            return i + 1, asked
        if buf[i] != 0x2C:
            return -1, asked
        i = _ws(buf, i + 1)


def chat_request_fields(raw: bytes) -> tuple[str, bool, bool] | None:
    """``(model, stream, usage_asked)`` of an OpenAI chat request body when it is a plain one,
    else None, and the caller reads it with orjson (whose errors the client then gets).

    Plain: one JSON object, all of it plain as ``_j_value`` reads it, JSON blanks around its
    tokens and nothing after it, its keys without an escape or a byte above 0x7e; ``model`` a
    non-empty string without either; ``messages`` a non-empty array; ``stream`` absent, ``true``,
    ``false`` or ``null``; ``stream_options`` absent, or an object whose ``include_usage`` is
    ``true`` (then ``usage_asked``), with no escaped key. A later duplicate key replaces an
    earlier one, as in orjson. Whatever this returns, orjson reads the same from the body: a
    document, an object, these members' values (``stream`` as ``bool()`` of them).
    """
    buf = raw + b"\0"  # the compiled function stops at the NUL that ends every bytes object
    model = None
    messages = False
    stream = False
    options = 0  # 0 absent, 1 asks for usage, 2 does not
    i = _ws(buf, 0)
    if buf[i] != _LBRACE:
        return None
    i = _ws(buf, i + 1)
    if buf[i] != _RBRACE:
        while True:
            if buf[i] != _QUOTE:
                return None
            got = _j_string(buf, i)
            if got is None or not got[1]:  # (an escaped key could spell one read here)
                return None
            key = buf[i + 1 : got[0] - 1]
            i = _ws(buf, got[0])
            if buf[i] != _COLON:
                return None
            i = _ws(buf, i + 1)
            if key == b"model":
                got = _j_string(buf, i) if buf[i] == _QUOTE else None
                if got is None or not got[1] or got[0] - i == 2:  # not a plain non-empty string
                    return None
                model = buf[i + 1 : got[0] - 1].decode("latin-1")
                i = got[0]
            elif key == b"messages":
                if buf[i] != 0x5B or buf[_ws(buf, i + 1)] == 0x5D:  # not a non-empty array
                    return None
                messages = True
                i = _j_value(buf, i, 1)
            elif key == b"stream":
                if buf[i] not in b"tfn":  # true, false, null
                    return None
                stream = buf[i] == 0x74
                i = _j_value(buf, i, 1)
            elif key == b"stream_options":
                if buf[i] != _LBRACE:
                    return None
                i, asked = _j_options(buf, i)
                options = 1 if asked else 2
            else:
                i = _j_value(buf, i, 1)
            if i < 0:
                return None
            i = _ws(buf, i)
            if buf[i] == _RBRACE:
                break
            if buf[i] != 0x2C:
                return None
            i = _ws(buf, i + 1)
    if _ws(buf, i + 1) != len(raw) or model is None or not messages or options == 2:
        return None
    return model, stream, options == 1
