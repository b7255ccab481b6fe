"""Typed surface of the compiled front door (``gwcore.server._http``): the same API as its source
and pure-Python twin, ``gwcore.server._http_py``."""

from gwcore.server._http_py import HttpProtocol as HttpProtocol
from gwcore.server._http_py import ResponseChannel as ResponseChannel
from gwcore.server._http_py import ServerState as ServerState
from gwcore.server._http_py import encode_headers as encode_headers
from gwcore.server._http_py import header_lines as header_lines

__all__ = ["HttpProtocol", "ResponseChannel", "ServerState", "encode_headers", "header_lines"]
