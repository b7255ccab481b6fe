# Declarations for the compiled gwcore.usage (Cython compiles usage.py in place; the .py is also the
# pure-Python twin). The helpers a usage record's conversion calls a dozen times per request are
# cpdef: inside the module each call is a C call, from Python they stay callable as before.
# Modules that cimport UsageRecord read and write its fields as struct members; keep the
# attribute list in step with FIELDS in usage.py.

cimport cython

cdef class UsageRecord:
    cdef public object request_id, provider, requested_model, upstream_model, route, stream
    cdef public object status, prompt_tokens, completion_tokens, total_tokens, cached_tokens
    cdef public object reasoning_tokens, ttfb_ms, duration_ms, created_at, error, aborted
    cdef public object key_id, cost
    cpdef set_tokens(self, tokens)

@cython.locals(rec=UsageRecord)
cpdef UsageRecord new_record(request_id, provider, requested_model, upstream_model, route, stream,
                             key_id)

cpdef _int(value)
@cython.locals(d=dict)
cpdef _get(obj, key)
cpdef dict _tokens(prompt, completion, total, cached, reasoning)

# The sinks a request's record goes through (a Python subclass, the ledger's UsagePipeline,
# keeps its own attributes in a __dict__). A fanout calls the record of a SinkBase (gwcore.metrics'
# GatewayMetrics is one) and the cost of a Pricer (gwcore.pricing's PriceTable) as C methods.
cdef class SinkBase:
    cpdef record(self, rec)

cdef class Pricer:
    cpdef cost(self, rec, kind=*)

cdef class MemorySink(SinkBase):
    cdef public object _records, _append
    cpdef record(self, rec)

cdef class FanoutSink(SinkBase):
    cdef public list sinks
    cdef object __weakref__
    @cython.locals(base=SinkBase)
    cpdef record(self, rec)

cdef class PricedFanout(FanoutSink):
    cdef public object pricing
    cdef public dict kinds
    @cython.locals(r=UsageRecord, pricer=Pricer)
    cpdef record(self, rec)
