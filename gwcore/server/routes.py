"""The gateway's API routes: the hook through which ``build_app`` gets them.

Owns the list of OpenAI-compatible routes (``/v1/chat/completions``, ``/v1/models``, ...). Those
handlers live with the code they need (relay, providers); this module only registers them. Never
holds request logic of its own.
"""

from __future__ import annotations

from gwcore.server.app import App
from gwcore.server.config import ServerConfig


def install(app: App, config: ServerConfig) -> None:
    """Register the API routes on ``app``. ``GET /health`` is already there (``App`` adds it)."""
    # The chat and models routes are registered here, e.g.
    #   app.route("POST", "/v1/chat/completions", chat_completions)
