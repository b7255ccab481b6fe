"""``GET /metrics``: Prometheus text that prometheus_client's parser reads, one worker or two."""

from __future__ import annotations

import asyncio
import subprocess

import httpx
import pytest
from ledger_harness import (
    CLEAN_ENV,
    MASTER,
    MODEL,
    PRICE,
    chat,
    clean_env,
    free_port,
    ledger_gateway,
    serve_cmd,
    stream_once,
    wait_http,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from gwcore.metrics import GatewayMetrics, upstream_error_kind
from gwcore.testing import MockUpstream, Scenario, run
from gwcore.usage import UsageRecord

pytestmark = pytest.mark.timeout(60)
clean_settings = CLEAN_ENV


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def total(found: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbl), v in found.items() if n == name and want <= set(lbl))


def test_metrics_after_traffic(tmp_path):
    async def main():
        async with ledger_gateway(f"sqlite:///{tmp_path / 'l.db'}", mock_kwargs={"events": 6}) as h:
            async with h.client() as client:
                for _ in range(3):
                    assert (await stream_once(client)).status_code == 200
                r = await client.post("/v1/chat/completions", json=chat(False))
                usage = r.json()["usage"]
                h.mock.scenarios.append(Scenario.error(429, "slow down"))
                assert (
                    await client.post("/v1/chat/completions", json=chat(False))
                ).status_code == 429
                async with h.client("sk-wrong") as wrong:
                    assert (await wrong.get("/v1/models")).status_code == 401
                await h.ledger.flush()
                r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            found = samples(r.text)
            labels = {"provider": "mock", "model": MODEL, "route": "relay"}
            assert value(found, "gwcore_requests_total", **labels, status="200") == 4
            assert value(found, "gwcore_requests_total", **labels, status="429") == 1
            assert (
                value(
                    found, "gwcore_request_duration_seconds_count", provider="mock", route="relay"
                )
                == 5
            )
            assert (
                value(
                    found, "gwcore_time_to_first_byte_seconds_count", provider="mock", route="relay"
                )
                == 5
            )
            prompt = value(
                found, "gwcore_tokens_total", provider="mock", model=MODEL, type="prompt"
            )
            assert prompt == 4 * usage["prompt_tokens"]
            completion = value(
                found, "gwcore_tokens_total", provider="mock", model=MODEL, type="completion"
            )
            cost = value(found, "gwcore_cost_usd_total", provider="mock", model=MODEL)
            expected = (prompt * PRICE["input"] + completion * PRICE["output"]) / 1e6
            assert cost == pytest.approx(expected)
            assert (
                value(found, "gwcore_upstream_errors_total", provider="mock", kind="rate_limited")
                == 1
            )
            assert value(found, "gwcore_auth_failures_total", reason="invalid") == 1
            assert value(found, "gwcore_requests_in_flight") == 0
            assert value(found, "gwcore_ledger_queue_depth") == 0
            assert value(found, "gwcore_ledger_written_records_total") == 5
            assert value(found, "gwcore_ledger_dropped_records_total") == 0

    run(main(), use_uvloop=True)


def test_in_flight_counts_a_stream_until_its_end(tmp_path):
    async def main():
        async with (
            ledger_gateway(
                f"sqlite:///{tmp_path / 'l.db'}", mock_kwargs={"events": 20, "pace_ms": 20}
            ) as h,
            h.client() as client,
        ):
            task = asyncio.ensure_future(stream_once(client))
            await asyncio.sleep(0.15)
            during = samples((await client.get("/metrics")).text)
            assert value(during, "gwcore_requests_in_flight") == 1
            assert (await task).status_code == 200
            after = samples((await client.get("/metrics")).text)
            assert value(after, "gwcore_requests_in_flight") == 0
            # A request refused before it reaches a handler's record is not left in flight.
            bad = await client.post("/v1/chat/completions", json={"model": MODEL})
            assert bad.status_code == 400
            assert (
                value(samples((await client.get("/metrics")).text), "gwcore_requests_in_flight")
                == 0
            )

    run(main(), use_uvloop=True)


