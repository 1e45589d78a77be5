"""Typed fields of a device profile's TOML tables, validated with messages that name the bad field.

The checking itself is mixprune.settings (shared with run configs and rule tables); this
module adds DeviceError, the ``'section.key'`` naming of profile fields, the shapes kind and
the one MB every ``*_mb`` profile field and record key means.
"""

from __future__ import annotations

from mixprune.errors import DeviceError
from mixprune.settings import Field, Kind, check

__all__ = ["MB", "Field", "SHAPES", "parse_dims", "validate"]

MB = 2**20  # bytes: what MB means in profiles (memory_mb, [budget]) and bench records (peak_rss_mb)


def parse_dims(text: str) -> list[int]:
    """'1x3x224x224' -> [1, 3, 224, 224] (positive integers only)."""
    parts = text.lower().split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not a shape like 1x3x224x224")
    return [int(p) for p in parts]


def _shapes(value: dict) -> dict[str, list[int]]:
    return {str(k): parse_dims(str(v)) for k, v in value.items()}


SHAPES = Kind('a table of input name = "1x3x224x224"', lambda v: isinstance(v, dict), "tables", convert=_shapes)


def validate(table: dict, fields: dict[str, Field], where: str, prefix: str = "") -> dict:
    """Check ``table`` against ``fields``; return every field's value (defaults filled in).

    Unknown keys are errors too, so a typo never silently falls back to a default.
    """
    return check(table, fields, f"{where}: ", label=lambda name: f"'{prefix}{name}'", error=DeviceError)
