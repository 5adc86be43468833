"""One set of rules for reading settings, from the environment or a command line.

A setting is a dataclass field made with `core.config.option`; its metadata may
name an environment variable (`env`), bounds (`gt`, `ge`, `le`), `choices`, and
`nonblank` for text that must not be empty. Text becomes a value the same way
wherever it comes from: whole numbers for `int`, finite numbers for `float`,
true/false/yes/no/on/off/1/0 for `bool`. Every refusal names the variable (or
the flag) and the value it was given, so a bad deployment stops at start-up
with one line instead of failing on the first request.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kitchenware.core.errors import KitchenwareError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(KitchenwareError):
    """A setting holds a value the program cannot use."""


def value_type(hint) -> type:
    """`int` for `int`, `str` for `str | None`: the type text is converted to."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint not in (bool, int, float, str, Path):
        raise TypeError(f"no text form for a setting of type {hint!r}")
    return hint


def parse(kind: type, raw: str) -> Any:
    """`raw` as a `kind`; ValueError says what was expected."""
    if kind is bool:
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise ValueError("expected true or false")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if kind is float:
        try:
            number = float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    return kind(raw)


def check(f: dataclasses.Field, value: Any, *, choices: bool = True) -> None:
    """Raise ValueError (what is wrong) when `value` breaks the bounds `f` declares.

    `choices=False` leaves the choices to argparse, whose wording users know.
    """
    if value is None:
        return
    meta = f.metadata
    allowed = meta.get("choices") if choices else None
    if allowed is not None and value not in allowed:
        raise ValueError("must be one of " + ", ".join(str(c) for c in allowed))
    if meta.get("nonblank") and not str(value).strip():
        raise ValueError("must not be empty")
    if "gt" in meta and not value > meta["gt"]:
        raise ValueError(f"must be greater than {meta['gt']}")
    low, high = meta.get("ge"), meta.get("le")
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}")
    if low is not None and not value >= low:
        raise ValueError(f"must be at least {low}")
    if high is not None and not value <= high:
        raise ValueError(f"must be at most {high}")


def refusal(label: str, value: Any, reason: str) -> str:
    """The one wording of every refusal: `NAME='value' is not valid: reason`."""
    return f"{label}={value!r} is not valid: {reason}"


def label(f: dataclasses.Field) -> str:
    """What a message calls `f`: its environment variable, else its flag."""
    return f.metadata.get("env") or "--" + f.name.replace("_", "-")


def check_fields(obj) -> None:
    """Check every field of the dataclass `obj` (for `__post_init__`), naming the setting."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        try:
            check(f, value)
        except ValueError as exc:
            raise SettingsError(refusal(label(f), value, str(exc))) from None


def env_values(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Values of the fields of `cls` that name a variable set (non-empty) in `environ`."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        name = f.metadata.get("env")
        raw = env.get(name, "").strip() if name else ""
        if not raw:
            continue
        try:
            value = parse(value_type(hints[f.name]), raw)
            check(f, value)
        except ValueError as exc:
            raise SettingsError(refusal(name, raw, str(exc))) from None
        values[f.name] = value
    return values


def from_env(cls, environ: Mapping[str, str] | None = None, **fixed: Any):
    """`cls` from `environ` (default os.environ); unset or empty variables keep defaults."""
    return cls(**{**env_values(cls, environ), **fixed})
