"""Command-line options generated from a config dataclass, so each default is written once.

A field becomes `--field-name` with the field's default, type and
`metadata`: `help`, `choices`, `metavar`, `negatable` (a bool shown as
`--x/--no-x`), `cli_default` (what the parser holds for a field the dataclass
requires, e.g. None for a folder filled in later) and `cli` (False: not an
option). A bool defaulting to False is a `--x` switch, one defaulting to True a
`--no-x` switch. Every generated option notes on the namespace that the user
gave it, so presets fill in only what was not typed (`from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

GIVEN = "_given_options"  # namespace attribute: dests typed on the command line


def option(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any):  # noqa: A002
    """A dataclass field with its command-line help (and any other metadata above)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _note_given(namespace, dest: str) -> None:
    given = set(getattr(namespace, GIVEN, ()))
    given.add(dest)
    setattr(namespace, GIVEN, given)


class _Store(argparse.Action):
    """`store` (nargs None) or `store_const` (nargs 0) that remembers it was used."""

    def __call__(self, parser, namespace, values, option_string=None):  # noqa: ARG002
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)
        _note_given(namespace, self.dest)


class _Negatable(argparse.BooleanOptionalAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _note_given(namespace, self.dest)


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


def value_type(hint) -> type:
    """`int` for `int`, `str` for `str | None`: the type argparse converts to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint not in (bool, int, float, str, Path):
        raise TypeError(f"no command-line form for a field of type {hint!r}")
    return hint


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
        common = {
            "dest": f.name,
            "default": default,
            "help": help.get(f.name, f.metadata.get("help") or None),
        }
        if kind is bool and f.metadata.get("negatable"):
            parser.add_argument(flag_name(f.name), action=_Negatable, **common)
        elif kind is bool:
            name = f"--no-{f.name.replace('_', '-')}" if default else flag_name(f.name)
            parser.add_argument(name, action=_Store, nargs=0, const=not default, **common)
        else:
            parser.add_argument(
                flag_name(f.name),
                action=_Store,
                type=kind,
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
    **fixed: Any,
):
    """Build `cls` from parsed `args`: typed options beat `base` (a preset), which beats defaults.

    `only` as in add_fields; `fixed` sets fields outright (values computed by the command).
    """
    values = {f.name: getattr(args, f.name) for f in cli_fields(cls, only)}
    typed = given(args)
    values.update({k: v for k, v in (base or {}).items() if k not in typed})
    values.update(fixed)
    return cls(**values)
