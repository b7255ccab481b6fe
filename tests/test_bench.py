"""The benchmark harness (``gwcore bench``): its parts in process, whole runs with real processes.

No timing assertions: the runs check that the files are written, that every response was correct
(zero errors) and that the figures are there and positive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from gwcore.benchmark import loadgen, procstat, report, runner, services
from gwcore.benchmark.loadgen import DONE, Exchange, Expect, chat_body, http_request
from gwcore.testing.mock_upstream import MockUpstream

ROOT = Path(__file__).resolve().parents[1]
NO_PIN = services.Pinning(False)


def _stream_exchange(model: str = "mock-model", events: int = 33) -> Exchange:
    return Exchange(http_request("/v1/chat/completions", chat_body(model, True)), Expect(events))


# -- parts ----------------------------------------------------------------------------------------


def test_expect_checks_streams_and_json():
    body = b"data: {}\n\n" * 2 + DONE
    assert Expect(3).check(body) is None
    assert Expect(None).check(body) is None
    assert Expect(4).check(body) == "3 data: events, expected 4"
    assert "does not end" in Expect(3).check(body[:-2])
    assert Expect(json=True).check(b'{"choices":[]}') is None
    assert Expect(json=True).check(b"data: x") == "not a JSON chat completion"


def test_walk_chunked():
    buf = bytearray(b"HEAD" + b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\n\r\n")
    assert loadgen.walk_chunked(buf, 4) == (True, None, [b"hello", b"abc"])
    assert loadgen.walk_chunked(bytearray(b"5\r\nhel"), 0)[:2] == (False, None)
    assert loadgen.walk_chunked(bytearray(b"zz\r\n"), 0)[1] == "bad chunk size line"
    assert loadgen.walk_chunked(bytearray(b"0\r\n\r\nX"), 0)[1] == (
        "bytes after the end of the response"
    )


def test_gap_percentile_counts_events_of_one_read_as_zero_gaps():
    assert loadgen.gap_percentile([0.5], 99, 0.99) == 0.5
    assert loadgen.gap_percentile([0.5], 200, 0.99) == 0.0
    assert loadgen.gap_percentile([], 0, 0.99) != loadgen.gap_percentile([], 0, 0.99)  # nan


def test_summarize_takes_medians_and_sums_counts():
    rounds = {
        ("stream", "gwcore", 1): [
            {"rps": 10.0, "relay_cpu_us": 100.0, "requests": 5, "errors": {"x": 1}},
            {"rps": 30.0, "relay_cpu_us": 300.0, "requests": 7, "errors": {"x": 2, "y": 1}},
            {"rps": 20.0, "relay_cpu_us": None, "requests": 6, "errors": {}},
        ]
    }
    s = report.summarize(rounds)[("stream", "gwcore", 1)]
    assert s["rps"] == 20.0
    assert s["relay_cpu_us"] == 200.0
    assert s["requests"] == 18
    assert s["errors"] == {"x": 3, "y": 1}
    assert s["rps_spread"] == 1.0
    assert s["rounds"] == 3


def _meta(workloads=("stream",), targets=("direct", "gwcore", "nginx"), cs=(1,)):
    return {
        "command": "gwcore bench --x",
        "date": "today",
        "cpu": "cpu",
        "cpus": 2,
        "python": "3",
        "gwcore": "0",
        "scanner": "cython",
        "rounds": 1,
        "duration": 1.0,
        "warmup": 0.0,
        "workloads": list(workloads),
        "concurrency": list(cs),
        "targets": list(targets),
        "titles": {w.name: w.title for w in runner.WORKLOADS.values()},
        "pinning": "p",
        "services": {"gwcore": "g"},
        "params": {
            "events": 33,
            "deltas": 33,
            "model": "m",
            "slow_events": 10,
            "slow_mb": 0.1,
            "hangup": 2,
            "pace": 50,
            "settle": 0.5,
        },
    }


def test_report_first_table_has_ratios_to_direct_and_gwcore():
    fig = {"errors": {}, "rss_peak_mb": 10.0}
    summary = {
        ("stream", "direct", 1): {**fig, "rps": 1000.0, "ttfe_p50_us": 100.0},
        ("stream", "gwcore", 1): {**fig, "rps": 500.0, "ttfe_p50_us": 200.0, "relay_cpu_us": 40.0},
        ("stream", "nginx", 1): {**fig, "rps": 800.0, "ttfe_p50_us": 150.0, "relay_cpu_us": 20.0},
    }
    text = report.render(_meta(), summary, {}, ["a note"])
    first = [line for line in text.splitlines() if line.startswith("| chat streaming relay")]
    assert first[1] == (
        "| chat streaming relay | 1 | gwcore | 500 | 0.50x | 1.00x | 0.20 | 2.00x | 40 | 1.00x "
        "| 10.0 | 0 |"
    )
    assert first[2].split(" | ")[3:6] == ["800", "0.80x", "1.60x"]
    assert first[2].split(" | ")[9] == "0.50x"  # CPU ÷ gwcore
    assert "- a note" in text


def test_chart_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    why = report.chart(_meta(), {}, tmp_path / "chart.png")
    assert "matplotlib is not installed" in why
    assert not (tmp_path / "chart.png").exists()


def test_chart_is_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    summary = {("stream", "gwcore", 1): {"rps": 5.0, "ttfe_p50_us": 100.0, "errors": {}}}
    assert report.chart(_meta(), summary, tmp_path / "chart.png") is None
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"


def test_exchange_for_each_workload_and_target():
    opts = runner.Options()
    gw = services.Service("gwcore", None, 1, 0)
    nginx = services.Service("nginx", None, 1, 0)
    direct = services.Service("direct", None, 1, 0)
    other = services.Service("mine", None, 1, 0, prefix="/api")
    w = runner.WORKLOADS
    assert runner.exchange_for(w["stream"], gw, opts).expect == Expect(33)
    assert runner.exchange_for(w["translated"], gw, opts).expect == Expect(36)
    assert runner.exchange_for(w["translated"], nginx, opts) == "nginx does not translate"
    to_mock = runner.exchange_for(w["translated"], direct, opts)
    assert to_mock.request.startswith(b"POST /v1/messages ")
    assert to_mock.expect.end.startswith(b"event: message_stop")
    assert runner.exchange_for(w["nonstream"], gw, opts).expect.json
    assert runner.exchange_for(w["slow"], gw, opts).expect == Expect(4000)
    foreign = runner.exchange_for(w["stream"], other, opts)
    assert foreign.request.startswith(b"POST /api/v1/chat/completions ")
    assert foreign.expect.events is None  # a foreign gateway may add or merge events


def test_url_targets_are_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        services.url_target("http://192.0.2.1:4000")
    with pytest.raises(ValueError, match="expected"):
        services.url_target("https://127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        svc = services.url_target(f"mine=http://localhost:{port}/v1")
    assert (svc.name, svc.host, svc.port, svc.prefix) == ("mine", "127.0.0.1", port, "")
    assert svc.cpu_pids == [procstat.os.getpid()]  # found by its listening socket


def test_procstat_sees_this_process_and_its_sockets():
    import os

    assert procstat.cpu_seconds(os.getpid()) > 0
    assert procstat.rss_bytes([os.getpid()]) > 0
    assert os.getpid() in procstat.process_tree([os.getppid()])
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert procstat.listening_pids(port) == [os.getpid()]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        client.sendall(b"x" * 1000)
        try:
            deadline = time.monotonic() + 2
            while procstat.tcp_queues(local_port=port)[1] != 1000 and time.monotonic() < deadline:
                time.sleep(0.01)  # loopback delivers at once, almost always
            assert procstat.tcp_queues(local_port=port)[1] == 1000  # unread by the server side
            assert procstat.tcp_queues(remote_port=port)[1] == 0  # the client has nothing to read
        finally:
            conn.close()
            client.close()


def test_command_line_reproduces_the_options():
    opts = runner.Options(
        duration=1,
        concurrency=[1],
        workloads=["stream"],
        targets=["direct"],
        out=Path("o"),
        wrk=False,
        storm_pace_ms=20,
    )
    assert runner.command_line(opts) == (
        "gwcore bench --duration 1 --rounds 3 --concurrency 1 --workloads stream --targets "
        "direct --storm-pace-ms 20 --no-wrk --out o"
    )


# -- the load generator against the in-process mock ------------------------------------------------


def _run(coro):
    return asyncio.run(coro)


def test_load_complete_mode_checks_every_stream():
    async def go():
        async with MockUpstream(events=5, record=False) as mock:
            res = await loadgen.run_load(
                mock.port, 2, 0.05, 0.3, _stream_exchange(events=5), {}, NO_PIN
            )
            bad = await loadgen.run_load(
                mock.port, 1, 0.0, 0.2, _stream_exchange(events=6), {}, NO_PIN
            )
        return res, bad

    res, bad = _run(go())
    assert res["errors"] == {}
    assert res["requests"] > 0 and res["rps"] > 0
    assert 0 < res["ttfe_p50_us"] <= res["ttfe_p99_us"]
    assert res["ttlb_p50_us"] >= res["ttfe_p50_us"]
    assert bad["requests"] == 0
    assert bad["errors"] == {"5 data: events, expected 6": bad["completed"]}


def test_load_storm_mode_hangs_up_and_counts_upstream_connections():
    async def go():
        async with MockUpstream(events=20, pace_ms=20, record=False) as mock:
            res = await loadgen.run_load(
                mock.port,
                2,
                0.0,
                0.5,
                _stream_exchange(events=20),
                {},
                NO_PIN,
                mode="storm",
                hangup_after=2,
                mock_port=mock.port,
            )
            return res, mock.open_connections

    res, still_open = _run(go())
    assert res["errors"] == {}
    assert res["requests"] > 0
    assert res["gap_p99_us"] > 10_000  # paced: the gap between the first two events
    assert res["upstream_opened"] >= res["requests"]  # a new connection per stream
    assert res["upstream_closed"] == res["upstream_opened"]
    assert res["upstream_left_open"] == 0
    assert still_open == 0


def test_mock_stats_count_connections():
    async def go():
        async with MockUpstream(record=False) as mock:
            first = await loadgen.mock_stats(mock.port)
            await loadgen.probe(mock.port, _stream_exchange())
            await asyncio.sleep(0.05)
            return first, await loadgen.mock_stats(mock.port)

    first, second = _run(go())
    assert first == {"connections_opened": 1, "connections_closed": 0, "open_connections": 1}
    assert second == {"connections_opened": 3, "connections_closed": 2, "open_connections": 1}


def test_load_slow_mode_reads_one_event_at_a_time():
    async def go():
        async with MockUpstream(events=3000, record=False) as mock:
            return await loadgen.run_load(
                mock.port,
                2,
                0.0,
                0.6,
                _stream_exchange(events=3000),
                {},
                NO_PIN,
                mode="slow",
                mock_port=mock.port,
                slow_every=0.25,
            )

    res = _run(go())
    assert res["errors"] == {}
    assert res["requests"] == 2
    assert res["rps"] is None
    assert 1 <= res["events_per_stream"] <= 4
    assert res["ttfe_p50_us"] > 0
    assert res["held_at_mock_mb"] > 0  # the mock could not send the rest: the reader is slow


# -- whole runs, real processes -------------------------------------------------------------------


def _bench(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "gwcore.cli", "bench", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "report.md").exists()
    return (out / "report.md").read_text(), json.loads((out / "results.json").read_text())


def test_bench_stream_direct_and_gwcore(tmp_path):
    text, results = _bench(
        tmp_path,
        "--duration",
        "1",
        "--concurrency",
        "1",
        "--workloads",
        "stream",
        "--targets",
        "direct,gwcore",
    )
    assert text.startswith("# gwcore bench\n")
    assert "| chat streaming relay | 1 | gwcore |" in text
    medians = {(m["target"], m["concurrency"]): m for m in results["medians"]}
    assert set(medians) == {("direct", 1), ("gwcore", 1)}
    for m in medians.values():
        assert m["errors"] == {}
        assert m["requests"] > 0 and m["rps"] > 0
        assert m["ttfe_p50_us"] > 0 and m["ttfe_p99_us"] >= m["ttfe_p50_us"]
        assert m["rounds"] == 3
    gw = medians[("gwcore", 1)]
    assert gw["relay_cpu_us"] > 0 and gw["rss_peak_mb"] > 0
    assert 0 <= gw["relay_user_us"] <= gw["relay_cpu_us"]  # the user-space part of it
    assert medians[("direct", 1)]["relay_cpu_us"] is None  # no gateway in between
    assert len(results["rounds"]) == 6
    assert results["meta"]["scanner"] in ("cython", "python")


def test_bench_every_workload_once(tmp_path):
    targets = "direct,gwcore" + (",nginx" if services.nginx_executable() else "")
    text, results = _bench(
        tmp_path,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--rounds",
        "1",
        "--concurrency",
        "2",
        "--workloads",
        "all",
        "--targets",
        targets + ",litellm",
        "--slow-events",
        "600",
        "--storm-pace-ms",
        "20",
        "--no-wrk",
        "--no-chart",
    )
    medians = {(m["workload"], m["target"]): m for m in results["medians"]}
    for (workload, target), m in medians.items():
        assert m["errors"] == {}, (workload, target)
        assert m["requests"] > 0 and m["ttfe_p50_us"] > 0, (workload, target)
    expected = {(w, t) for w in runner.WORKLOADS for t in targets.split(",")}
    if "nginx" in targets:
        expected.discard(("translated", "nginx"))
        assert "nginx: chat streaming translated (Anthropic upstream) skipped" in text
    assert set(medians) == expected
    for target in targets.split(","):
        storm = medians[("storm", target)]
        assert storm["upstream_opened"] > 0
        # closed may exceed opened by the pooled connections of the probes, used and closed
        assert storm["upstream_closed"] + storm["upstream_left_open"] >= storm["upstream_opened"]
    assert medians[("slow", "gwcore")]["rss_peak_mb"] > 0
    if services.litellm_command() is None:
        assert "LiteLLM proxy is not installed: target skipped" in text


SPLIT_ROW = r"\| \w+ \| 1 \| [\d,.]+ \| -?[\d,.]+ \|"  # target, c, user and kernel µs/req


def _short_relay_bench(tmp_path, targets: str, *extra: str) -> str:
    """One short round of bench_relay.py at c=1 over ``targets``: its stdout, once it exited 0
    and every target streamed without an error."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_relay.py"),
            *("--duration", "0.5", "--warmup", "0.2", "--rounds", "1", "--concurrency", "1"),
            *("--targets", targets, "--no-wrk", "--out", str(tmp_path), *extra),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    medians = json.loads((tmp_path / "results.json").read_text())["medians"]
    assert {m["target"] for m in medians} == set(targets.split(","))
    assert all(sum(m["errors"].values()) == 0 for m in medians)
    return proc.stdout


