"""One set of rules for settings: environment variables, gunicorn's file, the model server.

The same field rules (type, bounds, choices) refuse a bad value whether it comes
from the environment or a command line, with one message naming where it came from
and what it was.
"""

from __future__ import annotations

import dataclasses
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

from kitchenware.cli import build_parser, main
from kitchenware.core import settings
from kitchenware.core.config import option
from kitchenware.core.settings import SettingsError
from kitchenware.gateway.config import ServerSettings
from kitchenware.model_server.cli import ModelServerConfig, config_from_args


@dataclasses.dataclass(frozen=True)
class Knobs:
    count: int = option(3, env="KNOB_COUNT", ge=1, le=10)
    rate: float = option(0.5, env="KNOB_RATE", gt=0)
    loud: bool = option(False, env="KNOB_LOUD")
    mode: str = option("a", env="KNOB_MODE", choices=("a", "b"))
    name: str = option("x", env="KNOB_NAME", nonblank=True)
    where: Path | None = option(None, env="KNOB_WHERE")
    plain: int = option(7)  # no variable: never read from the environment

    def __post_init__(self) -> None:
        settings.check_fields(self)


def test_unset_and_empty_variables_keep_the_defaults():
    assert settings.from_env(Knobs, {}) == Knobs()
    assert settings.from_env(Knobs, {"KNOB_COUNT": "  ", "PLAIN": "9"}) == Knobs()


def test_each_type_is_read_from_its_variable():
    env = {"KNOB_COUNT": "1_0", "KNOB_RATE": " 2.5 ", "KNOB_LOUD": "Yes", "KNOB_MODE": "b",
           "KNOB_NAME": "n", "KNOB_WHERE": "/srv/models"}  # fmt: skip
    assert settings.from_env(Knobs, env) == Knobs(10, 2.5, True, "b", "n", Path("/srv/models"))
    for off in ("0", "false", "NO", "off"):
        assert settings.from_env(Knobs, {"KNOB_LOUD": off}).loud is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KNOB_COUNT": "lots"}, "KNOB_COUNT='lots' is not valid: expected a whole number"),
        ({"KNOB_COUNT": "2.0"}, "KNOB_COUNT='2.0' is not valid: expected a whole number"),
        ({"KNOB_COUNT": "11"}, "KNOB_COUNT='11' is not valid: must be between 1 and 10"),
        ({"KNOB_RATE": "inf"}, "KNOB_RATE='inf' is not valid: expected a finite number"),
        ({"KNOB_RATE": "0"}, "KNOB_RATE='0' is not valid: must be greater than 0"),
        ({"KNOB_LOUD": "maybe"}, "KNOB_LOUD='maybe' is not valid: expected true or false"),
        ({"KNOB_MODE": "c"}, "KNOB_MODE='c' is not valid: must be one of a, b"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_value(env, message):
    with pytest.raises(SettingsError) as exc:
        settings.from_env(Knobs, env)
    assert str(exc.value) == message


def test_values_built_in_code_obey_the_same_rules():
    with pytest.raises(SettingsError, match="KNOB_NAME=' ' is not valid: must not be empty"):
        Knobs(name=" ")
    with pytest.raises(SettingsError, match="KNOB_COUNT=0 is not valid: must be between 1 and 10"):
        Knobs(count=0)


# -- gunicorn.conf.py -------------------------------------------------------------------


def test_gunicorn_settings_read_their_variables():
    assert ServerSettings.from_env({}).address == "0.0.0.0:9696"
    s = ServerSettings.from_env({"PORT": "8000", "GUNICORN_WORKERS": "3",
                                 "GUNICORN_THREADS": "8", "GUNICORN_LOG_LEVEL": "warning"})  # fmt: skip
    assert (s.address, s.workers, s.threads, s.log_level) == ("0.0.0.0:8000", 3, 8, "warning")
    bound = ServerSettings.from_env({"PORT": "8000", "GUNICORN_BIND": "127.0.0.1:7000"})
    assert bound.address == "127.0.0.1:7000"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("GUNICORN_WORKERS", "0", "must be greater than 0"),
        ("GUNICORN_THREADS", "four", "expected a whole number"),
        ("PORT", "70000", "must be between 1 and 65535"),
        ("GUNICORN_LOG_LEVEL", "chatty", "must be one of debug, info, warning, error, critical"),
    ],
)
def test_gunicorn_conf_stops_with_the_variable_named(name, value, reason, monkeypatch):
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/not-created")
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert str(exc.value) == f"gateway configuration error: {name}={value!r} is not valid: {reason}"


def test_gunicorn_conf_takes_its_values_from_the_settings(monkeypatch):
    monkeypatch.setenv("GUNICORN_BIND", "127.0.0.1:7001")
    monkeypatch.setenv("GUNICORN_THREADS", "6")
    monkeypatch.setenv("GUNICORN_TIMEOUT", "33")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/not-created")
    conf = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    assert (conf["bind"], conf["threads"], conf["timeout"], conf["workers"]) == (
        "127.0.0.1:7001",
        6,
        33,
        2,
    )


# -- the model server: flags generated from ModelServerConfig, image variables ---------


def _model_server(argv, environ=None) -> ModelServerConfig:
    return config_from_args(build_parser("model-server")[0].parse_args(argv), environ or {})


