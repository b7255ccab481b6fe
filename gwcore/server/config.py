"""The front door's settings: ``ServerConfig`` and the environment variables it reads.

Owns the defaults for address, workers, limits, timeouts, write-buffer marks, CORS and access
logging. Never reads provider settings: ``config_file`` is only carried through for the modules that
do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

KIB = 1024
MIB = 1024 * KIB


@dataclass
class Limits:
    """Request size limits; each breach has its own status (414, 431, 413)."""

    max_url_bytes: int = 8 * KIB  # request target -> 414
    max_header_bytes: int = 64 * KIB  # all header names + values -> 431
    max_headers: int = 100  # header count -> 431
    max_body_bytes: int = 32 * MIB  # Content-Length or chunked total -> 413


@dataclass
class Timeouts:
    """Seconds. None of them ever ends a response that is being written."""

    header: float = 10.0  # first byte of a request head to its end -> 408, close
    body: float = 60.0  # silence while a request body is being read -> 408, close
    keep_alive: float = 75.0  # idle keep-alive connection -> close
    drain: float = 30.0  # graceful shutdown: how long in-flight responses may take


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    # Client transport write buffer; pause_writing above high, resume_writing below low.
    write_buffer_high: int = 256 * KIB
    write_buffer_low: int = 64 * KIB
    cors_origins: tuple[str, ...] = ()  # empty: CORS off; "*" allows any origin
    access_log: bool = False
    config_file: str | None = None  # the YAML file given to `gwcore serve --config`
    backlog: int = 2048
    server_name: str = "gwcore"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> ServerConfig:
        """Defaults, then ``PORT``/``GWCORE_HOST``/``GWCORE_WORKERS``, then non-None overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("GWCORE_HOST"):
            values["host"] = env["GWCORE_HOST"]
        if env.get("PORT"):
            values["port"] = int(env["PORT"])
        if env.get("GWCORE_WORKERS"):
            values["workers"] = int(env["GWCORE_WORKERS"])
        names = {f.name for f in fields(cls)}
        for key, value in overrides.items():
            if key not in names:
                raise TypeError(f"unknown ServerConfig field {key!r}")
            if value is not None:
                values[key] = value
        config = cls(**values)  # type: ignore[arg-type]
        config.validate()
        return config

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if not 0 < self.write_buffer_low <= self.write_buffer_high:
            raise ValueError("need 0 < write_buffer_low <= write_buffer_high")

    def with_(self, **changes: object) -> ServerConfig:
        return replace(self, **changes)  # type: ignore[arg-type]
