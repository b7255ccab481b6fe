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

from gwcore.usage import UsageRecord

__all__ = ["COLUMNS", "MIGRATIONS", "SCHEMA_VERSION", "record_row", "rows_by_nulls"]

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
