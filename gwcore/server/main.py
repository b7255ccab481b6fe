"""Assembling the gateway's app: ``build_app(config)``.

Owns which routes and hooks make up the gateway. Never serves anything itself: ``serve`` does.
"""

from __future__ import annotations

from gwcore.server import routes
from gwcore.server.app import App
from gwcore.server.config import ServerConfig


def build_app(config: ServerConfig | None = None) -> App:
    """The gateway: ``GET /health`` plus whatever ``gwcore.server.routes.install`` registers."""
    app = App(config)
    routes.install(app, app.config)
    return app
