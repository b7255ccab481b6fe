"""The gateway's API routes: the hook through which ``build_app`` gets them.

Owns the list of OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``) and ties the
core's ``Gateway`` (providers, upstream pool, usage sink) to the app's lifecycle. Those handlers
live with the code they need (``gwcore.gateway``); this module only registers them. Never holds
request logic of its own.
"""

from __future__ import annotations

from gwcore.gateway import Gateway
from gwcore.server.app import App
from gwcore.server.config import ServerConfig


def install(app: App, config: ServerConfig, gateway: Gateway | None = None) -> Gateway:
    """Register the API routes on ``app``. ``GET /health`` is already there (``App`` adds it)."""
    if gateway is None:
        gateway = Gateway.from_file(config.config_file)
    app.route("POST", "/v1/chat/completions", gateway.chat_completions)
    app.route("GET", "/v1/models", gateway.models)
    app.on_startup.append(gateway.startup)
    app.on_shutdown.append(gateway.shutdown)
    app.gateway = gateway  # type: ignore[attr-defined]
    return gateway