@pytest.mark.skipif(not shutil.which("nginx") and not services.nginx_executable(), reason="nginx")
def test_bench_relay_script_still_runs(tmp_path):
    out = _short_relay_bench(tmp_path, "direct,nginx,gwcore,floor")
    assert "gwcore CPU/req ÷ nginx CPU/req" in out
    assert "| target | c | user µs/req | kernel µs/req |" in out
    split = [line for line in out.splitlines() if re.fullmatch(SPLIT_ROW, line)]
    assert {line.split(" | ")[0] for line in split} == {"| nginx", "| gwcore", "| floor"}


def test_bench_relay_with_real_headers_streams_without_errors(tmp_path):
    """--sdk-headers and --provider-headers: the SDK's request headers and a provider's response
    headers through every target, each stream complete."""
    out = _short_relay_bench(tmp_path, "direct,gwcore", "--sdk-headers", "--provider-headers")
    assert "probe gwcore: OK" in out
    assert "real headers: the SDK's request headers" in out


@pytest.mark.parametrize(
    "script",
    ["bench_translate.py", "bench_ledger.py", "bench_relay_instructions.py", "bench_accounting.py"],
)
def test_other_bench_scripts_import(script):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_bench_relay_runs_gwcore_base_on_another_interpreter(tmp_path):
    """--base-python without --base: gwcore_base is this checkout on that interpreter (here this
    one), and the report says which Python each gwcore ran on."""
    out = _short_relay_bench(tmp_path, "direct,gwcore,gwcore_base", "--base-python", sys.executable)
    version = platform.python_version()
    assert f"gwcore runs on Python {version} (" in out
    assert f"gwcore_base runs on Python {version} (" in out
    assert "gwcore CPU/req ÷ gwcore_base CPU/req" in out


