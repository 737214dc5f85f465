"""The one CLI shell of every console script (loadgen/cli_errors.py): a bad option is one line
``PROG: error: ...`` on stderr with exit code 2, and a deliberate error that reaches the shell
is one line too, never a usage block or a traceback."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from launcher.errors import LauncherError
from loadgen.cli_errors import OneLineCommand
from loadgen.config import ConfigError
from tests.conftest import REPO_ROOT

BIN = Path(sys.executable).parent


def console_scripts() -> list[str]:
    """Every console script setup.cfg installs, so that a new one is checked too."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO_ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines if line.strip()]


def test_the_five_scripts_are_there():
    assert {"loadgen", "loadgen-launch", "loadgen-report", "loadgen-search", "loadgen-bench"} <= set(console_scripts())


@pytest.mark.parametrize("argv", [[name, "--no-such-option"] for name in console_scripts()]
                         + [["loadgen", "search", "--no-such-option"], ["loadgen-launch", "status", "--no-such-option"]],
                         ids=" ".join)
def test_a_bad_option_is_one_line_and_exit_2(argv):
    proc = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120, check=False)
    lines = proc.stderr.splitlines()
    prog = argv[0] if argv[0] != "loadgen" or len(argv) == 2 else f"loadgen {argv[1]}"
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), proc.stderr
    assert "--no-such-option" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(("error", "code"), [(ConfigError("--rate must be > 0; give e.g. --rate 10"), 1),
                                             (LauncherError("port 8000 is busy;\n pick another with --port"), 1)])
def test_a_deliberate_error_that_reaches_the_shell_is_one_line(error, code):
    @click.command(cls=OneLineCommand, prog="tool", deliberate=(ConfigError, LauncherError))
    def tool() -> None:
        raise error

    result = CliRunner().invoke(tool, [])
    assert result.exit_code == code
    assert result.output.splitlines() == [f"tool: error: {' '.join(str(error).split())}"]


def test_an_error_outside_the_package_is_not_swallowed():
    @click.command(cls=OneLineCommand, prog="tool")
    def tool() -> None:
        raise LauncherError("not loadgen's")

    result = CliRunner().invoke(tool, [])
    assert isinstance(result.exception, LauncherError)
