"""Shared pytest fixtures.

SSE scanner: ``sse`` runs a test once per implementation (compiled ``gwcore._sse``, with its widest
line search and with SSE2's, and the pure twin ``gwcore._sse_py``); ``sse_pair`` gives both for
differential tests (at both widths). A missing compiled module skips
its cases, except under ``GWCORE_REQUIRE_EXTENSIONS=1`` (CI), where it fails them.
Front door: ``http_impl`` runs a test once with the compiled ``gwcore.server._http`` and once with
its pure-Python source ``gwcore.server._http_py``, by pointing the server runner at that module's
classes (test modules opt in with ``pytestmark = pytest.mark.usefixtures("http_impl")``).
``recorded_dir`` is the folder of recorded upstream responses (``GWCORE_FIXTURES`` overrides it).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

from gwcore._twins import implementation

REQUIRE_EXTENSIONS = os.environ.get("GWCORE_REQUIRE_EXTENSIONS") == "1"
# CI clones the repo into a folder with a copy of ``shared/`` beside the clone.
RECORDED_DIR = Path(
    os.environ.get("GWCORE_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "recorded"
)


def _compiled(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            pytest.fail(f"GWCORE_REQUIRE_EXTENSIONS=1 but {name} does not import: {exc}")
        pytest.skip(f"{name} is not compiled ({exc}); only the pure twin is tested")


def _compiled_sse() -> ModuleType:
    return _compiled("gwcore._sse")


def _sse_width(request: pytest.FixtureRequest, mod: ModuleType, param: str) -> ModuleType:
    """The compiled scanner searches lines with the widest vectors the CPU has (AVX2 on most
    x86-64); "-sse2" runs it with the narrower search every x86-64 has, until the next param."""
    if param.endswith("-sse2"):
        was = mod._simd(1)
        request.addfinalizer(lambda: mod._simd(was))
    return mod


@pytest.fixture(scope="session", params=["cython", "cython-sse2", "python"])
def sse(request: pytest.FixtureRequest) -> ModuleType:
    """The SSE scanner module, once per implementation (the compiled one at both widths)."""
    if request.param == "python":
        return importlib.import_module("gwcore._sse_py")
    return _sse_width(request, _compiled_sse(), request.param)


@pytest.fixture(scope="session", params=["cython", "cython-sse2"])
def sse_pair(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    """(compiled, twin), for tests that compare the two on the same input."""
    return _sse_width(request, _compiled_sse(), request.param), importlib.import_module(
        "gwcore._sse_py"
    )


def use_http(impl: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Make servers started from now on run ``impl`` ("cython" or "python") of the front door."""
    from gwcore.server import runner

    if impl == "cython":
        if implementation(importlib.import_module("gwcore.server.app")) == "python":
            # The compiled front door cimports the compiled Request: it runs with the compiled
            # build only (the run on the twins covers the twin front door).
            pytest.skip("the compiled front door needs the compiled gwcore.server.app")
        module = _compiled("gwcore.server._http")
    else:
        module = importlib.import_module("gwcore.server._http_py")
    monkeypatch.setattr(runner, "HttpProtocol", module.HttpProtocol)
    monkeypatch.setattr(runner, "ServerState", module.ServerState)
    return module


@pytest.fixture(params=["cython", "python"])
def http_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Servers started by this test run on one implementation of the front door."""
    return use_http(request.param, monkeypatch)


@pytest.fixture(scope="session")
def recorded_dir() -> Path:
    if not RECORDED_DIR.is_dir():
        pytest.skip(f"recorded fixtures not found at {RECORDED_DIR} (set GWCORE_FIXTURES)")
    return RECORDED_DIR