def _three_elided_streams(floor: services.Service, mock_port: int, model: str) -> dict:
    """Three streams through ``floor`` on one kept-alive connection, each checked whole with the
    usage event it asked for elided; returns the usage the mock answers with when asked directly."""
    url = f"http://127.0.0.1:{floor.port}/v1/chat/completions"
    with httpx.Client(timeout=10) as client:
        bodies = [client.post(url, content=chat_body(model, True)).text for _ in range(3)]
        asked = chat_body(model, True)[:-1] + b',"stream_options":{"include_usage":true}}'
        direct = client.post(f"http://127.0.0.1:{mock_port}/v1/chat/completions", content=asked)
    for text in bodies:
        events = [e for e in text.split("\n\n") if e.startswith("data: ")]
        assert len(events) == 33 and events[-1] == "data: [DONE]"
        assert '"choices":[]' not in text and '"usage":{' not in text  # elided
    return next(
        json.loads(e[6:])["usage"]
        for e in direct.text.split("\n\n")
        if e.startswith("data: {") and '"choices":[]' in e
    )


def test_accounted_floor_relays_elides_and_ledgers_each_stream(tmp_path):
    """The accounted floor passes the stream on without the usage event it asked for, and
    stores one priced record a stream with the mock's usage in its SQLite ledger."""
    PRICED = "gpt-4o-mini"  # a model of the built-in price table
    mock = services.start_mock(tmp_path, 33, services.Pinning(False))
    floor = None
    try:
        floor = services.start_floor(tmp_path, mock.port, services.Pinning(False), accounted=True)
        usage = _three_elided_streams(floor, mock.port, PRICED)
        db = tmp_path / "floor_accounted-main.db"
        deadline = time.monotonic() + 10
        rows = []
        while len(rows) < 3 and time.monotonic() < deadline:  # the ledger writes in batches
            time.sleep(0.05)
            with contextlib.closing(sqlite3.connect(db)) as con:
                rows = con.execute(
                    "SELECT requested_model, status, prompt_tokens, completion_tokens,"
                    " total_tokens, cost_nanousd FROM usage_records"
                ).fetchall()
    finally:
        if floor is not None:
            floor.stop()
        mock.stop()
    assert len(rows) == 3
    for model, status, prompt, completion, total, cost in rows:
        assert (model, status) == (PRICED, 200)
        assert (prompt, completion, total) == (
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"],
        )
        assert cost is not None and cost > 0


