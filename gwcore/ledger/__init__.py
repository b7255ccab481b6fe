"""The usage ledger: where every usage record is stored, and the gateway's usage pipeline.

It owns the ledger's settings (``GWCORE_DATABASE_URL``, ``GWCORE_LEDGER``, the YAML ``ledger:``
section), the choice of backend (SQLite by default: ``./gwcore.db``; PostgreSQL for a
``postgresql://`` URL) and ``UsagePipeline``, the one sink the gateway's handlers write to: it
prices the record, then hands it to the memory, log, metrics and ledger sinks. Everything here is
once per request, never per chunk, and never waits on the database.

YAML shape (every field optional; the environment wins over the file)::

    ledger:
      enabled: true                 # GWCORE_LEDGER=off disables it
      url: sqlite:///gwcore.db      # GWCORE_DATABASE_URL; or postgresql://user@host:5432/db
      batch_size: 500               # records per write
      flush_interval_ms: 200        # a partial batch waits at most this long
      max_queue: 100000             # records held in memory while the database is away
      shutdown_timeout: 10          # seconds to flush at exit before spilling to a file
      spill_dir: .                  # where records the database refused at exit are kept
      pool_size: 4                  # PostgreSQL connections per worker
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gwcore.config import ConfigError
from gwcore.ledger.store import ApiKey, LedgerStore, UsageFilter
from gwcore.ledger.writer import UsageLedger
from gwcore.pricing import PriceTable
from gwcore.usage import LogSink, PricedFanout, UsageSink

if TYPE_CHECKING:
    from gwcore.config import GatewayConfig
    from gwcore.metrics import GatewayMetrics
    from gwcore.providers import ProviderRegistry

__all__ = [
    "ApiKey",
    "LedgerSettings",
    "LedgerStore",
    "UsageFilter",
    "UsageLedger",
    "UsagePipeline",
    "open_store",
]

log = logging.getLogger("gwcore.ledger")

DEFAULT_URL = "sqlite:///gwcore.db"
_OFF = {"0", "off", "false", "no", "disabled"}


@dataclass(slots=True)
class LedgerSettings:
    enabled: bool = True
    url: str = DEFAULT_URL
    batch_size: int = 500
    flush_interval: float = 0.2  # seconds
    max_queue: int = 100_000
    shutdown_timeout: float = 10.0
    spill_dir: str | None = None  # None: the SQLite file's directory, else the working directory
    pool_size: int = 4

    @classmethod
    def from_config(cls, section: Any, environ: Mapping[str, str]) -> LedgerSettings:
        s = cls()
        if section is not None:
            if not isinstance(section, Mapping):
                raise ConfigError("must be a mapping", "ledger")
            for key, value in section.items():
                at = f"ledger.{key}"
                if key == "enabled":
                    if not isinstance(value, bool):
                        raise ConfigError("must be true or false", at)
                    s.enabled = value
                elif key in ("url", "spill_dir"):
                    if not isinstance(value, str) or not value.strip():
                        raise ConfigError("must be a non-empty string", at)
                    setattr(s, key, value.strip())
                elif key in ("batch_size", "max_queue", "pool_size"):
                    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                        raise ConfigError("must be a positive integer", at)
                    setattr(s, key, value)
                elif key in ("flush_interval_ms", "shutdown_timeout"):
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                        raise ConfigError("must be a positive number", at)
                    if key == "flush_interval_ms":
                        s.flush_interval = value / 1000.0
                    else:
                        s.shutdown_timeout = float(value)
                else:
                    raise ConfigError(
                        "unknown setting (known: enabled, url, batch_size, flush_interval_ms, "
                        "max_queue, shutdown_timeout, spill_dir, pool_size)",
                        at,
                    )
        switch = (environ.get("GWCORE_LEDGER") or "").strip().lower()
        if switch:
            s.enabled = switch not in _OFF
        url = (environ.get("GWCORE_DATABASE_URL") or "").strip()
        if url:
            s.url = url
        if s.spill_dir is None:
            s.spill_dir = (
                os.path.dirname(os.path.abspath(_sqlite_path(s.url))) if _is_sqlite(s.url) else "."
            )
        if s.enabled and not _is_sqlite(s.url) and not _is_postgres(s.url):
            raise ConfigError(
                "use postgresql://... or sqlite:///path (or a file path)", "GWCORE_DATABASE_URL"
            )
        return s


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:") or "://" not in url


def _sqlite_path(url: str) -> str:
    from gwcore.ledger.sqlite import sqlite_path

    try:
        return sqlite_path(url)
    except ValueError as exc:
        raise ConfigError(str(exc), "GWCORE_DATABASE_URL") from None


def open_store(settings: LedgerSettings) -> LedgerStore:
    """The backend for ``settings.url`` (not connected yet: ``open()`` does that)."""
    if _is_postgres(settings.url):
        from gwcore.ledger.postgres import PostgresStore

        return PostgresStore(settings.url, max_size=settings.pool_size)
    from gwcore.ledger.sqlite import SqliteStore

    return SqliteStore(_sqlite_path(settings.url))


def build_ledger(settings: LedgerSettings, metrics: Any = None) -> UsageLedger:
    return UsageLedger(
        open_store(settings),
        batch_size=settings.batch_size,
        flush_interval=settings.flush_interval,
        max_queue=settings.max_queue,
        shutdown_timeout=settings.shutdown_timeout,
        spill_dir=settings.spill_dir,
        metrics=metrics,
    )


class UsagePipeline(PricedFanout):
    """The gateway's usage sink: price the record, then every sink in turn (memory, log,
    metrics, ledger). A failing sink is logged and never stops the others or the request.
    (``record`` is ``PricedFanout``'s, compiled with the usage record.)"""

    def __init__(
        self,
        pricing: PriceTable,
        sinks: Iterable[UsageSink],
        *,
        ledger: UsageLedger | None = None,
        metrics: GatewayMetrics | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(pricing, sinks, kinds)
        self.ledger = ledger
        self.metrics = metrics

    @classmethod
    def from_config(
        cls,
        config: GatewayConfig,
        registry: ProviderRegistry,
        memory: UsageSink,
        environ: Mapping[str, str] | None = None,
    ) -> UsagePipeline:
        from gwcore.metrics import GatewayMetrics

        env = os.environ if environ is None else environ
        pricing = PriceTable.from_config(config.extra.get("pricing"))
        settings = LedgerSettings.from_config(config.extra.get("ledger"), env)
        metrics = GatewayMetrics()
        ledger = build_ledger(settings, metrics) if settings.enabled else None
        if ledger is None:
            log.warning("usage ledger is OFF (GWCORE_LEDGER=off): usage is not stored")
        sinks: list[UsageSink] = [memory, metrics]
        if _truthy(env.get("GWCORE_USAGE_LOG")):
            # One JSON line per request costs more CPU than the whole relay of a stream: opt-in.
            sinks.append(LogSink())
        if ledger is not None:
            sinks.append(ledger)
        kinds = {p.name: p.kind for p in registry}
        return cls(pricing, sinks, ledger=ledger, metrics=metrics, kinds=kinds)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}
