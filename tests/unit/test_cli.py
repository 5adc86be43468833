import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from kitchenware.cli import COMMANDS, main
from kitchenware.core import config as config_module


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


# Options written by hand on purpose: a preset name that fills in others, tune's
# comma-separated grids, export's repeatable --format. Every other option is generated
# from a config dataclass (core.config), so its default, type and checks live in one place.
HAND_MADE = {
    ("train", "--preset"),
    ("tune", "--preset"),
    ("tune", "--lr"),
    ("tune", "--inner"),
    ("tune", "--dropout"),
    ("tune", "--augment"),
    ("export", "--format"),
}


class _RecordingParser(argparse.ArgumentParser):
    """Notes each option added without a generated action (subcommand parsers too)."""

    by_hand: list[tuple[str, str]] = []

    def add_argument(self, *names, **kwargs):
        generated = kwargs.get("action") in (config_module._Store, config_module._Switch)
        if names and names[0].startswith("-") and not generated and names[0] != "-h":
            self.by_hand.append((self.prog.split()[0], names[0]))
        return super().add_argument(*names, **kwargs)


def test_every_option_is_generated_from_a_config_dataclass():
    import importlib

    found = set()
    for name, (module_name, _) in COMMANDS.items():
        _RecordingParser.by_hand = []
        importlib.import_module(module_name).add_arguments(_RecordingParser(prog=name))
        found |= set(_RecordingParser.by_hand)
    assert found == HAND_MADE
