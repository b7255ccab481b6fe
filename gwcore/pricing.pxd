# Declarations for the compiled gwcore.pricing (Cython compiles pricing.py in place; the .py is also
# the pure-Python twin). PriceTable is an extension type so that pricing a record (once per
# request) is C calls inside the module, with the cimported UsageRecord's fields read as struct
# members. Keep the attribute list in step with PriceTable.__init__.

cimport cython

from gwcore.usage cimport Pricer, UsageRecord

cpdef _cost(price, prompt, completion, cached, reasoning)

cdef class PriceTable(Pricer):
    cdef public dict _prices, _memo
    cdef public object as_of
    cdef object __weakref__
    @cython.locals(key=tuple, memo=dict)
    cpdef lookup(self, provider, kind, model)
    @cython.locals(r=UsageRecord)
    cpdef cost(self, rec, kind=*)
    cpdef _price_tokens(self, price, prompt, completion, cached, reasoning)
