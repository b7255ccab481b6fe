"""gwcore: an OpenAI-compatible AI gateway with a zero-copy streaming relay.

The core package holds no server: the front door lives in ``gwcore.server`` and imports from here,
never the other way round.
"""

import os

if os.environ.get("GWCORE_NO_EXTENSIONS"):  # the pure twins, also of modules compiled in place
    from gwcore import _twins

    _twins.install()

from gwcore._version import __version__
from gwcore.errors import GatewayError

__all__ = ["GatewayError", "__version__"]
