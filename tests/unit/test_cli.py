import subprocess
import sys
from pathlib import Path

import pytest

from kitchenware.cli import COMMANDS, main


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_script_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "kitchenware.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "prep" in proc.stdout


@pytest.mark.parametrize(
    ("script", "command"),
    [("dataprep.py", "prep"), ("train.py", "train"), ("convert.py", "export")],
)
def test_seed_scripts_take_the_same_flags_as_their_command(script, command):
    """Users run `python dataprep.py` etc.: those files stay, as thin files over the subcommands."""
    repo = Path(__file__).resolve().parents[2]

    def help_text(*argv):
        proc = subprocess.run(
            [sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=repo
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    seed = help_text(str(repo / script))
    assert "--data" in seed or "--model" in seed
    assert seed == help_text("-m", "kitchenware.cli", command)
