# Class layouts for the compiled gwcore.upstream (Cython compiles upstream.py in place; the .py is
# also the pure-Python twin). Keep each attribute list in step with the class's __slots__.

cimport cython

from gwcore._sse cimport RelayPump as _CPump

cdef class _HeadParser:
    cdef public object complete, headers

cdef class UpstreamExchange:
    cdef public object _conn, _end, reused

cdef class UpstreamConnection:
    cdef public object _counted, _deadline, _diverted, _exchange, _head_buf, _head_fut, _keep_alive
    cdef public object _listener, _loop, _method, _paused, _pool, _remaining, _rx, _rx_seen, _silent
    cdef public object _state, _transport, _until_close, got_bytes, origin, requests, reused
    cdef object __weakref__

    # The relay's hot path: each piece goes to the pump as a C call.
    @cython.locals(pump=_CPump)
    cpdef data_received(self, data)
    # Once per request, called from inside the class: C calls.
    cpdef _take(self)
    cpdef _send(self, data, listener, method, await_head=*)
    cpdef _data_slow(self, data)
    cpdef _on_head_bytes(self, data)
    cpdef _on_head(self, status, version, headers, buf, end)
    cpdef _start_idle_timer(self)
    cpdef _divert(self, protocol)
    cpdef _undivert(self)

# Per-request helpers: cpdef, so that the calls inside this module are C calls (they stay
# callable from Python with the same signatures).
@cython.locals(names=dict)
cpdef tuple _name(name)
cpdef list strip_hop_by_hop(headers)
cpdef bint _bad_char(text)
cpdef str _header_line(name, value)
@cython.locals(hosts=dict, cache=dict, lines=list)
cpdef bytes build_request(origin, method, path, headers, body, block=*)

@cython.locals(conn=UpstreamConnection)
cpdef _take_idle(op)
cpdef str _http_version(head)
