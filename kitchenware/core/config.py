"""Command-line options generated from a config dataclass, so each default is written once.

A field becomes `--field-name` with the field's default, type and
`metadata`: `help`, `choices`, `metavar`, `aliases` (more spellings, e.g. TF
Serving's `--model_base_path`), `negatable` (a bool shown as `--x/--no-x`),
`cli_default` (what the parser holds for a field the dataclass requires, e.g.
None for a folder filled in later), `cli` (False: not an option), and the rules
of `core.settings` (`env`, `gt`/`ge`/`le`, `nonblank`): a typed value is parsed
and checked as that variable would be, and a field naming `env` takes the
variable's value when its flag is not given. A bool defaulting to False is a
`--x` switch, one defaulting to True a `--no-x` switch. Every generated option
notes on the namespace that the user gave it, so presets and the environment
fill in only what was not typed (`from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from kitchenware.core import settings
from kitchenware.core.settings import value_type

__all__ = ["add_fields", "cli_fields", "field_default", "flag_name", "from_args", "given",
           "option", "value_type"]  # fmt: skip

GIVEN = "_given_options"  # namespace attribute: dests typed on the command line


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any):  # noqa: A002
    """A dataclass field with its command-line help (and any other metadata above)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _note_given(namespace, dest: str) -> None:
    given = set(getattr(namespace, GIVEN, ()))
    given.add(dest)
    setattr(namespace, GIVEN, given)


class _Store(argparse.Action):
    """`store` that remembers it was used."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ARG002
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest)


class _Switch(argparse.Action):
    """A bool switch; `stores` maps each of its spellings to the value it sets."""

    def __init__(self, option_strings, dest, stores: Mapping[str, bool], **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.stores = dict(stores)

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ARG002
        setattr(namespace, self.dest, self.stores[option_string])
        _note_given(namespace, self.dest)


class _Text:
    """argparse `type=` for a field: parsed and checked by `core.settings`' rules."""

    def __init__(self, f: dataclasses.Field, kind: type):
        self.field, self.kind = f, kind

    def __call__(self, raw: str):
        try:
            value = settings.parse(self.kind, raw)
            settings.check(self.field, value, choices=False)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r} is not valid: {exc}") from None
        return value


def cli_fields(cls, only: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of `cls` that are options, in declaration order (limited to `only`)."""
    chosen = None if only is None else set(only)
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("cli", True) and (chosen is None or f.name in chosen)
    ]


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_default(f: dataclasses.Field, defaults: Mapping[str, Any]) -> Any:
    """The value the parser holds for `f` when its option is not given."""
    if f.name in defaults:
        return defaults[f.name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.metadata.get("cli_default")


def add_fields(
    parser,
    cls,
    *,
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    help: Mapping[str, str] | None = None,  # noqa: A002
) -> None:
    """Add one option per field of `cls`; `defaults`/`help` replace a field's for this command."""
    defaults, help = defaults or {}, help or {}
    hints = typing.get_type_hints(cls)
    for f in cli_fields(cls, only):
        kind = value_type(hints[f.name])
        default = field_default(f, defaults)
        required = (
            f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and "cli_default" not in f.metadata
        )
        text = help.get(f.name, f.metadata.get("help") or "")
        if f.metadata.get("env"):
            text = f"{text} [env {f.metadata['env']}]".strip()
        common = {"dest": f.name, "default": default, "help": text or None}
        aliases = tuple(f.metadata.get("aliases", ()))
        if kind is bool:
            # A switch sets the opposite of its default; a negatable field has both spellings.
            # Aliases turn the field on, or off when spelt --no-...
            no = f"--no-{f.name.replace('_', '-')}"
            if f.metadata.get("negatable"):
                stores = {flag_name(f.name): True, no: False}
            else:
                stores = {no if default else flag_name(f.name): not default}
            stores.update({alias: not alias.startswith("--no-") for alias in aliases})
            parser.add_argument(*stores, action=_Switch, stores=stores, **common)
        else:
            parser.add_argument(
                flag_name(f.name),
                *aliases,
                action=_Store,
                type=_Text(f, kind),
                choices=f.metadata.get("choices"),
                metavar=f.metadata.get("metavar"),
                required=required,
                **common,
            )


def given(args) -> set[str]:
    """Dests of the generated options typed on the command line."""
    return set(getattr(args, GIVEN, ()))


def from_args(
    cls,
    args,
    *,
    only: Iterable[str] | None = None,
    base: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    **fixed: Any,
):
    """Build `cls` from parsed `args`: typed options, then the environment (fields naming
    `env`; `environ` defaults to os.environ), then `base` (a preset), then defaults.

    `only` as in add_fields; `fixed` sets fields outright (values computed by the command).
    """
    fields = cli_fields(cls, only)
    values = {f.name: getattr(args, f.name) for f in fields}
    typed = given(args)
    values.update({k: v for k, v in (base or {}).items() if k not in typed})
    if any(f.metadata.get("env") for f in dataclasses.fields(cls)):
        from_env = settings.env_values(cls, environ)
        wanted = {f.name for f in fields} | {
            f.name for f in dataclasses.fields(cls) if not f.metadata.get("cli", True)
        }
        values.update({k: v for k, v in from_env.items() if k in wanted and k not in typed})
    values.update(fixed)
    return cls(**values)
