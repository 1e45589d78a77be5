"""One declarative way to check settings: a table of typed ``Field``s and one checker.

Every settings file of mixprune (the run configuration TOML, rule tables, device profiles)
and every flag that feeds a RunConfig is described by a ``{key: Field}`` table. ``check``
walks a parsed table against it and refuses the first bad value with one line that names
the key and says what is allowed, e.g.::

    config file run.toml: targets must be a non-empty list of numbers in [0, 1), got 0.7

A table can also be the one declaration of its settings: ``fields_of`` makes a dataclass's
fields from it (types from the kinds, the defaults), and a Field's ``flag`` and ``help`` say
how the command line offers it (mixprune/cli.py makes the click options).

Import-light on purpose (the standard library and ``mixprune.errors`` only): ``devices/``
and the CLI use it without pulling in torch.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED = object()  # a missing key is an error
OMIT = object()      # a missing key stays out of the result (the caller merges several sources)


@dataclass(frozen=True)
class Kind:
    """What a value must be: ``what`` in messages ("an integer"), ``ok`` the test, and for
    lists the plural of one item; ``convert`` (optional) may raise ValueError(reason);
    ``type`` the Python type of a checked value (a dataclass field's annotation)."""

    what: str
    ok: Callable[[object], bool]
    plural: str = ""
    convert: Callable[[object], object] | None = None
    type: type = object


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_regex(value) -> bool:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return isinstance(value, str)


SCALARS: dict[str, Kind] = {
    "str": Kind("a string", lambda v: isinstance(v, str), "strings", type=str),
    "int": Kind("an integer", _is_int, "integers", type=int),
    "number": Kind("a number", _is_number, "numbers", type=float),
    "bool": Kind("true or false", lambda v: isinstance(v, bool), "true/false values", type=bool),
    "table": Kind("a table", lambda v: isinstance(v, dict), "tables", type=dict),
    "regex": Kind("a regular expression", _is_regex, "regular expressions", type=str),
}
# list kinds: (item kind, whether a comma-separated string is accepted as the list, as flags give it)
LISTS: dict[str, tuple[str, bool]] = {
    "str_list": ("str", False),
    "names": ("str", True),
    "numbers": ("number", True),
    "tables": ("table", False),
}

_BOUND = re.compile(r"(>=|>|<=|<)\s*(\S+)")
_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


@lru_cache(maxsize=None)
def _parse_range(text: str) -> tuple[str, Callable[[float], bool]]:
    """'[0, 1)' / '(0, 1]' / '>= 1' / '> 0' -> (message text, test)."""
    if m := _BOUND.fullmatch(text.strip()):
        op, limit = m.group(1), float(m.group(2))
        tests = {">=": limit.__le__, ">": limit.__lt__, "<=": limit.__ge__, "<": limit.__gt__}
        return f"{op} {m.group(2)}", tests[op]
    if m := _INTERVAL.fullmatch(text.strip()):
        left, lo, hi, right = m.group(1), float(m.group(2)), float(m.group(3)), m.group(4)

        def inside(v):
            return (lo <= v if left == "[" else lo < v) and (v <= hi if right == "]" else v < hi)
        return f"in {left}{m.group(2)}, {m.group(3)}{right}", inside
    raise ValueError(f"not a range: {text!r} (write e.g. '[0, 1)', '(0, 1]', '>= 1' or '> 0')")


@dataclass(frozen=True)
class Flag:
    """How the command line offers a setting; mixprune/cli.py makes the click option from it.

    ``name``: the flag as the user types it, e.g. --img-size (a bool that defaults to true:
    --no-recalibrate, which sets it false). ``metavar``: the placeholder in --help.
    ``default_text``: what --help shows as the default when the setting's value is None
    ("the device profile's"). ``path``: "file" or "dir", and click refuses an existing
    path of the other kind. ``click_checks``: click refuses a value below the Field's
    ``minimum`` itself (the flag also feeds commands that build no RunConfig: rank, bench).
    """

    name: str
    metavar: str | None = None
    default_text: str | None = None
    path: str | None = None
    click_checks: bool = False

    def __post_init__(self):
        if self.path not in (None, "file", "dir"):
            raise ValueError(f"Flag {self.name}: path must be 'file', 'dir' or None, got {self.path!r}")


@dataclass(frozen=True)
class Field:
    """One key of a settings table.

    ``kind``: str, int, number (finite; ints are numbers), bool, table, regex; the lists
    str_list, names (list or comma-separated string of strings), numbers (same, of
    numbers) and tables; or a ``Kind``. ``range`` ('[0, 1)', '> 0', ...), ``choices`` and
    ``pattern`` constrain the value, or each item of a list. ``optional``: None is allowed
    too (from defaults and Python callers; TOML has no null). ``note`` is added to messages.
    ``default``: the value when the key is missing (REQUIRED: an error; OMIT: left out);
    ``help``: what the setting does, one sentence for --help; ``flag``: its command-line
    flag, None where it is set in a settings file only.
    """

    kind: str | Kind
    default: object = REQUIRED
    help: str = ""
    minimum: float | None = None  # shorthand for range=f">= {minimum}"
    range: str | None = None
    choices: tuple | None = None
    pattern: str | None = None
    optional: bool = False
    nonempty: bool = False
    note: str = ""
    flag: Flag | None = None

    def __post_init__(self):
        if self.range is not None:
            _parse_range(self.range)  # a malformed range is a programming error: fail at import
        if not isinstance(self.kind, Kind) and self.kind not in SCALARS and self.kind not in LISTS:
            raise ValueError(f"unknown field kind {self.kind!r}")
        if self.flag is not None and self.flag.click_checks and self.minimum is None:
            raise ValueError(f"{self.flag.name}: click_checks needs the Field's minimum")

    @property
    def annotation(self) -> object:
        """The Python type of a checked value: str, int, float, bool, dict, tuple[str, ...], ...
        (``| None`` when optional)."""
        python = tuple[self.item.type, ...] if self.is_list else self.item.type
        return python | None if self.optional else python

    @property
    def is_list(self) -> bool:
        return not isinstance(self.kind, Kind) and self.kind in LISTS

    @property
    def item(self) -> Kind:
        if isinstance(self.kind, Kind):
            return self.kind
        return SCALARS[LISTS[self.kind][0] if self.is_list else self.kind]

    def _bounds(self) -> tuple[str, Callable] | None:
        if self.range is not None:
            return _parse_range(self.range)
        if self.minimum is not None:
            return _parse_range(f">= {self.minimum:g}")
        return None

    def constraint(self) -> str:
        """What a value of the right type must also satisfy ('' if nothing)."""
        parts = []
        if bounds := self._bounds():
            parts.append(bounds[0])
        if self.choices is not None:
            parts.append(str(self.choices[0]) if len(self.choices) == 1 else f"one of {', '.join(map(str, self.choices))}")
        if self.pattern is not None:
            parts.append(f"matching {self.pattern}")
        return " and ".join(parts)

    def allowed(self) -> str:
        """The whole description: type and constraint, e.g. 'an integer >= 1'."""
        item, constraint = self.item, self.constraint()
        if self.is_list:
            text = f"{'a non-empty' if self.nonempty else 'a'} list of {item.plural}"
            if self.kind == "tables":
                text = f"{'a non-empty' if self.nonempty else 'an'} array of tables"
            if constraint:
                text += f", each {constraint}"
        elif self.choices is not None and self.pattern is None and self._bounds() is None:
            text = constraint  # 'one of a, b' says it is a string
        else:
            text = f"{item.what} {constraint}".strip()
        return text + (f" ({self.note})" if self.note else "")

    def _satisfies(self, value) -> bool:
        bounds = self._bounds()
        if bounds and not bounds[1](value):
            return False
        if self.choices is not None and value not in self.choices:
            return False
        return self.pattern is None or re.fullmatch(self.pattern, value) is not None


def fields_of(table: dict[str, Field]):
    """A class decorator, under ``@dataclasses.dataclass``: one field per entry of ``table``,
    in its order, typed by its kind (``Field.annotation``), defaulting to its ``default``
    (a copy of a mutable one for each instance; REQUIRED and OMIT: no default)."""
    def decorate(cls):
        cls.__annotations__ = {name: field.annotation for name, field in table.items()}
        for name, field in table.items():
            if field.default is REQUIRED or field.default is OMIT:
                continue
            if isinstance(field.default, (dict, list, set)):
                setattr(cls, name, dataclasses.field(default_factory=functools.partial(copy.deepcopy, field.default)))
            else:
                setattr(cls, name, field.default)
        return cls
    return decorate


def show(value) -> str:
    """A value as the user wrote it, shortened: true/false, lists in brackets, strings quoted."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(show(v) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_value(field: Field, value, label: str, where: str = "", error: type = ConfigError):
    """``value`` if it fits ``field`` (lists as tuples, converted by the kind); else ``error``."""
    if value is None and field.optional:
        return None
    item = field.item

    def refuse(what, got):
        return error(f"{where}{label} must be {what}, got {show(got)}")

    if field.is_list:
        comma = LISTS[field.kind][1]
        if comma and isinstance(value, str):
            items = [part.strip() for part in value.split(",") if part.strip()]
            if item is SCALARS["number"]:
                try:
                    items = [float(part) for part in items]
                except ValueError:
                    raise refuse(field.allowed(), value) from None
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise refuse(field.allowed(), value)
        if not all(item.ok(v) for v in items) or (field.nonempty and not items):
            raise refuse(field.allowed(), value)
        for v in items:
            if not field._satisfies(v):
                raise error(f"{where}{label} values must be {field.constraint()}"
                            f"{f' ({field.note})' if field.note else ''}, got {show(v)}")
        if item is SCALARS["number"]:
            items = [float(v) for v in items]
        value = tuple(items)
    else:
        if not item.ok(value):
            raise refuse(field.allowed(), value)
        if not field._satisfies(value):
            raise refuse(field.constraint() + (f" ({field.note})" if field.note else ""), value)
    if item.convert is not None:
        try:
            return item.convert(value)
        except ValueError as exc:
            raise error(f"{where}{label}: {exc}") from exc
    return value


def check(table: dict, fields: dict[str, Field], where: str = "", *, label: Callable[[str], str] = str,
          noun: str = "field", error: type = ConfigError, fill: bool = True) -> dict:
    """Check every key of ``table`` against ``fields``; return the checked values.

    ``where`` starts every message (e.g. "config file run.toml: "), ``label`` shows a key
    (e.g. as a flag), ``noun`` names keys in the unknown-key message. Unknown keys are
    errors, so a typo never silently falls back to a default. With ``fill`` the result
    also holds every missing field's default (a missing REQUIRED field is an error);
    without it, only the keys given.
    """
    unknown = sorted(key for key in table if key not in fields)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"did you mean {label(close[0])}?" if close else f"known: {', '.join(sorted(fields))}"
        raise error(f"{where}unknown {noun}(s) {', '.join(label(k) for k in unknown)} ({hint})")
    values = {}
    for key, field in fields.items():
        if key in table:
            values[key] = check_value(field, table[key], label(key), where, error)
        elif not fill or field.default is OMIT:
            continue
        elif field.default is REQUIRED:
            raise error(f"{where}missing {noun} {label(key)} ({field.help or field.allowed()})")
        else:
            values[key] = field.default
    return values


def read_toml(path: str | Path, what: str, error: type = ConfigError) -> dict:
    """A TOML file as a dict; a missing, unreadable or malformed file is one line naming ``what``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"{what} {path} {'is a directory, not a file' if path.is_dir() else 'does not exist'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {_one_line(exc)}") from exc
    return parse_toml(text, f"{what} {path}", error)


def parse_toml(text: str, what: str, error: type = ConfigError) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} is not valid TOML: {_one_line(exc)}") from exc


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
