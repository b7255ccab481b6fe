# Declarations for the compiled gwcore.ledger.schema (Cython compiles schema.py in place; the .py is
# also the pure-Python twin). Typed locals make the per-row loop of rows_by_nulls C arithmetic and
# C-level list and dict calls.

cimport cython

from gwcore.usage cimport UsageRecord

cpdef tuple record_row(UsageRecord rec)

@cython.locals(groups=dict, row=tuple, values=list, group=list, mask=cython.ulonglong,
               bit=cython.ulonglong)
cpdef dict rows_by_nulls(rows)
