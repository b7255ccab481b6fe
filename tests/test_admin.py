"""The admin API's usage answers: right, filtered, paginated, and the same from both backends."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from pathlib import Path

import pytest
from ledger_harness import CLEAN_ENV, DB_URL, backend_url, ledger_gateway, need_postgres

from gwcore.admin import parse_time
from gwcore.errors import GatewayError
from gwcore.ledger.schema import record_row
from gwcore.testing import run
from gwcore.usage import UsageRecord

pytestmark = pytest.mark.timeout(60)
db_url = DB_URL
clean_settings = CLEAN_ENV
U = "/admin/api/v1/usage"
DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _records() -> list[UsageRecord]:
    """A varied month of traffic: providers, models, keys, errors, unknown prices and usage,
    and several records sharing a timestamp (pagination must break those ties)."""
    out = []
    providers = [("mock", "gpt-test"), ("mock", "gpt-other"), ("other", "claude-x")]
    keys = ["key_a", "key_b", "master", None]
    for i in range(47):
        provider, model = providers[i % 3]
        status = 200 if i % 11 else (429 if i % 2 else 502)
        has_usage = status == 200 and i % 13 != 5
        cost = None if model == "claude-x" or not has_usage else (i * 37 + 11) / 1e6
        rec = UsageRecord(
            request_id=f"r{(i * 7) % 47:03d}",
            provider=provider,
            requested_model=model if i % 4 else f"{provider}/{model}",
            upstream_model=model,
            route="relay",
            stream=bool(i % 2),
            status=status,
            prompt_tokens=100 + i if has_usage else None,
            completion_tokens=20 + 3 * i if has_usage else None,
            total_tokens=120 + 4 * i if has_usage else None,
            cached_tokens=(i % 5) * 10 if has_usage else None,
            reasoning_tokens=i % 3 if has_usage else None,
            ttfb_ms=12.5 + i,
            duration_ms=250.25 + i,
            created_at=T0 + (i // 3) * 0.37 * DAY + (0 if i % 3 else 0.0),  # ties in threes
            error=None if status == 200 else "upstream said no",
            aborted=i % 17 == 0,
            key_id=keys[i % 4],
            cost=cost,
        )
        out.append(rec)
    return out


RECORDS = _records()


def _totals(recs: list[UsageRecord]) -> dict:
    def s(name):
        return sum(getattr(r, name) or 0 for r in recs)

    return {
        "requests": len(recs),
        "errors": sum(1 for r in recs if r.status >= 400),
        "aborted": sum(1 for r in recs if r.aborted),
        "prompt_tokens": s("prompt_tokens"),
        "completion_tokens": s("completion_tokens"),
        "total_tokens": s("total_tokens"),
        "cached_tokens": s("cached_tokens"),
        "reasoning_tokens": s("reasoning_tokens"),
        "cost_usd": sum(round(r.cost * 1e9) for r in recs if r.cost is not None) / 1e9,
        "unpriced_requests": sum(1 for r in recs if r.cost is None),
    }


def _day(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d")


@contextlib.asynccontextmanager
async def _seeded(url: str):
    async with ledger_gateway(url) as h:
        await h.store.write([record_row(r) for r in RECORDS])
        async with h.client() as client:
            yield client


QUERIES = [
    f"{U}/summary",
    f"{U}/summary?provider=mock",
    f"{U}/summary?model=gpt-test&key_id=key_a",
    f"{U}/summary?since=2026-01-03&until=2026-01-06T12:00:00Z",
    f"{U}/daily",
    f"{U}/daily?provider=other",
    f"{U}/models",
    f"{U}/models?since={T0 + 2 * DAY}",
    f"{U}/log?limit=1000",
    f"{U}/log?limit=5&model=mock/gpt-test",
    f"{U}/log?provider=mock&key=key_b",
]


async def _answers(client) -> list:
    out = [(await client.get(q)).json() for q in QUERIES]
    out.append(await _walk(client, 7))
    return out


async def _walk(client, limit: int) -> list[dict]:
    entries, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"{U}/log", params=params)).json()
        entries += page["data"]
        assert page["has_more"] == (page["next_cursor"] is not None)
        if not page["has_more"]:
            return entries
        cursor = page["next_cursor"]


def test_usage_answers(db_url):
    async def main():
        async with _seeded(db_url) as client:
            r = await client.get(f"{U}/summary")
            assert r.status_code == 200
            body = r.json()
            assert body["object"] == "usage.summary" and body["pricing_as_of"]
            assert {k: body[k] for k in _totals(RECORDS)} == _totals(RECORDS)

            mock = [r for r in RECORDS if r.provider == "mock"]
            body = (await client.get(f"{U}/summary", params={"provider": "mock"})).json()
            assert {k: body[k] for k in _totals(mock)} == _totals(mock)
            assert body["filters"]["provider"] == "mock"

            chosen = [r for r in RECORDS if r.upstream_model == "gpt-test" and r.key_id == "key_a"]
            body = (await client.get(f"{U}/summary?model=gpt-test&key_id=key_a")).json()
            assert body["requests"] == len(chosen) > 0

            lo, hi = parse_time("2026-01-03", "since"), parse_time("2026-01-06T12:00:00Z", "u")
            window = [r for r in RECORDS if lo <= r.created_at < hi]
            body = await client.get(f"{U}/summary?since=2026-01-03&until=2026-01-06T12:00:00Z")
            assert body.json()["requests"] == len(window) > 0

            days = defaultdict(list)
            for rec in RECORDS:
                days[_day(rec.created_at)].append(rec)
            body = (await client.get(f"{U}/daily")).json()
            assert body["data"] == [{"date": d, **_totals(days[d])} for d in sorted(days)]

            by_model = defaultdict(list)
            for rec in RECORDS:
                by_model[(rec.provider, rec.upstream_model)].append(rec)
            data = (await client.get(f"{U}/models")).json()["data"]
            assert {(m["provider"], m["model"]) for m in data} == set(by_model)
            for m in data:
                assert {k: m[k] for k in _totals([])} == _totals(
                    by_model[m["provider"], m["model"]]
                )
            assert [m["cost_usd"] for m in data] == sorted(
                (m["cost_usd"] for m in data), reverse=True
            )

            everything = await _walk(client, 7)
            expected = sorted(RECORDS, key=lambda r: (r.created_at, r.request_id), reverse=True)
            assert [e["request_id"] for e in everything] == [r.request_id for r in expected]
            first = everything[0]
            rec = expected[0]
            assert first["cost_usd"] == (None if rec.cost is None else round(rec.cost * 1e9) / 1e9)
            assert first["stream"] is rec.stream and first["aborted"] is rec.aborted
            assert first["ttfb_ms"] == rec.ttfb_ms and first["created_at"] == rec.created_at

            r = await client.get(f"{U}/log", params={"model": "mock/gpt-test"})
            assert {e["requested_model"] for e in r.json()["data"]} == {"mock/gpt-test"}

    run(main(), use_uvloop=True)


def test_identical_answers_from_sqlite_and_postgres(tmp_path: Path):
    need_postgres()

    async def answers(url: str) -> list:
        async with _seeded(url) as client:
            return await _answers(client)

    with backend_url("sqlite", tmp_path) as lite, backend_url("postgres", tmp_path) as pg:
        sqlite_answers = run(answers(lite))
        postgres_answers = run(answers(pg))
    assert sqlite_answers[0]["requests"] == len(RECORDS)
    for query, a, b in zip([*QUERIES, "walk"], sqlite_answers, postgres_answers, strict=True):
        assert a == b, query


def test_bad_parameters_are_400(db_url):
    async def main():
        async with _seeded(db_url) as client:
            for query, param in [
                ("summary?since=yesterday", "since"),
                ("log?limit=0", "limit"),
                ("log?limit=x", "limit"),
                ("log?cursor=nope", "cursor"),
                ("summary?provider=a&provider=b", "provider"),
            ]:
                r = await client.get(f"{U}/{query}")
                assert r.status_code == 400, query
                assert r.json()["error"]["param"] == param
            r = await client.post("/admin/api/v1/keys", content=b"[1]")
            assert r.status_code == 400
            r = await client.post("/admin/api/v1/keys", json={"colour": "red"})
            assert r.status_code == 400 and r.json()["error"]["param"] == "colour"

    run(main(), use_uvloop=True)


def test_admin_needs_the_master_key(tmp_path):
    async def main():
        async with ledger_gateway(f"sqlite:///{tmp_path / 'l.db'}") as h:
            for key in (None, "sk-wrong"):
                async with h.client(key) as client:
                    for path in (f"{U}/summary", f"{U}/log", "/admin/api/v1/keys"):
                        r = await client.get(path)
                        assert r.status_code == 401
                        assert r.json()["error"]["type"] == "authentication_error"

    run(main(), use_uvloop=True)


def test_ledger_off_admin_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("GWCORE_LEDGER", "off")

    async def main():
        async with ledger_gateway(f"sqlite:///{tmp_path / 'l.db'}") as h, h.client() as client:
            assert h.gateway.usage.ledger is None
            r = await client.get(f"{U}/summary")
            assert r.status_code == 503 and r.json()["error"]["code"] == "ledger_off"
            r = await client.post("/admin/api/v1/keys", json={})
            assert r.status_code == 503
        assert not (tmp_path / "l.db").exists()

    run(main(), use_uvloop=True)


def test_parse_time():
    assert parse_time("1767225600", "since") == T0
    assert parse_time("2026-01-01", "since") == T0
    assert parse_time("2026-01-01T00:00:00Z", "since") == T0
    assert parse_time("2026-01-01T01:00:00+01:00", "since") == T0
    assert parse_time("2026-01-01T00:00:00", "since") == T0
    with pytest.raises(GatewayError):
        parse_time("nan", "since")


def test_database_away_admin_answers_503_quickly(tmp_path):
    async def main():
        async with (
            ledger_gateway(f"sqlite:///{tmp_path / 'l.db'}", ledger={"shutdown_timeout": 0.3}) as h,
            h.client() as client,
        ):

            async def down(*args):
                raise OSError("database is away")

            h.store.summary = down
            h.ledger.record(RECORDS[0])  # queued; the flush before the answer is bounded
            h.ledger.store.write = down
            started = asyncio.get_running_loop().time()
            r = await client.get(f"{U}/summary")
            assert r.status_code == 503 and r.json()["error"]["code"] == "ledger_unavailable"
            assert asyncio.get_running_loop().time() - started < 3

    run(main(), use_uvloop=True)
