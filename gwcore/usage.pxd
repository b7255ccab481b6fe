# Declarations for the compiled gwcore.usage (Cython compiles usage.py in place; the .py is also the
# pure-Python twin). The helpers a usage record's conversion calls a dozen times per request are
# cpdef: inside the module each call is a C call, from Python they stay callable as before.

cimport cython

cpdef _int(value)
@cython.locals(d=dict)
cpdef _get(obj, key)
cpdef dict _tokens(prompt, completion, total, cached, reasoning)
