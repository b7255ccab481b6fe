"""The modules Cython compiles in place (``gwcore.relay``, ``gwcore.upstream``) have their source
as pure-Python twin. This suite imports the compiled build; here the tests that drive those modules
run again in a fresh interpreter with ``GWCORE_NO_EXTENSIONS=1``, where every module is its twin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every test file that sends a request through the relay or the upstream pool.
TWIN_TESTS = [
    "test_relay.py",
    "test_upstream.py",
    "test_upstream_props.py",
    "test_translate_e2e.py",
    "test_e2e_sdk.py",
    "test_errors.py",
    "test_providers.py",
]

pytestmark = pytest.mark.timeout(600)


def test_relay_and_upstream_tests_pass_on_the_pure_twins():
    env = {k: v for k, v in os.environ.items() if k != "GWCORE_REQUIRE_EXTENSIONS"}
    env["GWCORE_NO_EXTENSIONS"] = "1"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import gwcore.relay as r, gwcore.upstream as u; "
            "from gwcore._twins import implementation as i; print(i(r), i(u))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["python", "python"]
    tests = [str(ROOT / "tests" / name) for name in TWIN_TESTS]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
