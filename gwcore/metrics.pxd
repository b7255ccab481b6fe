# Class layouts for the compiled gwcore.metrics (Cython compiles metrics.py in place; the .py is also
# the pure-Python twin). Keep each attribute list in step with the class's __slots__.

cimport cython

from gwcore.usage cimport SinkBase, UsageRecord

cdef class _Histogram:
    cdef double[:] bounds, counts
    cdef public object buckets, sum
    cdef public double total
    @cython.locals(i=Py_ssize_t, bounds="double[:]")
    cpdef tally(self, double amount)
    @cython.locals(i=Py_ssize_t, n=cython.double, counts="double[:]")
    cpdef flush(self)

cdef class _LabelSet:
    cdef public _Histogram duration, ttfb  # typed: each record's tally is a C call
    cdef public object incs
    cdef public double n_cached, n_completion, n_cost, n_prompt, n_reasoning
    cdef public double n_requests, n_unpriced
    @cython.locals(seconds=cython.double)
    cpdef add(self, UsageRecord rec)

cdef class GatewayMetrics(SinkBase):
    cdef public object multiprocess, registry, requests, duration, ttfb, tokens, cost, unpriced
    cdef public object upstream_errors, in_flight, ledger_queue_depth, ledger_dropped
    cdef public object ledger_written, ledger_write_errors, ledger_refused, auth_failures
    cdef public object _in_flight_inc
    cdef public dict _sets
    cdef public set _in_flight
    cdef object __weakref__
    # The usage sink and the in-flight count, once per request each
    @cython.locals(r=UsageRecord, s=_LabelSet)
    cpdef record(self, rec)
    @cython.locals(in_flight=set, n=Py_ssize_t)
    cpdef request_started(self, request_id)
    @cython.locals(in_flight=set)
    cpdef request_ended(self, request_id)
