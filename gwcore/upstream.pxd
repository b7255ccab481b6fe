# Class layouts for the compiled gwcore.upstream (Cython compiles upstream.py in place; the .py is
# also the pure-Python twin). Keep each attribute list in step with the class's __slots__.

cimport cython

from gwcore._sse cimport RelayPump as _CPump

cdef class _HeadParser:
    cdef public object complete, headers

cdef class UpstreamConnection

cdef class UpstreamExchange:
    cdef public UpstreamConnection _conn
    cdef public object _end, reused
    # What the relay calls once per request: C calls from modules that cimport this type.
    cpdef release(self)
    cpdef close(self)
    cpdef divert(self, protocol)

cdef class UpstreamPool

cdef class UpstreamConnection:
    cdef public object _counted, _deadline, _diverted, _exchange, _head_buf, _head_fut, _keep_alive
    cdef public int _fd
    cdef public object _laned
    cdef public object _listener, _loop, _method, _paused, _remaining, _rx, _rx_seen, _silent
    cdef public UpstreamPool _pool
    cdef public object _state, _transport, _until_close, got_bytes, origin, requests, reused
    cdef object __weakref__

    # The relay's hot path: each piece goes to the pump as a C call.
    @cython.locals(pump=_CPump)
    cpdef data_received(self, data)
    # Once per request, called from inside the class: C calls.
    cpdef _take(self)
    cpdef release(self)
    cpdef close(self)
    @cython.locals(exchange=UpstreamExchange)
    @cython.locals(fd=int, sent=Py_ssize_t)
    cpdef _send(self, data, listener, method, await_head=*)
    cpdef _data_slow(self, data)
    cpdef _on_head_bytes(self, data)
    @cython.locals(size=Py_ssize_t)
    cpdef _on_head(self, status, version, headers, buf, end)
    cpdef _start_idle_timer(self)
    @cython.locals(pump=_CPump)
    cpdef _divert(self, protocol)
    cpdef _undivert(self)
    @cython.locals(pump=_CPump)
    cpdef _unlane(self, bint resume)

# Per-request helpers: cpdef, so that the calls inside this module are C calls (they stay
# callable from Python with the same signatures).
@cython.locals(names=dict)
cpdef tuple _name(name)
cpdef list strip_hop_by_hop(headers)
cpdef bint _bad_char(text)
cpdef str _header_line(name, value)
@cython.locals(starts=dict, known=tuple, fields=dict, lines=list, text=str, framed=bint)
cpdef bytes build_request(origin, method, path, headers, body, block=*)
@cython.locals(hosts=dict)
cpdef tuple _head_start(origin, method, path, block)
@cython.locals(cache=dict, fields=dict)
cpdef _header_lines(headers, list lines)
cpdef bytes _finish(list lines, body, bint framed)

cdef class _OriginPool:
    cdef public list idle
    cdef public object open, connecting, waiters

cdef class UpstreamPool:
    cdef public object max_per_origin, connect_timeout, header_timeout, idle_timeout
    cdef public object keepalive_idle, max_buffered_body, _ssl_context, _closed, _tick_handle
    cdef public object _tick_every
    cdef public dict _origins
    cdef public set _watched
    cdef dict __dict__  # tests replace a method on an instance
    cdef object __weakref__
    # Once per relayed request each: C calls from inside the module and from the relay.
    @cython.locals(op=_OriginPool, conn=UpstreamConnection)
    cpdef send_now(self, origin, method, path, headers, body, listener, block=*)
    @cython.locals(op=_OriginPool)
    cpdef _idle(self, origin)
    @cython.locals(op=_OriginPool)
    cpdef _put_idle(self, UpstreamConnection conn)
    cpdef _watch(self, UpstreamConnection conn)
    @cython.locals(op=_OriginPool)
    cpdef _forget(self, UpstreamConnection conn)

cpdef _wake(_OriginPool op)
@cython.locals(conn=UpstreamConnection)
cpdef _take_idle(_OriginPool op)
cpdef str _http_version(head)
