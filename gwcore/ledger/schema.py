# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""The ledger schema: its migrations (per backend), the columns of a usage row, a record as a row.

Owns the table layout and its version. A migration is append-only: a released migration is never
edited, a change is a new one. Both backends store the same values, so that they answer the same:
timestamps as float seconds since the epoch, cost as an integer number of nano-dollars (sums are
then exact on both), booleans as booleans (SQLite: 0/1).
"""

from __future__ import annotations

import sys

from gwcore.usage import UsageRecord

__all__ = [
    "COLUMNS",
    "MIGRATIONS",
    "NOT_NULL",
    "SCHEMA_VERSION",
    "record_row",
    "rows_by_nulls",
    "storable_row",
]

# The order of a row tuple, of the INSERT column list, and of the usage log's SELECT.
COLUMNS = (
    "created_at",
    "request_id",
    "key_id",
    "provider",
    "requested_model",
    "upstream_model",
    "route",
    "stream",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_nanousd",
    "ttfb_ms",
    "duration_ms",
    "error",
    "aborted",
)

# The columns that hold no NULL (both backends).
NOT_NULL = frozenset(
    (
        "created_at",
        "request_id",
        "provider",
        "requested_model",
        "upstream_model",
        "route",
        "stream",
        "status",
        "aborted",
    )
)

# PostgreSQL array types of the columns, for the one-statement batch insert (unnest).
PG_ARRAY_TYPES = (
    "float8[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "bool[]",
    "int4[]",
    "int8[]",
    "int8[]",
    "int8[]",
    "int8[]",
    "int8[]",
    "int8[]",
    "float8[]",
    "float8[]",
    "text[]",
    "bool[]",
)

# (version, {"sqlite": [statements], "postgres": [statements]}), in order.
MIGRATIONS: list[tuple[int, dict[str, list[str]]]] = [
    (
        1,
        {
            "sqlite": [
                # Clustered by time: range scans read one slice of one B-tree, inserts append.
                # (created_at, request_id) makes a retried batch a no-op, and keeps two requests
                # that share a client-chosen x-request-id apart.
                """CREATE TABLE usage_records (
                    created_at REAL NOT NULL,
                    request_id TEXT NOT NULL,
                    key_id TEXT,
                    provider TEXT NOT NULL,
                    requested_model TEXT NOT NULL,
                    upstream_model TEXT NOT NULL,
                    route TEXT NOT NULL,
                    stream INTEGER NOT NULL,
                    status INTEGER NOT NULL,
                    prompt_tokens INTEGER,
                    completion_tokens INTEGER,
                    total_tokens INTEGER,
                    cached_tokens INTEGER,
                    reasoning_tokens INTEGER,
                    cost_nanousd INTEGER,
                    ttfb_ms REAL,
                    duration_ms REAL,
                    error TEXT,
                    aborted INTEGER NOT NULL,
                    PRIMARY KEY (created_at, request_id)
                ) WITHOUT ROWID""",
                """CREATE TABLE api_keys (
                    id TEXT PRIMARY KEY,
                    name TEXT,
                    key_hash TEXT NOT NULL UNIQUE,
                    prefix TEXT NOT NULL,
                    models TEXT,
                    created_at REAL NOT NULL,
                    expires_at REAL,
                    revoked_at REAL
                )""",
            ],
            "postgres": [
                """CREATE TABLE usage_records (
                    created_at DOUBLE PRECISION NOT NULL,
                    request_id TEXT COLLATE "C" NOT NULL,
                    key_id TEXT,
                    provider TEXT NOT NULL,
                    requested_model TEXT NOT NULL,
                    upstream_model TEXT NOT NULL,
                    route TEXT NOT NULL,
                    stream BOOLEAN NOT NULL,
                    status INTEGER NOT NULL,
                    prompt_tokens BIGINT,
                    completion_tokens BIGINT,
                    total_tokens BIGINT,
                    cached_tokens BIGINT,
                    reasoning_tokens BIGINT,
                    cost_nanousd BIGINT,
                    ttfb_ms DOUBLE PRECISION,
                    duration_ms DOUBLE PRECISION,
                    error TEXT,
                    aborted BOOLEAN NOT NULL,
                    PRIMARY KEY (created_at, request_id)
                )""",
                """CREATE TABLE api_keys (
                    id TEXT PRIMARY KEY,
                    name TEXT,
                    key_hash TEXT NOT NULL UNIQUE,
                    prefix TEXT NOT NULL,
                    models TEXT,
                    created_at DOUBLE PRECISION NOT NULL,
                    expires_at DOUBLE PRECISION,
                    revoked_at DOUBLE PRECISION
                )""",
            ],
        },
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


_INT64 = 2**63


def _nanos(cost: float | None) -> int | None:
    """A cost in nano-dollars for the ledger's 64-bit column: None for none, and for a cost no
    such column holds (infinite, not a number, past 9.2 billion dollars: a broken count's price),
    which would otherwise fail its whole batch, for ever."""
    if cost is None:
        return None
    nanos = cost * 1e9
    if not -_INT64 < nanos < _INT64:  # (False for NaN too)
        return None
    return round(nanos)


def record_row(rec: UsageRecord) -> tuple:
    """A usage record as a row in ``COLUMNS`` order (cost in nano-dollars, rounded)."""
    cost = rec.cost
    return (
        rec.created_at,
        rec.request_id,
        rec.key_id,
        rec.provider,
        rec.requested_model,
        rec.upstream_model,
        rec.route,
        bool(rec.stream),
        rec.status,
        rec.prompt_tokens,
        rec.completion_tokens,
        rec.total_tokens,
        rec.cached_tokens,
        rec.reasoning_tokens,
        _nanos(cost),
        rec.ttfb_ms,
        rec.duration_ms,
        rec.error,
        bool(rec.aborted),
    )


def rows_by_nulls(rows: list[tuple]) -> dict[int, list[list]]:
    """``rows`` (tuples in ``COLUMNS`` order) grouped by which of their values are ``None``:
    ``{mask: [values, ...]}``, bit ``i`` of ``mask`` set when column ``i`` is NULL, each
    ``values`` the row's other values in order, booleans as 0 and 1.

    For SQLite: its driver binds int, float and str at once, but passes every other value (None,
    a bool) through its adapter protocol first, about a thousand instructions each, nine per row
    or so. A statement that names only a group's non-NULL columns binds none of those."""
    groups: dict[int, list[list]] = {}
    for row in rows:
        mask = 0
        bit = 1
        values = []
        for value in row:
            if value is None:
                mask |= bit
            elif value is True:
                values.append(1)
            elif value is False:
                values.append(0)
            else:
                values.append(value)
            bit <<= 1
        group = groups.get(mask)
        if group is None:
            groups[mask] = [values]
        else:
            group.append(values)
    return groups


_INT_BOUNDS = {"int4[]": 2**31, "int8[]": 2**63}
_FLOAT_MAX = sys.float_info.max


def _storable(kind: str, value):
    """``value`` itself when a column of ``kind`` (its PostgreSQL array type) holds it on both
    backends, else the nearest value one does: text as valid UTF-8 without NUL (U+FFFD for each
    character that is not), a whole number in the column's range, a finite float, a boolean; None
    (NULL) for anything else."""
    if value is None:
        return None
    if kind == "text[]":
        text = value if type(value) is str else str(value)
        if "\x00" not in text:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                pass
            else:
                return value if text is value else text
        # Lone surrogates become U+FFFD (a pair that is two code points becomes its character).
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text.replace("\x00", "\ufffd")
    if kind == "bool[]":
        if value is True or value is False:
            return value
        return bool(value) if type(value) is int and value in (0, 1) else None
    if kind == "float8[]":
        if type(value) is float or type(value) is int:
            return value if -_FLOAT_MAX <= value <= _FLOAT_MAX else None  # (False for NaN too)
        return None
    bound = _INT_BOUNDS[kind]
    if type(value) is float and value.is_integer():
        value = int(value)
    elif type(value) is not int:
        return None
    return value if -bound <= value < bound else None


def storable_row(row: tuple) -> tuple[tuple, list[str]] | None:
    """A row the database refused (``COLUMNS`` order), with each value that neither backend's
    column holds replaced by the nearest one that does (see ``_storable``): ``(row, names of the
    columns replaced)``; None when a column that holds no NULL would need one."""
    values = []
    replaced = []
    for name, kind, value in zip(COLUMNS, PG_ARRAY_TYPES, row, strict=True):
        new = _storable(kind, value)
        if new is None and name in NOT_NULL:
            return None
        if new is not value:
            replaced.append(name)
        values.append(new)
    return tuple(values), replaced
