# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""Prometheus metrics: ``GatewayMetrics`` (a usage sink, plus the gauges and counters that records
cannot carry) and its text exposition for ``GET /metrics``.

It owns the metric names, labels and buckets, and multiprocess mode: with several workers,
``prepare_multiprocess`` (called before the workers fork and before any metric exists) gives them
a shared directory (``PROMETHEUS_MULTIPROC_DIR``) where each keeps its values, and a scrape of any
worker adds them all up. Nearly everything is fed from the usage record, once per request: one
cached lookup of the label set and a few plain additions to its tallies, which reach the metrics
when a scrape flushes them (one process) or at once (several workers: a multiprocess increment
writes to a memory-mapped file, no I/O). Never per chunk.

``prometheus_client`` is imported lazily: it picks its value class (in-process or multiprocess)
when first imported, so importing it before ``prepare_multiprocess`` would pin the wrong one.
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import sys
import tempfile
from array import array

from gwcore.usage import SinkBase, UsageRecord

__all__ = ["GatewayMetrics", "prepare_multiprocess", "upstream_error_kind"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_MAX_LABEL_SETS = 10_000  # cached label sets (models come from clients: keep the cache bounded)
_LIVE_FILE = re.compile(r"gauge_live\w*_(\d+)\.db$")
_DISCONNECTED = "client disconnected"


def prepare_multiprocess(workers: int) -> str | None:
    """Set up a metrics directory shared by ``workers`` forked workers; None for one process.

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as is (empty it between runs). A
    directory made here is removed when the process that made it exits.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
    elif workers > 1:
        directory = tempfile.mkdtemp(prefix="gwcore-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        owner = os.getpid()

        def cleanup() -> None:
            if os.getpid() == owner:  # not in a forked worker
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(cleanup)
    else:
        return None
    values = sys.modules.get("prometheus_client.values")
    if values is not None:  # imported before: choose the value class again
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return directory


def upstream_error_kind(rec: UsageRecord) -> str | None:
    """What went wrong upstream, from a usage record; None when nothing did (or the client left).

    ``connect``/``timeout``: no response head came; ``rate_limited``, ``status_4xx``,
    ``status_5xx``: the upstream answered with that; ``stream``: it failed after the head."""
    if rec.route == "demo" or (rec.aborted and rec.error == _DISCONNECTED):
        return None
    status = rec.status
    if rec.ttfb_ms is None:
        if status == 504:
            return "timeout"
        return "connect" if status >= 500 else None
    if status == 429:
        return "rate_limited"
    if status >= 500:
        return "status_5xx"
    if status >= 400:
        return "status_4xx"
    if rec.aborted or rec.error:
        return "stream"
    return None


class _Histogram:
    """One histogram child, fed by bucket index: values are tallied in plain counters and added
    to the child (its ``_sum`` and ``_buckets`` values) when flushed. The bounds and counts are
    arrays of doubles, the total a double (compiled: C doubles, no number object made per
    tally; prometheus_client keeps its values as floats too)."""

    __slots__ = ("bounds", "buckets", "counts", "sum", "total")

    def __init__(self, child) -> None:
        # ends with +Inf: a tally always lands in range
        self.bounds = array("d", child._upper_bounds)
        self.buckets = [b.inc for b in child._buckets]
        self.sum = child._sum.inc
        self.counts = array("d", [0.0]) * len(self.bounds)
        self.total = 0.0

    def tally(self, amount: float) -> None:
        # bisect_left, written out (compiled: a C loop over a dozen doubles): the first bound
        # not below ``amount``, where Histogram.observe puts it.
        bounds = self.bounds
        i = 0
        while bounds[i] < amount:
            i += 1
        self.counts[i] += 1.0
        self.total += amount

    def flush(self) -> None:
        counts = self.counts
        for i in range(len(counts)):
            n = counts[i]
            if n:
                self.buckets[i](n)
                counts[i] = 0.0
        if self.total:
            self.sum(self.total)
            self.total = 0.0


def _inc(child):
    """A counter or gauge child's value increment, without the wrapper's checks (the amounts
    added are never negative and no exemplars are used)."""
    return child._value.inc


class _LabelSet:
    """Every per-record metric for one (provider, model, route, status): plain tallies a record
    adds to, and the children's value increments, bound once, that ``flush`` adds them with.

    A record costs a few additions; a flush (each scrape; each record with several workers, whose
    scrapes read shared files) costs one locked increment per metric that moved, where
    ``Counter.inc``/``Histogram.observe`` would take ten per record. ``prometheus_client``'s value
    objects (``_value``, ``_sum``, ``_buckets``, ``_upper_bounds``) are internal but have been
    stable for years; ``tests/test_metrics.py`` holds the exposition to ``Histogram.observe``'s,
    so a change there fails the tests instead of miscounting."""

    __slots__ = (
        "duration",
        "incs",
        "n_cached",
        "n_completion",
        "n_cost",
        "n_prompt",
        "n_reasoning",
        "n_requests",
        "n_unpriced",
        "ttfb",
    )

    def __init__(self, m: GatewayMetrics, provider: str, model: str, route: str, status: str):
        self.incs = (
            _inc(m.requests.labels(provider, model, route, status)),
            _inc(m.tokens.labels(provider, model, "prompt")),
            _inc(m.tokens.labels(provider, model, "completion")),
            _inc(m.tokens.labels(provider, model, "cached")),
            _inc(m.tokens.labels(provider, model, "reasoning")),
            _inc(m.cost.labels(provider, model)),
            _inc(m.unpriced.labels(provider, model)),
        )
        self.duration = _Histogram(m.duration.labels(provider, route))
        self.ttfb = _Histogram(m.ttfb.labels(provider, route))
        self.n_requests = self.n_prompt = self.n_completion = self.n_cached = 0
        self.n_reasoning = self.n_unpriced = 0
        self.n_cost = 0.0

    def add(self, rec: UsageRecord) -> None:
        """One record's share of every metric, in the plain tallies. (A method, so that the
        compiled build reaches the tallies as the slots of ``self``: C doubles there, like
        prometheus_client's own values, so that no number object is made per record.)"""
        self.n_requests += 1
        duration = rec.duration_ms
        if duration is not None:
            seconds = duration  # (compiled: a C double, as is what tally gets)
            self.duration.tally(seconds / 1000.0)
        ttfb = rec.ttfb_ms
        if ttfb is not None:
            seconds = ttfb
            self.ttfb.tally(seconds / 1000.0)
        prompt = rec.prompt_tokens
        completion = rec.completion_tokens
        if prompt:
            self.n_prompt += prompt
        if completion:
            self.n_completion += completion
        if rec.cached_tokens:
            self.n_cached += rec.cached_tokens
        if rec.reasoning_tokens:
            self.n_reasoning += rec.reasoning_tokens
        cost = rec.cost
        if cost is not None:
            if cost > 0:
                self.n_cost += cost
        elif prompt is not None or completion is not None:
            self.n_unpriced += 1

    def flush(self) -> None:
        tallies = (
            self.n_requests,
            self.n_prompt,
            self.n_completion,
            self.n_cached,
            self.n_reasoning,
            self.n_cost,
            self.n_unpriced,
        )
        for inc, n in zip(self.incs, tallies, strict=True):
            if n:
                inc(n)
        self.n_requests = self.n_prompt = self.n_completion = self.n_cached = 0
        self.n_reasoning = self.n_unpriced = 0
        self.n_cost = 0.0
        self.duration.flush()
        self.ttfb.flush()


class GatewayMetrics(SinkBase):
    """The gateway's metrics (one registry per instance when single-process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gwcore_requests",
            "Chat completion requests by provider, upstream model, route (relay, translated, "
            "demo) and HTTP status (499: the client went away first).",
            ["provider", "model", "route", "status"],
            registry=r,
        )
        self.duration = Histogram(
            "gwcore_request_duration_seconds",
            "Request duration, from the request to the last byte of the response.",
            ["provider", "route"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "gwcore_time_to_first_byte_seconds",
            "Time from the request to the upstream's response head (relay) or first event.",
            ["provider", "route"],
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gwcore_tokens",
            "Tokens reported by the upstream, by type (prompt includes cached, completion "
            "includes reasoning).",
            ["provider", "model", "type"],
            registry=r,
        )
        self.cost = Counter(
            "gwcore_cost_usd",
            "Cost in USD from the pricing table.",
            ["provider", "model"],
            registry=r,
        )
        self.unpriced = Counter(
            "gwcore_unpriced_requests",
            "Requests with token counts but no price for their model (cost unknown).",
            ["provider", "model"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "gwcore_upstream_errors",
            "Upstream failures by kind: connect, timeout, rate_limited, status_4xx, status_5xx, "
            "stream (after the response started).",
            ["provider", "kind"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gwcore_requests_in_flight",
            "Chat completion requests being answered (a stream counts until its last byte).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_queue_depth = Gauge(
            "gwcore_ledger_queue_depth",
            "Usage records waiting to be written to the ledger.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.ledger_dropped = Counter(
            "gwcore_ledger_dropped_records",
            "Usage records dropped because the ledger queue was full.",
            registry=r,
        )
        self.ledger_written = Counter(
            "gwcore_ledger_written_records",
            "Usage records written to the ledger.",
            registry=r,
        )
        self.ledger_write_errors = Counter(
            "gwcore_ledger_write_errors",
            "Failed ledger writes (each is retried).",
            registry=r,
        )
        self.ledger_refused = Counter(
            "gwcore_ledger_refused_records",
            "Usage records the ledger's database refused, by outcome: repaired (stored with the "
            "values it cannot hold replaced), set_aside (in a refused file, not stored).",
            ["outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gwcore_auth_failures",
            "Requests refused by authentication, by reason.",
            ["reason"],
            registry=r,
        )
        self._sets: dict[tuple[str, str, str, str], _LabelSet] = {}
        self._in_flight: set[str] = set()
        self._in_flight_inc = _inc(self.in_flight)

    # ---- the usage sink (once per request)

    def record(self, rec: UsageRecord) -> None:
        r = rec  # compiled: typed (a UsageRecord or None), its fields read as struct members
        # The label set's key holds the status as the int it is (its label, str(status), is
        # made once, with the set): an exact int, else its str (never equal to an int).
        status = r.status
        if r.aborted and r.error == _DISCONNECTED:
            status = 499
        elif type(status) is not int:
            status = str(status)
        key = (r.provider, r.upstream_model, r.route, status)
        s = self._sets.get(key)
        kept = True
        if s is None:
            s = _LabelSet(self, r.provider, r.upstream_model, r.route, str(status))
            kept = len(self._sets) < _MAX_LABEL_SETS
            if kept:
                self._sets[key] = s
        s.add(r)
        # With several workers, a scrape reads the shared files: write them now. A label set
        # past the cache bound is not kept for the next scrape either.
        if self.multiprocess or not kept:
            s.flush()
        if r.error is not None or r.status >= 400:
            kind = upstream_error_kind(r)
            if kind is not None:
                self.upstream_errors.labels(r.provider, kind).inc()
        self.request_ended(r.request_id)

    # ---- in flight: started by the route wrapper, ended by the record (or a failed handler)

    def request_started(self, request_id: str) -> bool:
        in_flight = self._in_flight
        n = len(in_flight)
        in_flight.add(request_id)  # one hash lookup, not two
        if len(in_flight) == n:  # a client reused an x-request-id: count it once
            return False
        if self.multiprocess:  # one process: the scrape reads len(self._in_flight)
            self._in_flight_inc(1)
        return True

    def request_ended(self, request_id: str) -> None:
        in_flight = self._in_flight
        if not self.multiprocess:  # one process: the scrape counts the set
            in_flight.discard(request_id)
        elif request_id in in_flight:
            in_flight.discard(request_id)
            self._in_flight_inc(-1)

    # ---- the ledger writer's hooks (per batch, not per record)

    def ledger_queue(self, depth: int) -> None:
        self.ledger_queue_depth.set(depth)

    def ledger_dropped_records(self, n: int = 1) -> None:
        self.ledger_dropped.inc(n)

    def ledger_written_records(self, n: int) -> None:
        self.ledger_written.inc(n)

    def ledger_write_failed(self) -> None:
        self.ledger_write_errors.inc()

    def ledger_refused_records(self, outcome: str, n: int = 1) -> None:
        self.ledger_refused.labels(outcome).inc(n)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    # ---- exposition

    def flush(self) -> None:
        """Add the records' tallies to the metrics (a scrape does it first)."""
        for s in self._sets.values():
            s.flush()
        if not self.multiprocess:
            self.in_flight.set(len(self._in_flight))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape: this process's registry, or every worker's files."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if not self.multiprocess:
            self.flush()
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        directory = os.environ[MULTIPROC_ENV]
        _forget_dead_workers(directory)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges (in flight, queue depth) of workers that died: a restarted worker
    must not leave its last value in the sum forever."""
    from prometheus_client import multiprocess

    pids: set[int] = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        m = _LIVE_FILE.search(os.path.basename(path))
        if m:
            pids.add(int(m.group(1)))
    for pid in pids:
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
