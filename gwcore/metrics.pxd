# Class layouts for the compiled gwcore.metrics (Cython compiles metrics.py in place; the .py is also
# the pure-Python twin). Keep each attribute list in step with the class's __slots__.

from gwcore.usage cimport UsageRecord

cdef class _Histogram:
    cdef public object bounds, buckets, counts, sum, total
    cpdef tally(self, amount)

cdef class _LabelSet:
    cdef public _Histogram duration, ttfb  # typed: each record's tally is a C call
    cdef public object incs, n_cached, n_completion, n_cost, n_prompt, n_reasoning
    cdef public object n_requests, n_unpriced
    cpdef add(self, UsageRecord rec)
