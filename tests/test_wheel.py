"""Release artefacts: the sdist carries the generated C and builds without Cython; the wheel it
gives carries the compiled scanner, which a fresh venv then uses; a forced pure build works too.

One flow, built once per session into a temp dir (about a minute on two cores): sdist -> wheel
with Cython made unimportable (so setup.py must compile the shipped ``.c``) -> ``python -m venv``
(the dependencies are borrowed from this environment: nothing is downloaded) ->
the scanner tests run there against the installed wheel. Skipped where the tools are missing
(``wheel``, ``venv``), except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from gwcore._twins import COMPILED_IN_PLACE

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"
SCANNER_TESTS = [str(ROOT / "tests" / name) for name in ("test_sse.py", "test_sse_recorded.py")]
PROPERTY_TESTS = [str(ROOT / "tests" / "test_sse_properties.py")]

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(300)]


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}")
    pytest.skip(why)


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 180) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=os.environ if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _clean_env(**extra: str) -> dict:
    """This environment without the switches the tests of this file set themselves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GWCORE_", "PYTHON"))}
    return {**env, **extra}


def _venv(path: Path) -> Path:
    """A fresh venv that borrows this environment's packages (the dependencies, pytest) through
    a plain path in a ``.pth`` file: unlike ``--system-site-packages``, that runs none of the
    ``.pth`` hooks there, among them the finder of this checkout's editable install, which would
    otherwise hand out modules the wheel does not have."""
    venv.EnvBuilder(with_pip=True, symlinks=True).create(path)
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib) / "borrowed-packages.pth").write_text("\n".join(borrowed) + "\n")
    return python


def _install(python: Path, wheel: Path, cwd: Path) -> None:
    # --ignore-installed: this environment's gwcore (editable) is visible through the borrowed path
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        cwd,
        _clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )


def _probe(python: Path, cwd: Path, **env: str) -> tuple[str, str]:
    """(where gwcore is imported from, the implementation of every compiled module: "cython" or
    "python" when they all agree, else the kinds found joined by "+")."""
    code = (
        "import importlib, gwcore, gwcore.sse as s, gwcore.server.protocol as p; "
        "from gwcore._twins import COMPILED_IN_PLACE, implementation as i; "
        "print(gwcore.__file__); "
        "found = {s.IMPLEMENTATION, p.IMPLEMENTATION}; "
        "found |= {i(importlib.import_module(m)) for m in COMPILED_IN_PLACE}; "
        "print(found.pop() if len(found) == 1 else '+'.join(sorted(found)))"
    )
    out = subprocess.run(
        [str(python), "-c", code],
        cwd=cwd,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], out[1]


def _pytest(python: Path, cwd: Path, tests: list[str], **env: str) -> str:
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests]
    return _run(cmd, cwd, _clean_env(**env), timeout=240)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    try:
        import wheel  # noqa: F401  setuptools < 70.1 needs it for bdist_wheel
    except ImportError:
        _need(False, "the 'wheel' package is not installed (pip install wheel)")
    _need(
        (ROOT / "gwcore" / "_sse.c").exists() or _cython_importable(),
        "neither gwcore/_sse.c nor Cython: the sdist cannot carry the generated C",
    )
    tmp = tmp_path_factory.mktemp("wheel")
    # 1. the sdist, built by the PEP 517 backend itself (no 'build' package needed)
    code = "import sys; from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    _run([sys.executable, "-c", code, str(tmp)], ROOT, _clean_env())
    (sdist,) = tmp.glob("gwcore-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp / "src", **safe)
    # 2. a wheel from that sdist, Cython made unimportable: setup.py must compile the shipped C
    blocker = tmp / "no-cython" / "Cython"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('Cython is blocked for this build')\n")
    (src,) = (tmp / "src").iterdir()
    log = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-v",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "-w",
            str(tmp / "dist"),
            str(src),
        ],
        tmp,
        _clean_env(PYTHONPATH=str(tmp / "no-cython"), PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    (whl,) = (tmp / "dist").glob("gwcore-*.whl")
    # 3. a forced pure build of the same sdist
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "-w",
            str(tmp / "dist-pure"),
            str(src),
        ],
        tmp,
        _clean_env(GWCORE_NO_EXTENSIONS="1", PIP_DISABLE_PIP_VERSION_CHECK="1"),
    )
    (pure,) = (tmp / "dist-pure").glob("gwcore-*.whl")
    return {"tmp": tmp, "sdist_names": names, "log": log, "wheel": whl, "pure": pure}


