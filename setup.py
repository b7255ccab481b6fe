"""Build the optional C extensions; fall back to the pure-Python twins when that is impossible.

Cython (a build requirement) compiles ``gwcore/_sse.pyx``, ``gwcore/server/_http_py.py`` (with the
class layouts of ``gwcore/server/_http.pxd``) into ``gwcore.server._http``, and the per-request
modules of ``gwcore._twins.COMPILED_IN_PLACE`` in place (``relay``, ``upstream`` and others with
``.pxd`` class layouts; ``upstream`` cimports ``gwcore/_sse.pxd``). An sdist ships the generated
``.c``, so a machine without Cython still compiles them. A machine without a C compiler
gets a working install that uses the pure-Python twins, and the build log says so.
``GWCORE_NO_EXTENSIONS=1`` skips compilation.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# module -> its Cython source (the generated C file sits beside it, same stem)
EXTENSIONS = {
    "gwcore._sse": "gwcore/_sse.pyx",
    # compiled in place: the extension takes the source's own name (see gwcore/_twins.py); a
    # module comes after those whose types it cimports (NEEDS)
    "gwcore.usage": "gwcore/usage.py",
    "gwcore.server.app": "gwcore/server/app.py",
    "gwcore.server._http": "gwcore/server/_http_py.py",
    "gwcore.upstream": "gwcore/upstream.py",
    "gwcore.relay": "gwcore/relay.py",
    "gwcore.gateway": "gwcore/gateway.py",
    "gwcore.metrics": "gwcore/metrics.py",
    "gwcore.auth": "gwcore/auth.py",
    "gwcore.providers": "gwcore/providers.py",
    "gwcore.pricing": "gwcore/pricing.py",
    "gwcore.ledger.writer": "gwcore/ledger/writer.py",
    "gwcore.ledger.schema": "gwcore/ledger/schema.py",
}

# A compiled module that cimports another's types imports that compiled module too: it is built
# only when that one was (else both fall back to their twins together).
NEEDS = {
    "gwcore.server._http": ("gwcore.server.app",),
    "gwcore.upstream": ("gwcore._sse",),
    "gwcore.relay": (
        "gwcore.usage",
        "gwcore.server.app",
        "gwcore.server._http",
        "gwcore.upstream",
    ),
    "gwcore.gateway": ("gwcore.usage", "gwcore.server.app", "gwcore.relay"),
    "gwcore.metrics": ("gwcore.usage",),
    "gwcore.pricing": ("gwcore.usage",),
    "gwcore.ledger.schema": ("gwcore.usage",),
}


def _extensions() -> list[Extension]:
    if os.environ.get("GWCORE_NO_EXTENSIONS"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        cythonize = None
    exts = []
    for name, source in EXTENSIONS.items():
        src = source if cythonize is not None else os.path.splitext(source)[0] + ".c"
        if not os.path.exists(src):
            continue
        exts.append(Extension(name, [src], extra_compile_args=["-O3"]))
    if cythonize is not None and exts:
        return cythonize(exts, language_level=3, compiler_directives={"embedsignature": True})
    return exts


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install: the pure-Python twin takes over."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # any build failure means "use the twin"
            self._warn(exc)

    failed: set[str] = set()

    def build_extension(self, ext: Extension) -> None:
        missing = [need for need in NEEDS.get(ext.name, ()) if need in self.failed]
        if missing:
            self.failed.add(ext.name)
            self._warn(RuntimeError(f"it needs the compiled {', '.join(missing)}"), ext.name)
            return
        try:
            super().build_extension(ext)
        except Exception as exc:
            self.failed.add(ext.name)
            self._warn(exc, ext.name)

    @staticmethod
    def _warn(exc: BaseException, name: str = "extensions") -> None:
        sys.stderr.write(
            f"\n*** gwcore: could not compile {name} ({exc}); "
            "installing the pure-Python implementation instead. ***\n\n"
        )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
