"""For the ledger, auth, admin and metrics tests: database backends, a gateway with a ledger.

``backend_url(kind, tmp_path)`` gives a fresh, empty database: a SQLite file, or a new PostgreSQL
database on the server named by ``GWCORE_TEST_POSTGRES_URL`` (``.ci/run`` starts one). Without that
variable the PostgreSQL cases skip, except in CI (``CI=true``), where they fail: CI must not skip
them silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import orjson
import pytest

from gwcore.config import parse_config
from gwcore.gateway import Gateway
from gwcore.server import routes
from gwcore.server.app import App
from gwcore.server.config import ServerConfig, Timeouts
from gwcore.server.runner import running_server
from gwcore.testing import MockUpstream

PG_URL = os.environ.get("GWCORE_TEST_POSTGRES_URL", "").strip()
IN_CI = os.environ.get("CI", "").lower() == "true"
MASTER = "sk-test-master-key"
BACKENDS = ["sqlite", "postgres"]
MODEL = "gpt-test"
PRICE = {"input": 2.0, "output": 8.0, "cached_input": 0.5}  # per 1M tokens, for MODEL


def need_postgres() -> str:
    if not PG_URL:
        msg = "GWCORE_TEST_POSTGRES_URL is not set (bash .ci/run starts a PostgreSQL server)"
        if IN_CI:
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)
    return PG_URL


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    con = await asyncpg.connect(url, timeout=10)
    try:
        await con.execute(sql)
    finally:
        await con.close()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new empty database on the test server, dropped afterwards."""
    base = need_postgres()
    name = f"gwcore_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(base, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(base, name)
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def backend_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        with postgres_database() as url:
            yield url


def _db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with backend_url(request.param, tmp_path) as url:
        yield url


def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GWCORE_DATABASE_URL", "GWCORE_LEDGER", "GWCORE_MASTER_KEY", "GWCORE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


# In a test module: ``db_url = DB_URL`` (one test per backend), ``clean = CLEAN_ENV`` (autouse).
DB_URL = pytest.fixture(params=BACKENDS, name="db_url")(_db_url)
CLEAN_ENV = pytest.fixture(autouse=True, name="clean_settings")(_no_ambient_settings)


# ---- an in-process gateway with a ledger, in front of the mock upstream


@dataclass
class LedgerHarness:
    mock: MockUpstream
    gateway: Gateway
    app: App
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ledger(self) -> Any:
        return self.gateway.usage.ledger

    @property
    def store(self) -> Any:
        return self.gateway.usage.ledger.store

    def client(self, key: str | None = MASTER) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10)


def gateway_config(db_url: str, mock: MockUpstream, spill: str, **sections: Any) -> dict[str, Any]:
    ledger = {"url": db_url, "flush_interval_ms": 20, "spill_dir": spill}
    ledger.update(sections.pop("ledger", {}))
    data: dict[str, Any] = {
        "from_env": False,
        "providers": [
            {
                "name": "mock",
                "type": "openai_compatible",
                "base_url": mock.base_url,
                "api_key": "sk-provider-key",
                "models": [MODEL, "gpt-other"],
            }
        ],
        "ledger": ledger,
        "pricing": {MODEL: PRICE},
    }
    data.update(sections)
    return data


@contextlib.asynccontextmanager
async def ledger_gateway(
    db_url: str,
    *,
    master_key: str | None = MASTER,
    mock_kwargs: dict[str, Any] | None = None,
    **sections: Any,
) -> AsyncIterator[LedgerHarness]:
    spill = tempfile.mkdtemp(prefix="gwcore-test-spill-")  # never the working directory
    try:
        async with MockUpstream(**(mock_kwargs or {})) as mock:
            config = parse_config(gateway_config(db_url, mock, spill, **sections), {})
            gateway = Gateway(config, refresh_models=False)
            app = App(ServerConfig(timeouts=Timeouts(drain=1.0)))
            env = {"GWCORE_MASTER_KEY": master_key} if master_key else {}
            routes.install(app, app.config, gateway, environ=env)
            async with running_server(app) as (host, port):
                yield LedgerHarness(mock, gateway, app, host, port)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def chat(stream: bool = True, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


async def stream_once(client: httpx.AsyncClient, body: dict | None = None) -> httpx.Response:
    async with client.stream("POST", "/v1/chat/completions", json=body or chat()) as resp:
        await resp.aread()
    return resp


# ---- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer")


def serve_cmd(port: int, config: Path, workers: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gwcore.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--config",
        str(config),
    ]


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL"))
        and k not in ("GWCORE_CONFIG", "GWCORE_DATABASE_URL", "GWCORE_LEDGER", "GWCORE_MASTER_KEY")
        and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(extra)
    return env


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_bytes(orjson.dumps(data))  # JSON is YAML
    return path