def _cython_importable() -> bool:
    try:
        import Cython  # noqa: F401
    except ImportError:
        return False
    return True


def test_sdist_ships_the_generated_c_and_no_binary(built):
    names = {n.split("/", 1)[1] for n in built["sdist_names"] if "/" in n}
    assert {"gwcore/_sse.c", "gwcore/_sse.pyx", "gwcore/_sse_py.py", "setup.py"} <= names
    assert {m.replace(".", "/") + ".c" for m in COMPILED_IN_PLACE} <= names
    assert {"gwcore/benchmark/runner.py", "gwcore/pricing.json", "PKG-INFO"} <= names
    assert not [n for n in names if n.endswith(".so")]


def test_wheel_from_the_sdist_is_compiled_without_cython(built):
    assert "could not compile" not in built["log"]
    assert "Cython is blocked" not in built["log"]  # setup.py fell back to the .c quietly
    whl = built["wheel"]
    assert "-cp3" in whl.name and "linux" in whl.name
    names = zipfile.ZipFile(whl).namelist()
    assert [n for n in names if n.startswith("gwcore/_sse.") and n.endswith(".so")]
    in_place = [m.replace(".", "/") for m in COMPILED_IN_PLACE]
    for stem in ["gwcore/_sse", "gwcore/server/_http", *in_place]:
        assert [n for n in names if n.startswith(stem + ".") and n.endswith(".so")], stem
    # the sdist ships the C; wheels the compiled modules (and the sources, the pure twins)
    assert not [n for n in names if n.endswith(".c")]
    assert {f"{stem}.py" for stem in in_place} <= set(names)
    assert {
        "gwcore/_sse.pyi",
        "gwcore/server/_http.pyi",
        "gwcore/server/_http_py.py",  # the twin, used with GWCORE_NO_EXTENSIONS=1
        "gwcore/py.typed",
        "gwcore/benchmark/cli.py",
    } <= set(names)


def test_installed_wheel_uses_the_compiled_scanner(built):
    tmp = built["tmp"]
    python = _venv(tmp / "venv")
    _install(python, built["wheel"], tmp)
    where, implementation = _probe(python, tmp)
    assert where.startswith(str(tmp / "venv")), where  # the wheel, not this checkout
    assert implementation == "cython"
    assert _probe(python, tmp, GWCORE_NO_EXTENSIONS="1")[1] == "python"
    version = _run([str(tmp / "venv" / "bin" / "gwcore"), "--version"], tmp, _clean_env())
    assert version.startswith("gwcore ")
    # the scanner tests against the installed wheel: the compiled module must be there ...
    out = _pytest(python, tmp, SCANNER_TESTS, GWCORE_REQUIRE_EXTENSIONS="1")
    assert " passed" in out and " failed" not in out
    # ... and with the twin forced at import time, the same tests pass
    out = _pytest(python, tmp, SCANNER_TESTS + PROPERTY_TESTS, GWCORE_NO_EXTENSIONS="1")
    assert " passed" in out and " failed" not in out


def test_forced_pure_wheel_passes_the_scanner_tests(built):
    tmp = built["tmp"]
    pure = built["pure"]
    assert pure.name.endswith("-py3-none-any.whl")
    assert not [n for n in zipfile.ZipFile(pure).namelist() if n.endswith(".so")]
    python = _venv(tmp / "venv-pure")
    _install(python, pure, tmp)
    where, implementation = _probe(python, tmp)
    assert where.startswith(str(tmp / "venv-pure")) and implementation == "python"
    out = _pytest(python, tmp, SCANNER_TESTS)  # the compiled cases skip: there is no module
    assert " passed" in out and " failed" not in out