def test_model_server_defaults_are_the_documented_ones():
    c = _model_server([])
    assert (c.model_base_path, c.model_name, c.host, c.port, c.rest_api_port) == (
        "models/kitchenware",
        "kitchenware",
        "127.0.0.1",
        8500,
        8501,
    )
    assert (c.batching, c.max_batch_size, c.batch_timeout_ms, c.poll_seconds) == (
        True,
        32,
        5.0,
        2.0,
    )
    assert (c.max_num_load_retries, c.load_retry_interval_seconds, c.num_versions) == (5, 60.0, 1)
    assert (c.grpc_threads, c.max_message_bytes, c.log_level) == (64, 64 * 2**20, "INFO")


def test_model_server_takes_tf_servings_spellings():
    c = _model_server(["--model_base_path", "/m/pots", "--model_name", "pots",
                       "--rest_api_port", "0", "--enable_batching",
                       "--batching_parameters_file", "b.txt",
                       "--file_system_poll_wait_seconds", "0", "--max_num_load_retries", "1"])  # fmt: skip
    assert (c.model_base_path, c.model_name, c.rest_api_port, c.batching) == (
        "/m/pots",
        "pots",
        0,
        True,
    )
    assert (c.batching_parameters_file, c.poll_seconds, c.max_num_load_retries) == ("b.txt", 0, 1)
    assert _model_server(["--no-batching"]).batching is False
    assert _model_server(["--no-batching", "--enable-batching"]).batching is True


def test_model_server_reads_the_image_variables_and_typed_flags_win():
    env = {"MODEL_NAME": "pots", "MODEL_BASE_PATH": "/models", "REST_PORT": "9501"}
    c = _model_server([], env)
    assert (c.model_name, c.model_base_path, c.rest_api_port) == ("pots", "/models/pots", 9501)
    c = _model_server(["--model-name", "pans", "--rest-api-port", "0"], env)
    assert (c.model_name, c.model_base_path, c.rest_api_port) == ("pans", "/models/pans", 0)
    assert _model_server(["--model-base-path", "elsewhere"], env).model_base_path == "elsewhere"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "argument --port: '0' is not valid: must be between 1 and 65535"),
        (["--num-versions", "0"], "argument --num-versions: '0' is not valid: must be at least 1"),
        (["--poll-seconds", "nan"], "'nan' is not valid: expected a finite number"),
        (["--max-message-bytes", "100"], "'100' is not valid: must be at least 1024"),
        (["--rest-api-port", "-1"], "'-1' is not valid: must be between 0 and 65535"),
    ],
)
def test_model_server_flags_are_checked_by_the_same_rules(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _model_server(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [("REST_PORT", "http", "expected a whole number"), ("MODEL_NAME", " ", None),
     ("REST_PORT", "99999", "must be between 0 and 65535")],
)  # fmt: skip
def test_a_bad_image_variable_stops_the_model_server_naming_it(name, value, reason, monkeypatch,
                                                               capsys):  # fmt: skip
    monkeypatch.setenv(name, value)
    assert main(["model-server", "--check-config"]) == (0 if reason is None else 2)
    err = capsys.readouterr().err
    if reason is None:  # blank is unset: the default holds
        assert err == ""
    else:
        assert f"kitchenware model-server: error: {name}={value!r} is not valid: {reason}" in err


def test_one_new_model_server_option_is_one_field():
    """What adding e.g. `--backend` takes: one field; flag, variable and checks follow."""

    @dataclasses.dataclass(kw_only=True)
    class WithBackend(ModelServerConfig):
        backend: str = option("auto", env="KW_BACKEND", choices=("auto", "tensorflow", "openvino"))

    import argparse

    from kitchenware.core.config import add_fields, from_args

    parser = argparse.ArgumentParser()
    add_fields(parser, WithBackend)
    assert from_args(WithBackend, parser.parse_args([]), environ={}).backend == "auto"
    typed = parser.parse_args(["--backend", "openvino"])
    assert from_args(WithBackend, typed, environ={"KW_BACKEND": "tensorflow"}).backend == "openvino"
    env = {"KW_BACKEND": "tensorflow"}
    assert from_args(WithBackend, parser.parse_args([]), environ=env).backend == "tensorflow"
    with pytest.raises(SettingsError, match="KW_BACKEND='gpu' is not valid: must be one of auto"):
        from_args(WithBackend, parser.parse_args([]), environ={"KW_BACKEND": "gpu"})


def test_the_python_model_image_leaves_its_variables_to_the_server():
    """The image's ENTRYPOINT + CMD + ENV give the settings the shell line used to build."""
    from support.deploy_tools import dockerfile_env, dockerfile_json

    dockerfile = REPO / "image-model-python.dockerfile"
    entrypoint, cmd = dockerfile_json(dockerfile, "ENTRYPOINT"), dockerfile_json(dockerfile, "CMD")
    assert entrypoint[:2] == ["kitchenware", "model-server"]
    env = dockerfile_env(dockerfile)
    c = _model_server([*entrypoint[2:], *cmd], env)
    assert (c.host, c.port, c.rest_api_port, c.model_name) == ("0.0.0.0", 8500, 8501, "kitchenware")
    assert c.model_base_path == "/models/kitchenware"
    assert c.batching and c.batching_parameters_file == "/etc/kitchenware/batching_parameters.txt"


def test_model_server_cli_runs_as_a_process_with_a_bad_variable():
    proc = subprocess.run(
        [sys.executable, "-m", "kitchenware.cli", "model-server", "--check-config"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "REST_PORT": "80a"},
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "kitchenware model-server: error: REST_PORT='80a' is not valid: expected a whole number"
    )
