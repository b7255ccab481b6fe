# Class layout for the compiled gwcore.server.app (Cython compiles app.py in place; the .py is also
# the pure-Python twin). Keep the attribute list in step with Request.__init__ in app.py.

cdef class Request:
    cdef public object method, path, query, headers, body, request_id, client, http_version
    cdef public object key_id, key_models
    cdef public object _handler, _error, _close, _complete, _expect, _head, _keep_alive
    cdef public object _started_at
    cdef dict __dict__  # what else a handler keeps on the request