def test_counted_floor_relays_elides_and_keeps_each_record_in_memory(tmp_path):
    """The counted floor (records in memory, unpriced) passes each stream on without the usage
    event it asked for, and at SIGTERM says it holds one record a stream with the mock's tokens."""
    mock = services.start_mock(tmp_path, 33, services.Pinning(False))
    floor = None
    try:
        floor = services.start_floor(
            tmp_path, mock.port, services.Pinning(False), accounted=True, ledger=False
        )
        assert floor.name == "floor_counted"
        usage = _three_elided_streams(floor, mock.port, "m")
    finally:
        if floor is not None:
            floor.stop()
        mock.stop()
    assert floor.proc.returncode == 0  # stopped by SIGTERM, not killed
    log = floor.log.read_text()
    assert f"3 records in memory, {3 * usage['total_tokens']} tokens in all" in log
    assert not (tmp_path / "floor_counted-main.db").exists()  # no ledger


def test_procstat_names_the_interpreter_of_a_process():
    ldd = shutil.which("ldd")
    text = procstat.interpreter(os.getpid())
    assert text.startswith(f"Python {platform.python_version()} (")
    if ldd is not None:  # the dynamic linker's view, independent of /proc/<pid>/maps
        linked = (
            "libpython"
            in subprocess.run(
                [ldd, os.path.realpath(sys.executable)], capture_output=True, text=True
            ).stdout
        )
        assert text.endswith("(shared libpython)" if linked else "(libpython linked in)")
    assert procstat.interpreter(2**22 + 7) == "unknown"  # no such process


