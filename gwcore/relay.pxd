# Class layouts for the compiled gwcore.relay (Cython compiles relay.py in place; the .py is also
# the pure-Python twin). Keep the attribute lists in step with the stores in relay.py; subclasses
# written in Python (gwcore.translated) keep their own attributes in a __dict__ as usual.

cimport cython

from gwcore.server._http cimport ResponseChannel
from gwcore.upstream cimport UpstreamExchange, UpstreamPool, _name  # C calls
from gwcore.usage cimport SinkBase, UsageRecord

cdef class Dechunker:
    cdef public object complete, out, parser

cdef class ExchangeResponse:
    cdef public object sink, ready, _recorded, _deferred
    cdef public double started_at  # (perf_counter's seconds: C arithmetic, one float a result)
    cdef public UpstreamExchange exchange
    cdef public ResponseChannel channel  # its methods are C calls here
    cdef public UsageRecord record  # its fields are struct members here
    cdef public object _resend, _retry
    cdef object __weakref__
    cpdef start_exchange(self, UpstreamPool pool, origin, path, headers, body, block=*)
    # Once per request, called from inside the class: C calls.
    cpdef _head_arrived(self, exchange, status)
    cpdef _release(self)
    @cython.locals(base=SinkBase)
    cpdef _record_once(self, tokens)
    cpdef _init_exchange(self, channel, record, sink, started_at)

cdef class RelayedResponse(ExchangeResponse):
    cdef public object stream, elide_usage, observer, _mode, _dechunker, _kept, _feed, _write, _raw
    cpdef _finish(self)
    cpdef _write_record(self)
    cpdef _init_relay(self, stream, elide_usage)

@cython.locals(relay=RelayedResponse)
cpdef RelayedResponse new_relay(channel, record, sink, stream, elide_usage, started_at)
@cython.locals(prefixes=dict, out=list, name=bytes, value=bytes, prefix=str)
cpdef str _passed_lines(headers)
