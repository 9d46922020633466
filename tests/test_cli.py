"""The command-line shell: help for every command, and `lexsearch --help` stays fast (no torch import)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from lexsearch.cli import cli

COMMANDS = ["train", "index", "query", "explain", "eval", "demo", "distill"]


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from lexsearch.cli import cli\n"
        f"for args in (['--help'], *[[c, '--help'] for c in {COMMANDS!r}]):\n"
        "    assert CliRunner().invoke(cli, args).exit_code == 0, args\n"
        "heavy = [m for m in ('torch', 'transformers', 'faiss', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
