# Declarations for the compiled gwcore.gateway (Cython compiles gateway.py in place; the .py is also
# the pure-Python twin). The helpers a chat completion calls once each are cpdef: C calls inside
# the module, still callable from Python. Gateway is an extension type: its handler reads the
# request, the usage record and the relayed response as structs (cimported types).

cimport cython

from gwcore.relay cimport RelayedResponse, new_relay
from gwcore.server.app cimport Request
from gwcore.usage cimport UsageRecord, new_record

cdef class _Plan:
    cdef readonly str name, path, stream_block, plain_block
    cdef readonly bint demo, relay
    cdef readonly object origin
    cdef readonly frozenset dropped

cdef class Gateway:
    cdef public object config, registry, pool, memory, usage, sink, refresh_models
    cdef public dict _plans
    cdef object __weakref__
    @cython.locals(body=dict, record=UsageRecord, relay=RelayedResponse, plan=_Plan, fields=tuple,
                   headers=list)
    cpdef chat_completions(self, Request request, channel)
    @cython.locals(plan=_Plan, plans=dict)
    cpdef _Plan _plan(self, provider)

cpdef dict _chat_body(raw)
cpdef dict _json_object(raw)
@cython.locals(out=list, kept=list, name=str, value=str, low=str, verdicts=dict, k=Py_ssize_t,
               items=dict, sets=dict)
cpdef list _forwarded(headers, frozenset dropped)
@cython.locals(volatile=set, rest=list, stable=list, key=tuple, cache=dict, known=str, seen=dict,
               values=set, pairs=list, k=Py_ssize_t)
cpdef tuple _client_lines(str block, list forwarded)
@cython.locals(shape=tuple, seen=bint, forwarded=list, rest=list, shapes=dict, items=tuple,
               lines=str)
cpdef tuple _client_head(str block, headers, frozenset dropped, client=*)
@cython.locals(shape=tuple)
cpdef _known_shape(headers, frozenset dropped, str block, client=*)
@cython.locals(k=Py_ssize_t, want=object)
cpdef bint _same_items(dict headers, tuple items)
@cython.locals(verdicts=dict, items=list, name=str, value=str, low=str)
cpdef _shape_items(headers, frozenset dropped)
