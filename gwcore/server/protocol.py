"""The one import switch for the front door's connection code: ``gwcore.server._http``, compiled by
Cython from ``gwcore/server/_http_py.py`` with the class layouts of ``_http.pxd``, or that same
source interpreted (``gwcore.server._http_py``, the pure-Python twin).

Everything else imports ``HttpProtocol``, ``ResponseChannel``, ``ServerState`` and
``header_lines`` from here.
``GWCORE_NO_EXTENSIONS=1`` forces the twin at import time; a missing compiled module falls back to
it, and ``IMPLEMENTATION`` says which one is in use ("cython" or "python"). This module only
chooses: no wrappers, so the hot path pays nothing for the switch.
"""

from __future__ import annotations

import os

from gwcore.server.app import ClientDisconnected, FlowTarget

if os.environ.get("GWCORE_NO_EXTENSIONS"):
    from gwcore.server._http_py import HttpProtocol, ResponseChannel, ServerState, header_lines

    IMPLEMENTATION = "python"
else:
    try:
        from gwcore.server._http import HttpProtocol, ResponseChannel, ServerState, header_lines

        IMPLEMENTATION = "cython"
    except ImportError:  # no compiler at install time: the twin keeps the package working
        from gwcore.server._http_py import HttpProtocol, ResponseChannel, ServerState, header_lines

        IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION",
    "ClientDisconnected",
    "FlowTarget",
    "HttpProtocol",
    "ResponseChannel",
    "ServerState",
    "header_lines",
]
