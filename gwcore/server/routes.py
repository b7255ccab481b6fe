"""The gateway's routes: the hook through which ``build_app`` gets them.

Owns which routes exist and what guards them: the OpenAI-compatible ``/v1`` routes behind the key
check (``gwcore.auth``), the admin API (``gwcore.admin``, master key only), ``GET /metrics``
(Prometheus text, open like ``/health``), and the startup/shutdown hooks of the gateway, its usage
ledger and its metrics. The handlers live with the code they need; this module only wires them.
Never holds request logic of its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gwcore.admin import AdminAPI
from gwcore.auth import KeyAuth
from gwcore.gateway import Gateway
from gwcore.metrics import GatewayMetrics, prepare_multiprocess
from gwcore.server.app import App, Response
from gwcore.server.config import ServerConfig


def install(
    app: App,
    config: ServerConfig,
    gateway: Gateway | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Gateway:
    """Register the routes on ``app``. ``GET /health`` is already there (``App`` adds it)."""
    env = os.environ if environ is None else environ
    if gateway is None:
        # Before any metric exists and before the workers fork: their shared metrics directory.
        prepare_multiprocess(config.workers)
        gateway = Gateway.from_file(config.config_file)
    usage = getattr(gateway, "usage", None)  # None when the gateway was given its own sink
    metrics = usage.metrics if usage is not None else None
    ledger = usage.ledger if usage is not None else None
    scrape = metrics if metrics is not None else GatewayMetrics()
    auth = KeyAuth.from_env(
        env,
        gateway.config.extra.get("auth"),
        store=ledger.store if ledger is not None else None,
        metrics=scrape,
        registry=gateway.registry,
    )
    admin = AdminAPI(
        ledger.store if ledger is not None else None,
        auth,
        pricing_as_of=usage.pricing.as_of if usage is not None else None,
        flush=ledger.flush if ledger is not None else None,
    )

    app.route(
        "POST",
        "/v1/chat/completions",
        auth.guard(gateway.chat_completions, check_model=True, metrics=metrics),
    )
    app.route("GET", "/v1/models", auth.guard(gateway.models))
    for method, path, handler in admin.routes():
        app.route(method, path, handler)

    def metrics_text(request, channel) -> Response:
        body, content_type = scrape.render()
        return Response(200, body, content_type=content_type)

    app.route("GET", "/metrics", metrics_text)

    if ledger is not None:
        app.on_startup.append(ledger.start)
    app.on_startup.append(auth.startup)
    app.on_startup.append(gateway.startup)
    app.on_shutdown.append(gateway.shutdown)
    if ledger is not None:
        app.on_shutdown.append(ledger.stop)  # after the drain: every record is in the queue
    app.gateway = gateway  # type: ignore[attr-defined]
    app.auth = auth  # type: ignore[attr-defined]
    app.metrics = scrape  # type: ignore[attr-defined]
    return gateway
