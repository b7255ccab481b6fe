"""End to end with the official ``openai`` SDK: in-process against the mock, and `gwcore serve`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from gateway_harness import gateway_with_mock

from gwcore.testing import Scenario, run


def test_sdk_streaming_and_not_through_the_relay():
    async def main():
        async with gateway_with_mock(events=10) as h:
            client = openai.AsyncOpenAI(
                base_url=h.base_url + "/v1", api_key="client-key", max_retries=0
            )
            messages = [{"role": "user", "content": "hi"}]
            done = await client.chat.completions.create(model="gpt-test", messages=messages)
            assert done.choices[0].message.content
            assert done.usage.total_tokens > 0

            stream = await client.chat.completions.create(
                model="mock/gpt-test", messages=messages, stream=True
            )
            chunks = [c async for c in stream]
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text
            assert all(c.usage is None for c in chunks)  # the injected usage chunk was elided

            stream = await client.chat.completions.create(
                model="gpt-test",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
            assert chunks[-1].usage is not None and chunks[-1].choices == []
            assert chunks[-1].usage.total_tokens == h.sink.records[-1].total_tokens

            models = await client.models.list()
            assert [m.id for m in models.data] == ["mock/gpt-test"]

            h.mock.scenarios.append(Scenario.error(429, "slow down", type="rate_limit_error"))
            with pytest.raises(openai.RateLimitError, match="slow down"):
                await client.chat.completions.create(model="gpt-test", messages=messages)
            await client.close()

    run(main(), use_uvloop=True)


def test_sdk_unknown_model_with_several_providers():
    async def with_two_providers():
        providers = [
            {"name": "a", "type": "openai_compatible", "models": ["m-a"]},
            {"name": "b", "type": "openai_compatible", "models": ["m-b"]},
        ]
        async with gateway_with_mock(providers=providers) as h:
            client = openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key="k", max_retries=0)
            with pytest.raises(openai.NotFoundError) as info:
                await client.chat.completions.create(
                    model="unknown", messages=[{"role": "user", "content": "x"}]
                )
            assert info.value.body["code"] == "model_not_found"
            done = await client.chat.completions.create(
                model="m-b", messages=[{"role": "user", "content": "x"}]
            )
            assert done.choices[0].message.content
            assert h.sink.records[-1].provider == "b"
            await client.close()

    run(with_two_providers(), use_uvloop=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited early: {proc.returncode}")
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_API_KEY", "_BASE_URL")) and k != "GWCORE_CONFIG"
    }
    env.update(extra)
    return env


@pytest.fixture
def served(tmp_path: Path):
    procs: list[subprocess.Popen] = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_gwcore_serve_demo_model_with_the_sdk(served):
    """The README's first command: no provider key -> the demo model answers, streaming too."""
    port = _free_port()
    proc = served(
        ["-m", "gwcore.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], _clean_env()
    )
    _wait_http(f"http://127.0.0.1:{port}/health", proc)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="anything")
    assert [m.id for m in client.models.list().data] == ["demo/demo-model"]
    done = client.chat.completions.create(
        model="demo-model", messages=[{"role": "user", "content": "hello there"}]
    )
    assert "demo" in done.choices[0].message.content
    assert done.usage.prompt_tokens == 2
    chunks = list(
        client.chat.completions.create(
            model="demo-model",
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    proc.terminate()
    out = proc.communicate(timeout=15)[0].decode()
    assert proc.returncode == 0
    assert "demo model" in out


def test_gwcore_serve_with_config_file_relays_to_mock_process(served, tmp_path: Path):
    mock_port, gw_port = _free_port(), _free_port()
    mock = served(
        ["-m", "gwcore.testing.mock_upstream", "--port", str(mock_port), "--events", "12"],
        _clean_env(),
    )
    _wait_http(f"http://127.0.0.1:{mock_port}/v1/models", mock)
    config = tmp_path / "gwcore.yaml"
    config.write_text(
        "from_env: false\n"
        "providers:\n"
        f"  - {{name: local, type: openai_compatible, base_url: 'http://127.0.0.1:{mock_port}/v1'}}\n"
    )
    proc = served(
        [
            "-m",
            "gwcore.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(gw_port),
            "--config",
            str(config),
        ],
        _clean_env(),
    )
    _wait_http(f"http://127.0.0.1:{gw_port}/health", proc)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{gw_port}/v1", api_key="anything")
    ids = [m.id for m in client.models.list().data]
    assert ids and all(i.startswith("local/") for i in ids)  # fetched from the mock at startup
    chunks = list(
        client.chat.completions.create(
            model=ids[0], messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    with httpx.stream(
        "POST",
        f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        json={"model": ids[0], "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as resp:
        assert resp.headers["x-gwcore-route"] == "relay"
        assert b"data: [DONE]" in resp.read()
