"""The modules Cython compiles in place (``gwcore._twins.COMPILED_IN_PLACE``: the relay, the
upstream pool, the gateway's handlers, usage, metrics, auth, providers) have their own source as
pure-Python twin. This suite imports the compiled build; here the whole suite (but the wheel builds
and this file) runs again in a fresh interpreter with ``GWCORE_NO_EXTENSIONS=1``, where every
module is its twin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


def test_the_suite_passes_on_the_pure_twins():
    env = {k: v for k, v in os.environ.items() if k != "GWCORE_REQUIRE_EXTENSIONS"}
    env["GWCORE_NO_EXTENSIONS"] = "1"
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib; from gwcore._twins import COMPILED_IN_PLACE, implementation; "
            "print(*{implementation(importlib.import_module(m)) for m in COMPILED_IN_PLACE})",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["python"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            "-m",
            "not wheel",
            "--ignore",
            str(Path(__file__).resolve()),
            str(ROOT / "tests"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, tail
    assert " passed" in tail and " failed" not in tail
