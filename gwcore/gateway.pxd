# Declarations for the compiled gwcore.gateway (Cython compiles gateway.py in place; the .py is also
# the pure-Python twin). The helpers a chat completion calls once each are cpdef: C calls inside
# the module, still callable from Python.

cpdef dict _json_object(raw)
cpdef bytes _with_member(raw, member)
cpdef list _forwarded(headers)

from gwcore.usage cimport new_record  # a C call from here
