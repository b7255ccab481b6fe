"""``gwcore serve``: the command line of the front door.

Owns the flags and the logging setup of the server process. Imports nothing heavy at module level:
``gwcore --help`` imports this module.
"""

from __future__ import annotations

import argparse
import logging


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (env GWCORE_HOST; default 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to bind (env PORT; default 8080)")
    parser.add_argument(
        "--workers", type=int, help="worker processes sharing the port (env GWCORE_WORKERS; 1)"
    )
    parser.add_argument("--config", metavar="FILE", help="gateway YAML config (providers, ...)")
    parser.add_argument(
        "--access-log", action="store_true", default=None, help="log one line per request"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def run(args: argparse.Namespace) -> int:
    from gwcore.server.config import ServerConfig
    from gwcore.server.main import build_app
    from gwcore.server.runner import serve

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    config = ServerConfig.from_env(
        host=args.host,
        port=args.port,
        workers=args.workers,
        config_file=args.config,
        access_log=args.access_log,
    )
    return serve(build_app(config), config)
