import subprocess
import sys

from gwcore import __version__
from gwcore.cli import main


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"gwcore {__version__}"


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "gwcore.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "usage: gwcore" in out
