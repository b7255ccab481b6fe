"""Modules compiled in place: Cython builds them from their own ``.py`` source (with the class
layouts of the ``.pxd`` beside it) into an extension module of the same name, which Python then
imports instead of the source. The source stays the pure-Python twin.

``GWCORE_NO_EXTENSIONS=1`` at import time must reach the twin, so ``gwcore/__init__.py`` installs
``SourceFirst`` then: for these modules it finds the ``.py`` before the compiled file.
``implementation(module)`` says which one a module is ("cython" or "python").
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

COMPILED_IN_PLACE = frozenset(
    {
        "gwcore.auth",
        "gwcore.gateway",
        "gwcore.ledger.schema",
        "gwcore.ledger.writer",
        "gwcore.metrics",
        "gwcore.pricing",
        "gwcore.providers",
        "gwcore.relay",
        "gwcore.server.app",
        "gwcore.upstream",
        "gwcore.usage",
    }
)


class SourceFirst(importlib.abc.MetaPathFinder):
    """Import the modules of ``COMPILED_IN_PLACE`` from their ``.py`` source."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in COMPILED_IN_PLACE or not path:
            return None
        stem = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, stem + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install() -> None:
    if not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst())


def implementation(module: ModuleType) -> str:
    return "python" if (module.__file__ or "").endswith(".py") else "cython"
