"""The ``gwcore`` command line: ``gwcore --version``, ``gwcore --help`` and the subcommands.

Each subcommand lives beside the code it runs and registers itself through ``SUBCOMMANDS``: a name
mapped to the dotted path of a module with ``add_arguments(parser)`` and ``run(args) -> int``. The
module is imported only when its subcommand runs, so ``gwcore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gwcore._version import __version__

# name -> (module, one-line help). A module is listed here only once it exists.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("gwcore.server.cli", "Run the gateway's HTTP server."),
    "bench": ("gwcore.benchmark.cli", "Benchmark gwcore against other gateways on loopback."),
}


def _load(module: str):
    return importlib.import_module(module)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gwcore",
        description="gwcore: an OpenAI-compatible AI gateway with a zero-copy streaming relay.",
    )
    parser.add_argument("--version", action="version", version=f"gwcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _load(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 0
    return int(_load(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