def test_upstream_error_kinds():
    def rec(**kw) -> UsageRecord:
        base = UsageRecord("r", "p", "m", "m", "relay", True)
        for k, v in kw.items():
            setattr(base, k, v)
        return base

    assert upstream_error_kind(rec(status=200, ttfb_ms=1.0)) is None
    assert upstream_error_kind(rec(status=502, error="connect failed")) == "connect"
    assert upstream_error_kind(rec(status=504, error="timeout")) == "timeout"
    assert upstream_error_kind(rec(status=429, ttfb_ms=1.0, error="x")) == "rate_limited"
    assert upstream_error_kind(rec(status=503, ttfb_ms=1.0, error="x")) == "status_5xx"
    assert upstream_error_kind(rec(status=400, ttfb_ms=1.0, error="x")) == "status_4xx"
    assert upstream_error_kind(rec(status=200, ttfb_ms=1.0, aborted=True, error="broken")) == (
        "stream"
    )
    gone = rec(status=200, ttfb_ms=1.0, aborted=True, error="client disconnected")
    assert upstream_error_kind(gone) is None


def test_unpriced_and_unknown_usage():
    m = GatewayMetrics()
    r = UsageRecord("a", "p", "m", "unknown-model", "relay", False, status=200, prompt_tokens=3)
    m.record(r)  # tokens, no price: counted as unpriced, never as zero cost
    m.record(UsageRecord("b", "p", "m", "unknown-model", "relay", False, status=502))
    found = samples(m.render()[0].decode())
    assert value(found, "gwcore_unpriced_requests_total", provider="p", model="unknown-model") == 1
    assert total(found, "gwcore_cost_usd_total") == 0


