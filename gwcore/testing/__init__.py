"""Test and benchmark helpers that ship with the package: the mock upstream and a loop runner.

Nothing here is imported by the gateway itself; it must never contact anything but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gwcore.testing.mock_upstream import MockUpstream, RecordedRequest, Scenario

__all__ = ["MockUpstream", "RecordedRequest", "Scenario", "recorded_fixture", "run"]

T = TypeVar("T")
_LAZY = ("MockUpstream", "RecordedRequest", "Scenario")


def __getattr__(name: str) -> Any:
    # imported on first use, so ``python -m gwcore.testing.mock_upstream`` runs it only once
    if name in _LAZY:
        from gwcore.testing import mock_upstream

        return getattr(mock_upstream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def run(coro: Coroutine[Any, Any, T], *, use_uvloop: bool = False) -> T:
    """Run ``coro`` on a fresh event loop (asyncio's, or uvloop's when asked) and close it."""
    if use_uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def recorded_fixture(start: str | Path, *parts: str) -> Path | None:
    """The path of a recorded provider fixture (``shared/fixtures/recorded/<parts>``) searched
    upward from ``start``, or None when this checkout has none (tests then skip)."""
    here = Path(start).resolve()
    for parent in [here, *here.parents]:
        candidate = parent.joinpath("shared", "fixtures", "recorded", *parts)
        if candidate.exists():
            return candidate
    return None
