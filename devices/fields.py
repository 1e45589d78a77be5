"""Typed fields of a TOML table, validated with messages that name the bad field."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mixprune.errors import DeviceError

REQUIRED = object()

_KINDS = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str_list": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "shapes": ("a table of input name = \"1x3x224x224\"", lambda v: isinstance(v, dict)),
}


@dataclass(frozen=True)
class Field:
    kind: str
    default: object = REQUIRED
    help: str = ""
    minimum: float | None = None
    choices: tuple[str, ...] | None = None
    pattern: str | None = None


def parse_dims(text: str) -> list[int]:
    """'1x3x224x224' -> [1, 3, 224, 224] (positive integers only)."""
    parts = text.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not a shape like 1x3x224x224")
    return [int(p) for p in parts]


def _check(name: str, field: Field, value, where: str):
    what, ok = _KINDS[field.kind]
    bad = not ok(value)
    if not bad and field.minimum is not None and value < field.minimum:
        what, bad = f"{what} >= {field.minimum:g}", True
    if not bad and field.choices is not None and value not in field.choices:
        what, bad = f"one of {', '.join(field.choices)}", True
    if not bad and field.pattern is not None and not re.fullmatch(field.pattern, value):
        what, bad = f"{what} matching {field.pattern}", True
    if bad:
        raise DeviceError(f"{where}: field '{name}' must be {what}, got {value!r}")
    if field.kind == "shapes":
        try:
            return {str(k): parse_dims(str(v)) for k, v in value.items()}
        except ValueError as exc:
            raise DeviceError(f"{where}: field '{name}': {exc}") from exc
    return value


def validate(table: dict, fields: dict[str, Field], where: str, prefix: str = "") -> dict:
    """Check ``table`` against ``fields``; return every field's value (defaults filled in).

    Unknown keys are errors too, so a typo never silently falls back to a default.
    """
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise DeviceError(f"{where}: unknown field '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        if name in table:
            values[name] = _check(prefix + name, field, table[name], where)
        elif field.default is REQUIRED:
            raise DeviceError(f"{where}: missing field '{prefix}{name}' ({field.help or field.kind})")
        else:
            values[name] = field.default
    return values