def test_two_workers_metrics_are_summed(tmp_path):
    """``gwcore serve --workers 2``: a scrape of either worker counts both workers' requests."""
    n = 30

    async def with_mock():
        async with MockUpstream(events=4) as mock:
            config = write_config(
                tmp_path / "gwcore.yaml",
                {
                    "from_env": False,
                    "providers": [
                        {
                            "name": "mock",
                            "type": "openai_compatible",
                            "base_url": mock.base_url,
                            "models": [MODEL],
                        }
                    ],
                    "ledger": {"url": f"sqlite:///{tmp_path / 'l.db'}"},
                },
            )
            port = free_port()
            proc = subprocess.Popen(
                serve_cmd(port, config, workers=2),
                cwd=tmp_path,
                env=clean_env(GWCORE_MASTER_KEY=MASTER),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            try:
                await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/health", proc)
                pids = set()
                for _ in range(n):  # a new connection each time: both workers answer
                    async with httpx.AsyncClient(
                        base_url=f"http://127.0.0.1:{port}",
                        headers={"authorization": f"Bearer {MASTER}"},
                    ) as client:
                        r = await client.post("/v1/chat/completions", json=chat(False))
                        assert r.status_code == 200
                        pids.add(r.headers["x-request-id"][:12])
                assert len(pids) == 2
                for _ in range(4):
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                        found = samples((await client.get("/metrics")).text)
                    assert total(found, "gwcore_requests_total") == n
                    assert value(found, "gwcore_requests_in_flight") == 0
            finally:
                proc.terminate()
                out = (await asyncio.to_thread(proc.communicate, timeout=30))[0].decode()
            assert proc.returncode == 0, out

    run(with_mock())


def test_histograms_and_counters_match_prometheus_own_observe():
    """The bound increments put every value in the bucket ``Histogram.observe`` would, on and
    around each bound, and add the same sums and token counts."""
    from prometheus_client import CollectorRegistry, Histogram

    from gwcore.metrics import DURATION_BUCKETS, TTFB_BUCKETS

    m = GatewayMetrics()
    ref = CollectorRegistry()
    duration = Histogram("d", "d", buckets=DURATION_BUCKETS, registry=ref)
    ttfb = Histogram("t", "t", buckets=TTFB_BUCKETS, registry=ref)
    values = [0.0, 1e-4, *DURATION_BUCKETS, *TTFB_BUCKETS, 0.07, 3.3, 1e4]
    for i, v in enumerate(values):
        nearby = (v, v * (1 + 1e-9), v * (1 - 1e-9))
        for j, x in enumerate(nearby):
            m.record(
                UsageRecord(
                    f"r{i}-{j}", "p", "m", "m", "relay", True, status=200,
                    duration_ms=x * 1000.0, ttfb_ms=x * 1000.0, prompt_tokens=i + 1,
                    completion_tokens=2 * i + 1, cost=0.5,
                )
            )  # fmt: skip
            duration.observe(x)
            ttfb.observe(x)
    found = samples(m.render()[0].decode())
    want = samples(__import__("prometheus_client").generate_latest(ref).decode())
    n = 3 * len(values)
    for ours, theirs in (
        ("gwcore_request_duration_seconds", "d"),
        ("gwcore_time_to_first_byte_seconds", "t"),
    ):
        got = {k[1]: v for k, v in found.items() if k[0] == ours + "_bucket"}
        ref_buckets = {k[1]: v for k, v in want.items() if k[0] == theirs + "_bucket"}
        assert {dict(k)["le"]: v for k, v in got.items()} == {
            dict(k)["le"]: v for k, v in ref_buckets.items()
        }
        assert value(found, ours + "_count", provider="p", route="relay") == n
        assert value(found, ours + "_sum", provider="p", route="relay") == pytest.approx(
            value(want, theirs + "_sum")
        )
    assert value(found, "gwcore_requests_total", provider="p", model="m", route="relay",
                 status="200") == n  # fmt: skip
    tokens = sum(3 * (i + 1) for i in range(len(values)))
    assert value(found, "gwcore_tokens_total", provider="p", model="m", type="prompt") == tokens
    assert value(found, "gwcore_cost_usd_total", provider="p", model="m") == pytest.approx(n * 0.5)


def test_records_past_the_label_set_bound_are_still_counted(monkeypatch):
    monkeypatch.setattr("gwcore.metrics._MAX_LABEL_SETS", 1)
    m = GatewayMetrics()
    for i, model in enumerate(["kept", "not-kept", "not-kept"]):
        m.record(UsageRecord(f"r{i}", "p", model, model, "relay", False, status=200, cost=0.25))
    found = samples(m.render()[0].decode())
    assert value(found, "gwcore_requests_total", provider="p", model="kept", route="relay",
                 status="200") == 1  # fmt: skip
    assert value(found, "gwcore_requests_total", provider="p", model="not-kept", route="relay",
                 status="200") == 2  # fmt: skip
    assert total(found, "gwcore_cost_usd_total") == pytest.approx(0.75)
    m.record(UsageRecord("late", "p", "kept", "kept", "relay", False, status=200))
    found = samples(m.render()[0].decode())  # a later scrape adds what came since
    assert total(found, "gwcore_requests_total") == 4


def test_status_labels_keep_their_text_and_client_aborts_are_499():
    """The label set is found by the status as an int; its label stays ``str(status)``: a bool
    or a float (equal to an int) gets its own label, a client abort is 499."""
    m = GatewayMetrics()

    def rec(i: int, status: object, **kw: object) -> UsageRecord:
        r = UsageRecord(f"r{i}", "p", "m", "m", "relay", False, status=status)  # type: ignore[arg-type]
        for k, v in kw.items():
            setattr(r, k, v)
        return r

    records = [
        rec(0, 1),
        rec(1, True),
        rec(2, True),
        rec(3, 200.0),
        rec(4, 200),
        rec(5, 200, aborted=True, error="client disconnected"),
        rec(6, 499),
        rec(7, 200, aborted=True, error="broken pipe"),
    ]
    for r in records:
        m.record(r)
    found = samples(m.render()[0].decode())
    counts = {
        dict(lbl)["status"]: v for (n, lbl), v in found.items() if n == "gwcore_requests_total"
    }
    assert counts == {"1": 1, "True": 2, "200.0": 1, "200": 2, "499": 2}


def test_in_flight_started_once_per_request_id():
    m = GatewayMetrics()
    assert m.request_started("a") is True
    assert m.request_started("a") is False  # a reused x-request-id counts once
    assert m.request_started("b") is True
    assert value(samples(m.render()[0].decode()), "gwcore_requests_in_flight") == 2
    m.request_ended("a")
    m.request_ended("a")
    m.request_ended("never-started")
    assert value(samples(m.render()[0].decode()), "gwcore_requests_in_flight") == 1
    m.record(UsageRecord("b", "p", "m", "m", "relay", False, status=200))  # the record ends it
    assert value(samples(m.render()[0].decode()), "gwcore_requests_in_flight") == 0
    assert m.request_started("a") is True  # ended: a new request may take the id again
