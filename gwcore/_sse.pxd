# The compiled scanner's layout that other compiled modules call into: gwcore.upstream hands each
# relayed piece to RelayPump.data_received as a C call (cimport), with no Python method lookup or
# argument parsing per piece. The scanner classes stay private to _sse.pyx.

cdef class RelayPump:
    cdef object _observer  # a StreamObserver (cast in _sse.pyx)
    cdef object _write, _owner, _first, _pending, _closing
    cdef public Py_ssize_t pieces
    cdef bint _over, _direct
    cdef int _fd

    cdef int _send(self, bytes out) except -1

    cpdef data_received(self, bytes data)
