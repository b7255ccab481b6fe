"""The one error type of the gateway and its OpenAI JSON shape.

Handlers raise ``GatewayError``; the front door renders it with ``to_json`` and never shows a client
a traceback. Nothing here does I/O.
"""

from __future__ import annotations

import orjson

_DEFAULT_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """An error a client sees: an HTTP status and the OpenAI error object."""

    __slots__ = ("code", "message", "param", "status", "type")

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,  # the OpenAI field is called "type"
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _DEFAULT_TYPES.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        self.code = code
        self.param = param

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def __repr__(self) -> str:
        return (
            f"GatewayError({self.status}, {self.message!r}, type={self.type!r}, code={self.code!r})"
        )