def test_accounting_bench_times_every_piece():
    proc = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "bench_accounting.py")),
            *("--number", "20", "--repeat", "1", "--batches", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if re.fullmatch(r"\| .+ \| [\d,]+ \|", line)]
    pieces = [row.split(" | ")[0][2:] for row in rows]
    assert pieces[0].startswith("scanner: a 34-event stream")
    assert "lane scan: its 32 plain events as one read" in pieces  # the stream's plain events
    assert any(p.startswith("ledger: SQLite insert") for p in pieces)
    assert len(rows) == 9
    ns = {
        piece: int(row.rsplit(" | ", 1)[1].strip(" |").replace(",", ""))
        for piece, row in zip(pieces, rows, strict=True)
    }
    # every piece took time; the kernel's share of the insert is sampled at clock ticks (may be 0)
    assert all(v > 0 for p, v in ns.items() if not p.startswith("of which kernel")), ns


def test_relay_bench_base_needs_a_checkout():
    script = str(ROOT / "bench" / "bench_relay.py")
    for args in (["--base", str(ROOT / "no-such-checkout")], ["--targets", "gwcore,gwcore_base"]):
        proc = subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 2
        assert "--base" in proc.stderr
    proc = subprocess.run(
        [sys.executable, script, "--base-python", "no-such-python-here"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--base-python no-such-python-here: no such interpreter" in proc.stderr


def test_chat_fields_bench_reports_every_size():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_chat_fields.py"),
            "--repeat",
            "1",
            "--number",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| [\d,]+ \|", line)]
    assert len(rows) == 3
    assert all(float(row.split(" | ")[1]) > 0 for row in rows)


def test_unknown_workload_is_a_usage_error():
    proc = subprocess.run(
        [sys.executable, "-m", "gwcore.cli", "bench", "--workloads", "stream,bogus"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown workload(s) bogus" in proc.stderr
