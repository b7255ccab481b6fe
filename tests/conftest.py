"""Shared pytest fixtures.

SSE scanner: ``sse`` runs a test once per implementation (compiled ``gwcore._sse`` and the pure twin
``gwcore._sse_py``); ``sse_pair`` gives both for differential tests. A missing compiled module skips
its cases, except under ``GWCORE_REQUIRE_EXTENSIONS=1`` (CI), where it fails them.
``recorded_dir`` is the folder of recorded upstream responses (``GWCORE_FIXTURES`` overrides it).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

REQUIRE_EXTENSIONS = os.environ.get("GWCORE_REQUIRE_EXTENSIONS") == "1"
# CI clones the repo into a folder with a copy of ``shared/`` beside the clone.
RECORDED_DIR = Path(
    os.environ.get("GWCORE_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "recorded"
)


def _compiled_sse() -> ModuleType:
    try:
        return importlib.import_module("gwcore._sse")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"GWCORE_REQUIRE_EXTENSIONS=1 but gwcore._sse does not import: {exc}")
        pytest.skip(f"gwcore._sse is not compiled ({exc}); only the pure twin is tested")


@pytest.fixture(scope="session", params=["cython", "python"])
def sse(request: pytest.FixtureRequest) -> ModuleType:
    """The SSE scanner module, once per implementation."""
    if request.param == "cython":
        return _compiled_sse()
    return importlib.import_module("gwcore._sse_py")


@pytest.fixture(scope="session")
def sse_pair() -> tuple[ModuleType, ModuleType]:
    """(compiled, twin), for tests that compare the two on the same input."""
    return _compiled_sse(), importlib.import_module("gwcore._sse_py")


@pytest.fixture(scope="session")
def recorded_dir() -> Path:
    if not RECORDED_DIR.is_dir():
        pytest.skip(f"recorded fixtures not found at {RECORDED_DIR} (set GWCORE_FIXTURES)")
    return RECORDED_DIR
