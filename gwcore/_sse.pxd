# The compiled scanner's layout that other compiled modules call into: gwcore.upstream hands each
# relayed piece to RelayPump.data_received as a C call (cimport), with no Python method lookup or
# argument parsing per piece. The scanner classes stay private to _sse.pyx.

from cpython.object cimport PyObject


# A relay lane (RelayPump.lane_start): what the event loop's read callback works with, without
# the GIL. Pointers into the pump and its observer, which outlive the lane (the upstream
# connection stops it before it lets the pump go); the two transports are held by the lane.
cdef struct LaneState:
    void* up  # the upstream transport's libuv stream, whose read callbacks are the lane's
    PyObject* pump
    PyObject* client  # the client's transport (its handle is checked before each send)
    PyObject* transport  # the upstream's
    Py_ssize_t* events  # the observer's event count
    Py_ssize_t* pieces  # the pump's
    Py_ssize_t max  # the observer's max_event_size
    Py_ssize_t fast  # reads sent on by the lane itself
    void* old_alloc  # uvloop's read callbacks, whose place the lane took (swapped)
    void* old_read
    int fd  # the upstream socket's (the lanes' table index)
    int cfd  # the client socket's
    bint active, reading, ready, swapped


cdef class RelayPump:
    cdef object _observer  # a StreamObserver (cast in _sse.pyx)
    cdef object _write, _owner, _first, _pending, _closing, _client
    cdef public Py_ssize_t pieces
    cdef bint _over, _direct
    cdef int _fd
    cdef LaneState _lane

    cdef bint _socket_free(self) except -1
    cdef int _send(self, bytes out) except -1
    cdef int _send_first(self, bytes head, bytes out) except -1
    cdef bint _lane_ready(self)
    cdef void _lane_slow(self, const char* d, Py_ssize_t n) noexcept
    cdef void _lane_rest(self, const char* d, Py_ssize_t n, Py_ssize_t sent) noexcept
    cdef void _lane_end(self) noexcept

    cpdef data_received(self, bytes data)
    # Once per relayed response, from the upstream connection: C calls.
    cpdef bint lane_start(self, transport)
    cpdef lane_stop(self, bint resume=*)
    cpdef bint lane_pause(self)
    cpdef bint lane_resume(self)
