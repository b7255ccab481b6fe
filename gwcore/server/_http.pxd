# Class layouts for ``gwcore.server._http``: Cython compiles ``_http_py.py`` (the pure-Python twin,
# run as is when nothing is compiled) into that module, and these declarations make its three
# classes extension types whose attributes are C slots instead of instance dictionaries. Keep the
# attribute lists in step with the ``self.x = ...`` stores of ``_http_py.py``: a store to a name
# missing here fails in the compiled module only (the tests run both builds).

cimport cython

from gwcore.server.app cimport Request

cdef class ServerState:
    cdef public object app, config, loop, routes, connections
    cdef public object max_url, max_header_bytes, max_headers, max_body, head_guard
    cdef public object write_high, write_low
    # seconds: C doubles (a deadline is set a few times per request, no float object made)
    cdef public double header_timeout, body_timeout, keep_alive_timeout
    cdef public object cors_any, cors_origins, access_log, shutting_down
    cdef public object _server_line, _second, common, common_bytes
    cdef public double now
    cdef public str id_prefix
    cdef public unsigned long long next_id
    cdef public object _tick_interval, _tick_handle
    cdef object __weakref__
    @cython.locals(n=cython.ulonglong)
    cpdef str new_request_id(self)

cdef class HttpProtocol

cdef class ResponseChannel:
    cdef public HttpProtocol _proto
    cdef public Request request
    cdef public object write_raw, started, disconnected, chunked
    cdef public object _ended, _done, _keep_alive, _status, _flow_target, _callbacks, _task, _held
    cdef object __weakref__

    # What a relayed response calls once each: C calls from the modules that cimport this type.
    @cython.locals(statuses=dict, keep_alive=bint, connection=str)
    cpdef start(self, status, headers, bint chunked=*, content_length=*, bint hold=*)
    cpdef write_held(self, data)
    cpdef take_held(self)
    cpdef flush_head(self)
    cpdef write(self, data)
    cpdef end(self, bint terminator_sent=*)
    cpdef set_flow_target(self, target)
    cpdef on_disconnect(self, callback)
    cpdef int direct_fd(self) except? -2

cdef class HttpProtocol:
    cdef public ServerState _state
    cdef public object _loop, _routes
    cdef public double _header_timeout, _keep_alive_timeout, _deadline
    cdef public object _cors, _parser
    cdef public object transport, _write, _client, _url, _headers
    # sizes and counts: C integers
    cdef public Py_ssize_t _max_body, _max_url, _max_headers, _max_header_bytes
    cdef public Py_ssize_t _nheaders, _header_bytes, _head_bytes, _body_size
    cdef public Request _req
    cdef public list _body  # typed: its append is a C call
    cdef public object _in_head, _discard_body, _pending, _active
    cdef public object _dispatching, _stopped, _eof, _lingering, _last_request, _closing
    cdef public object _write_paused, _read_paused, _drain_waiter, _deadline_408
    cdef public object _quick, _head_memo
    cdef public int _direct_fd
    cdef object __weakref__

    # Once or twice per request, called from inside the class or from its ResponseChannel (whose
    # _proto is typed): C calls.
    @cython.locals(expect=bint, too_big=bint)
    cpdef _expect_body(self, Request req, dict headers, Py_ssize_t length)
    @cython.locals(req=Request)
    cpdef _dispatch_pending(self)
    cpdef _set_reading(self, reading)
    cpdef _serve(self, Request req)
    cpdef _handler_returned(self, channel, result)
    cpdef _response_done(self, channel)
    cpdef _cors_lines(self, req)
    # httptools callbacks (they stay Python-callable), with their dictionaries typed
    @cython.locals(names=dict, headers=dict)
    cpdef on_header(self, bytes name, bytes value)
    cpdef on_headers_complete(self)
    @cython.locals(headers=dict, known_methods=dict, url=bytes, raw_path=bytes, mark=Py_ssize_t,
                   path=str, routes=dict, methods=dict, req=Request)
    cpdef _head_done(self, bytes raw_method, keep_alive, version, Py_ssize_t length)
    @cython.locals(quick=tuple, end=Py_ssize_t, length=Py_ssize_t)
    cpdef bint _quick_request(self, bytes data)
    cpdef on_url(self, url)
    cpdef on_body(self, body)
    cpdef on_message_complete(self)

cpdef str header_lines(headers)
