"""Options generated from config dataclasses: defaults in --help, round trips, choices, presets."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest

from kitchenware.cli import build_parser
from kitchenware.core.config import (
    add_fields,
    cli_fields,
    field_default,
    flag_name,
    from_args,
    option,
    value_type,
)
from kitchenware.dataprep.prep import PrepConfig
from kitchenware.dataprep.synthetic import SampleDataConfig
from kitchenware.export.cli import ExportConfig
from kitchenware.export.inspection import InspectConfig
from kitchenware.gateway import DevServerConfig
from kitchenware.model_server.cli import ModelServerConfig
from kitchenware.model_server.cli import config_from_args as model_server_config
from kitchenware.serving.gateway_client import ClassifyConfig
from kitchenware.training.evaluate import EvaluateConfig
from kitchenware.training.presets import PRESETS
from kitchenware.training.submit import SubmitConfig
from kitchenware.training.train import TrainConfig, config_from_args
from kitchenware.training.tune import BASE_FIELDS, TUNE_DEFAULTS, base_config


def _plain(cls):
    return lambda args: from_args(cls, args)


# command -> (config class, fields it takes, its own defaults, config builder, required argv)
COMMANDS = {
    "train": (TrainConfig, None, {}, config_from_args, ["--data", "d", "--out", "o"]),
    "tune": (TrainConfig, BASE_FIELDS, TUNE_DEFAULTS, base_config, ["--data", "d", "--out", "o"]),
    "evaluate": (EvaluateConfig, None, {}, _plain(EvaluateConfig), ["--data", "d"]),
    "submit": (SubmitConfig, None, {}, _plain(SubmitConfig), ["--data", "d"]),
    "export": (ExportConfig, None, {}, _plain(ExportConfig), []),
    "prep": (PrepConfig, None, {}, _plain(PrepConfig), ["--data", "d", "--out", "o"]),
    "sample-data": (SampleDataConfig, None, {}, _plain(SampleDataConfig), ["o"]),
    # environ={}: the test's own environment must not fill in MODEL_NAME and the like
    "model-server": (ModelServerConfig, None, {}, lambda a: model_server_config(a, {}), []),
    "gateway": (DevServerConfig, None, {}, _plain(DevServerConfig), []),
    "classify": (ClassifyConfig, None, {}, _plain(ClassifyConfig), []),
    "inspect": (InspectConfig, None, {}, _plain(InspectConfig), []),
}

# Fields another one derives its default from: changing it changes them too.
DERIVED = {"model_name": {"model_base_path"}}


def _switch(f, default) -> str:
    if f.metadata.get("negatable"):
        return flag_name(f.name)
    return f"--no-{f.name.replace('_', '-')}" if default else flag_name(f.name)


def _help_defaults(command, monkeypatch) -> dict[str, str]:
    """flag -> the text after `(default:` on its --help line (one line each: a wide terminal)."""
    monkeypatch.setenv("COLUMNS", "1000")
    text = build_parser(command)[0].format_help()
    entries: list[str] = []  # one per option: a long invocation puts its help on the next line
    for line in text.split("options:")[1].splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries:
            entries[-1] += line
    found = {}
    for entry in entries:
        match = re.match(r"\s+(--[\w-]+).*\(default: (.*)\)$", entry)
        if match:
            found[match[1]] = match[2]
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_dataclass_defaults(command, monkeypatch):
    cls, only, defaults, _, _ = COMMANDS[command]
    shown = _help_defaults(command, monkeypatch)
    for f in cli_fields(cls, only):
        default = field_default(f, defaults)
        flag = _switch(f, default) if isinstance(default, bool) else flag_name(f.name)
        assert shown.get(flag) == str(default), (flag, shown.get(flag), default)


def test_help_defaults_are_the_documented_values(monkeypatch):
    """A few values users rely on (README), read from --help, not from the code that wrote it."""
    train = _help_defaults("train", monkeypatch)
    assert (train["--epochs"], train["--size"], train["--weights"]) == ("20", "299", "imagenet")
    assert (train["--augment"], train["--no-cache"], train["--verbose"]) == ("True", "True", "1")
    tune = _help_defaults("tune", monkeypatch)
    assert (tune["--epochs"], tune["--patience"], tune["--out"]) == ("10", "3", "runs/tune")
    assert tune["--lr"] == "0.0001,0.001,0.01"
    export = _help_defaults("export", monkeypatch)
    assert (export["--out"], export["--version"], export["--tta"]) == (
        "models/kitchenware",
        "None",
        "none",
    )
    prep = _help_defaults("prep", monkeypatch)
    assert (prep["--val-frac"], prep["--near-dup-distance"], prep["--no-progress"]) == (
        "0.2",
        "24",
        "False",
    )
    assert _help_defaults("sample-data", monkeypatch)["--per-class"] == "60"


def _other_value(cls, f, default):
    """A valid value for `f` that differs from `default`, and its argv form."""
    kind = value_type(typing.get_type_hints(cls)[f.name])
    choices = f.metadata.get("choices")
    if choices:
        value = next(c for c in choices if c != default)
    elif kind is bool:
        return not default, []
    elif kind is int:
        value = (default or 0) + 3
    elif kind is float:
        value = default * 2 + 0.5
    else:
        value = kind(f"other-{f.name}")
    return value, [str(value)]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_round_trips(command):
    cls, only, _, build, required = COMMANDS[command]
    parser = build_parser(command)[0]
    plain = build(parser.parse_args(required))
    for f in cli_fields(cls, only):
        if flag_name(f.name) in required:
            continue
        default = getattr(plain, f.name)
        value, text = _other_value(cls, f, default)
        flag = _switch(f, default) if isinstance(value, bool) else flag_name(f.name)
        if f.metadata.get("negatable") and value is False:
            flag = f"--no-{f.name.replace('_', '-')}"
        config = build(parser.parse_args([*required, flag, *text]))
        assert getattr(config, f.name) == value, flag
        changed = {k for k, v in dataclasses.asdict(config).items() if v != getattr(plain, k)} - {
            "feature_cache"
        }  # tune derives it from --cached-features
        assert changed <= {f.name} | DERIVED.get(f.name, set()), (flag, changed)


def test_required_flag_and_default_folder(capsys):
    parser = build_parser("train")[0]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    assert "the following arguments are required: --data" in capsys.readouterr().err
    assert config_from_args(parser.parse_args(["--data", "d"])).out.startswith("runs/")


@pytest.mark.parametrize(
    ("command", "argv", "bad"),
    [
        ("train", ["--backbone", "resnet"], "'resnet'"),
        ("train", ["--class-weights", "inverse"], "'inverse'"),
        ("train", ["--verbose", "3"], "3"),
        ("train", ["--preset", "huge"], "'huge'"),
        ("tune", ["--backbone", "vgg"], "'vgg'"),
    ],
)
def test_unknown_choice_is_argparses_clear_error(command, argv, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser(command)[0].parse_args(["--data", "d", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"{argv[0]}: invalid choice: {bad} (choose from" in err


def test_bad_number_is_refused_as_the_environment_would_be(capsys):
    with pytest.raises(SystemExit):
        build_parser("train")[0].parse_args(["--data", "d", "--epochs", "many"])
    assert "argument --epochs: 'many' is not valid: expected a whole number" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("command", ["train", "tune"])
def test_preset_fills_in_and_typed_flags_win(command):
    build = COMMANDS[command][3]
    parser = build_parser(command)[0]
    tiny = build(parser.parse_args(["--data", "d", "--preset", "tiny"]))
    assert (tiny.backbone, tiny.size, tiny.weights, tiny.epochs) == ("mobilenet_v2", 71, "none", 2)
    # a typed flag wins even when it repeats the default, on either side of --preset
    for argv in (["--preset", "tiny", "--epochs", "20"], ["--epochs", "20", "--preset", "tiny"]):
        config = build(parser.parse_args(["--data", "d", *argv]))
        assert config.epochs == 20 and config.size == 71


def test_preset_switches_can_be_turned_back():
    parser = build_parser("train")[0]
    assert (
        config_from_args(parser.parse_args(["--data", "d", "--preset", "quick"])).augment is False
    )
    config = config_from_args(parser.parse_args(["--data", "d", "--preset", "quick", "--augment"]))
    assert config.augment is True and config.size == 96


def test_presets_name_only_real_fields_with_valid_values():
    from kitchenware.training.model import check_size, check_weights, get_backbone

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for values in PRESETS.values():
        assert set(values) <= names
        config = TrainConfig(data="d", out="o", **values)
        get_backbone(config.backbone)
        check_size(config.backbone, config.size)
        check_weights(config.weights)


# --- the helper on its own ------------------------------------------------------------


@dataclasses.dataclass
class Sample:
    name: str = option(help="required: no default")
    count: int = option(3, help="how many", choices=(1, 2, 3))
    rate: float = option(0.5, help="a rate")
    label: str | None = option(None, help="optional text", metavar="TEXT")
    loud: bool = option(False, help="a --loud switch")
    keep: bool = option(True, help="a --no-keep switch")
    both: bool = option(True, help="--both/--no-both", negatable=True)
    hidden: list[str] = dataclasses.field(default_factory=list, metadata={"cli": False})


def _sample_parser():
    import argparse

    parser = argparse.ArgumentParser()
    add_fields(parser, Sample)
    return parser


def test_helper_builds_the_dataclass_back():
    parser = _sample_parser()
    plain = from_args(Sample, parser.parse_args(["--name", "n"]))
    assert plain == Sample(name="n")
    args = ["--name", "n", "--count", "1", "--rate", "2", "--label", "x", "--loud", "--no-keep"]
    full = from_args(Sample, parser.parse_args([*args, "--no-both"]))
    assert full == Sample("n", 1, 2.0, "x", True, False, False)
    assert from_args(Sample, parser.parse_args(["--name", "n"]), base={"rate": 9.0}).rate == 9.0
    fixed = from_args(Sample, parser.parse_args(["--name", "n"]), hidden=["h"])
    assert fixed.hidden == ["h"]


def test_helper_refuses_a_field_with_no_command_line_form():
    import argparse

    @dataclasses.dataclass
    class Listy:
        values: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="no text form"):
        add_fields(argparse.ArgumentParser(), Listy)
