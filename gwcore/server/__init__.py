"""The front door: HTTP/1.1 server, routing to handlers, workers and graceful shutdown.

Owns everything between the client socket and a handler. Never imports the relay, providers or
translators: they plug in as handlers (``App.route``) through ``gwcore.server.routes``. Names are
imported lazily so that ``gwcore --help`` (which imports ``gwcore.server.cli``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gwcore.server.app import DEFERRED, App, Handler, Request, Response, error_response
    from gwcore.server.config import Limits, ServerConfig, Timeouts
    from gwcore.server.protocol import ClientDisconnected, FlowTarget, ResponseChannel
    from gwcore.server.runner import running_server, serve

_EXPORTS = {
    "App": "gwcore.server.app",
    "DEFERRED": "gwcore.server.app",
    "Handler": "gwcore.server.app",
    "Request": "gwcore.server.app",
    "Response": "gwcore.server.app",
    "error_response": "gwcore.server.app",
    "Limits": "gwcore.server.config",
    "ServerConfig": "gwcore.server.config",
    "Timeouts": "gwcore.server.config",
    "ClientDisconnected": "gwcore.server.protocol",
    "FlowTarget": "gwcore.server.protocol",
    "ResponseChannel": "gwcore.server.protocol",
    "running_server": "gwcore.server.runner",
    "serve": "gwcore.server.runner",
}

__all__ = [
    "DEFERRED",
    "App",
    "ClientDisconnected",
    "FlowTarget",
    "Handler",
    "Limits",
    "Request",
    "Response",
    "ResponseChannel",
    "ServerConfig",
    "Timeouts",
    "error_response",
    "running_server",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gwcore.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
