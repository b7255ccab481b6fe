# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""What handlers see: ``Request``, ``Response``, the ``Handler`` type and ``App`` (the route table).

Owns routing by exact path and method (404, 405 with ``Allow``), the default ``GET /health`` route
and the rendering of every error a client sees from the front door (``error_response``). Never
touches a socket: the protocol in ``gwcore.server.protocol`` drives all I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gwcore.errors import GatewayError
from gwcore.server.config import ServerConfig

if TYPE_CHECKING:
    from gwcore.server.protocol import ResponseChannel

__all__ = [
    "DEFERRED",
    "App",
    "ClientDisconnected",
    "FlowTarget",
    "Handler",
    "Request",
    "Response",
    "error_response",
    "status_line",
]


class ClientDisconnected(ConnectionError):
    """Raised by ``ResponseChannel.drain()`` once the client has gone away."""


class FlowTarget(Protocol):
    """What ``ResponseChannel.set_flow_target`` pauses while the client does not read."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class Request:
    """One parsed request; its body was read in full (and size-checked) before the handler runs.

    An extension type in the compiled module (``app.pxd``: the fields below are C slots, read as
    struct members by the compiled front door and gateway); other attributes a handler sets go
    to the instance's ``__dict__``, as in the twin."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    client: tuple[str, int] | None
    http_version: str
    key_id: str | None  # set by authentication: the key's id, or "master"
    key_models: Any  # set by authentication: the key's model allow-list (None: any model)

    def __init__(
        self,
        method: str = "GET",
        path: str = "/",
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        request_id: str = "",
        client: tuple[str, int] | None = None,
        http_version: str = "1.1",
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = {} if headers is None else headers
        self.body = body
        self.request_id = request_id
        self.client = client
        self.http_version = http_version
        self.key_id = None
        self.key_models = None
        # Front-door bookkeeping, not for handlers.
        self._handler: Handler | None = None
        self._error: Response | None = None  # answer with this instead of running a handler
        self._close = False  # close the connection after answering (framing lost or rejected)
        self._complete = False  # the whole body has arrived
        self._expect = False  # the client waits for "100 Continue"
        self._head = False  # HEAD: headers only
        self._keep_alive = True
        self._started_at = 0.0

    def json(self) -> Any:
        """The body parsed as JSON; malformed JSON is a 400 in the OpenAI shape."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"request body is not valid JSON: {exc}") from None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path} id={self.request_id}>"


class Response:
    """A complete, non-streaming response. The server adds framing and the common headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type

    @classmethod
    def json(
        cls, obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        return cls(status, orjson.dumps(obj), headers)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class _Deferred:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


# What a plain handler returns when callbacks it arranged will finish the response (``start()`` and
# ``end()``, ``send()``, or ``abort()`` on the channel): no task waits for it. It must also have
# registered ``channel.on_disconnect`` for a client that leaves before then.
DEFERRED: Any = _Deferred()

# A handler is usually ``async def``; a plain function returning a Response (or None after driving
# the channel, or DEFERRED) is also accepted and runs inline, without a task.
Handler = Callable[
    ["Request", "ResponseChannel"],
    Awaitable[Response | None] | Response | None,
]


def error_response(err: GatewayError, headers: list[tuple[str, str]] | None = None) -> Response:
    """The one rendering of an error for a client: its status and the OpenAI error JSON."""
    return Response(err.status, err.to_json(), headers)


def internal_error() -> Response:
    return error_response(GatewayError(500, "internal server error", type="server_error"))


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_HEALTH = Response(200, b'{"status":"ok"}')


def health(request: Request, channel: ResponseChannel) -> Response:
    """``GET /health``: the process serves HTTP. Inline handler: no task, no allocation."""
    return _HEALTH


class App:
    """Routes (exact path, then method) and the startup/shutdown hooks run in each worker."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self.routes: dict[str, dict[str, Handler]] = {}
        self.on_startup: list[Callable[[], Awaitable[None]]] = []
        self.on_shutdown: list[Callable[[], Awaitable[None]]] = []
        self._allow: dict[str, str] = {}
        self.route("GET", "/health", health)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on exactly ``path`` (no patterns, no query)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        self.routes.setdefault(path, {})[method.upper()] = handler
        methods = set(self.routes[path])
        if "GET" in methods:
            methods.add("HEAD")
        methods.add("OPTIONS")
        self._allow[path] = ", ".join(sorted(methods))

    def allow(self, path: str) -> str:
        """The ``Allow`` header value for a known path ("" for an unknown one)."""
        return self._allow.get(path, "")
