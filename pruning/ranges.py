"""Phase 1: per-layer [rho_min, rho_max] from global runs, clamped by rule tables.

Rule tables are data (``rules/*.toml``): a generic default for any model and tables for
model families that extend it. Each rule clamps the range of the layers it matches into
[min, max]; rules apply in ascending priority, so where two rules meet the higher
priority wins (the small-layer cap, 90, beats a patch-embedding band, 20).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from importlib import resources
from pathlib import Path

from mixprune.errors import ConfigError

from .roles import Layer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_RULE_KEYS = {"name", "roles", "max_params", "min_params", "name_regex", "min", "max", "priority"}
_TABLE_KEYS = {"name", "extends", "models", "strategies", "rules", "training"}
# [training]: how to train the dense model from scratch for this family (prune without a checkpoint)
_TRAINING_KEYS = {"lr": ((int, float), "a number"), "batch_size": (int, "an integer"),
                  "warmup": ((int, float), "a number"), "schedule": (str, "a string")}
SCHEDULES = ("constant", "cosine")
MAX_RATIO = 0.99


@dataclasses.dataclass
class Rule:
    name: str
    priority: int
    lo: float = 0.0
    hi: float = MAX_RATIO
    roles: tuple = ()
    max_params: int | None = None  # matches layers with fewer parameters
    min_params: int | None = None
    name_regex: str | None = None

    def matches(self, layer: Layer) -> bool:
        if self.roles and layer.role not in self.roles:
            return False
        if self.max_params is not None and layer.params >= self.max_params:
            return False
        if self.min_params is not None and layer.params < self.min_params:
            return False
        return not (self.name_regex and not re.search(self.name_regex, layer.name))


@dataclasses.dataclass
class RuleTable:
    name: str
    models: tuple
    strategies: tuple
    rules: tuple  # sorted by priority
    source: str
    training: dict = dataclasses.field(default_factory=dict)  # lr, batch_size, warmup, schedule

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "strategies": list(self.strategies),
                "rules": [dataclasses.asdict(r) for r in self.rules], "training": self.training}


def _parse_rule(raw, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_RULE_KEYS))})")
    if not isinstance(raw.get("name"), str):
        raise ConfigError(f"{where}.name must be a string")
    for key in ("min", "max"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, (int, float)) or not 0.0 <= value <= MAX_RATIO):
            raise ConfigError(f"{where}.{key} must be a number in [0, {MAX_RATIO}], got {value!r}")
    lo, hi = float(raw.get("min", 0.0)), float(raw.get("max", MAX_RATIO))
    if lo > hi:
        raise ConfigError(f"{where}: min {lo} is above max {hi}")
    if not isinstance(raw.get("priority", 0), int):
        raise ConfigError(f"{where}.priority must be an integer")
    roles = raw.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise ConfigError(f"{where}.roles must be a list of role names")
    for key in ("max_params", "min_params"):
        if key in raw and not isinstance(raw[key], int):
            raise ConfigError(f"{where}.{key} must be an integer")
    if "name_regex" in raw:
        try:
            re.compile(raw["name_regex"])
        except (re.error, TypeError) as exc:
            raise ConfigError(f"{where}.name_regex is not a valid regular expression: {exc}") from exc
    return Rule(name=raw["name"], priority=raw.get("priority", 0), lo=lo, hi=hi, roles=tuple(roles),
                max_params=raw.get("max_params"), min_params=raw.get("min_params"),
                name_regex=raw.get("name_regex"))


def _check_training(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([training])")
    unknown = sorted(set(raw) - set(_TRAINING_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(_TRAINING_KEYS)})")
    for key, (types, what) in _TRAINING_KEYS.items():
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], types)):
            raise ConfigError(f"{where}.{key} must be {what}, got {raw[key]!r}")
    if raw.get("lr", 1.0) <= 0 or raw.get("batch_size", 1) < 1 or not 0.0 <= raw.get("warmup", 0.0) < 1.0:
        raise ConfigError(f"{where}: lr must be > 0, batch_size >= 1 and warmup (a fraction of the steps) in [0, 1)")
    if raw.get("schedule", "constant") not in SCHEDULES:
        raise ConfigError(f"{where}.schedule must be one of {', '.join(SCHEDULES)}")
    return raw


def _read_table(text: str, source: str) -> dict:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rule table {source} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - _TABLE_KEYS)
    if unknown:
        raise ConfigError(f"rule table {source}: unknown field(s) {', '.join(unknown)}")
    if not isinstance(raw.get("name"), str):
        raise ConfigError(f"rule table {source}: 'name' must be a string")
    if not isinstance(raw.get("rules", []), list):
        raise ConfigError(f"rule table {source}: 'rules' must be an array of tables ([[rules]])")
    _check_training(raw.get("training", {}), f"rule table {source}: training")
    raw["parsed_rules"] = [_parse_rule(r, f"rule table {source}: rules[{i}]") for i, r in enumerate(raw.get("rules", []))]
    raw["source"] = source
    return raw


def _builtin_raw_tables() -> dict[str, dict]:
    tables = {}
    for entry in resources.files("mixprune.pruning").joinpath("rules").iterdir():
        if entry.name.endswith(".toml"):
            raw = _read_table(entry.read_text(), f"builtin:{entry.name}")
            tables[raw["name"]] = raw
    return tables


def _resolve(raw: dict, known: dict[str, dict]) -> RuleTable:
    chain, seen = [raw], {raw["name"]}
    while chain[-1].get("extends"):
        parent_name = chain[-1]["extends"]
        if parent_name in seen or parent_name not in known:
            raise ConfigError(f"rule table {raw['source']}: cannot extend '{parent_name}' "
                              f"(known tables: {', '.join(sorted(known))})")
        seen.add(parent_name)
        chain.append(known[parent_name])
    # every table starts from generic.toml's full [training] recipe, even one that extends nothing
    rules, strategies, training = {}, None, dict(known["generic"]["training"])
    for table in reversed(chain):  # the child overrides same-named rules and training keys of its parent
        rules.update({rule.name: rule for rule in table["parsed_rules"]})
        strategies = table.get("strategies", strategies)
        training.update(table.get("training", {}))
    if not strategies:
        raise ConfigError(f"rule table {raw['source']}: no 'strategies' list (and none inherited)")
    ordered = tuple(sorted(rules.values(), key=lambda r: r.priority))
    return RuleTable(name=raw["name"], models=tuple(raw.get("models", [])), strategies=tuple(strategies),
                     rules=ordered, source=raw["source"], training=training)


def list_tables() -> list[RuleTable]:
    known = _builtin_raw_tables()
    return [_resolve(raw, known) for raw in known.values()]


def get_table(model_name: str, rules_file: str | None = None) -> RuleTable:
    """The user's table when given, else the most specific built-in table for the model."""
    known = _builtin_raw_tables()
    if rules_file:
        path = Path(rules_file)
        if not path.is_file():
            raise ConfigError(f"rule table {path} does not exist")
        return _resolve(_read_table(path.read_text(), str(path)), known)
    family = [raw for _, raw in sorted(known.items()) if raw["name"] != "generic"
              and any(fnmatch.fnmatch(model_name, pattern) for pattern in raw.get("models", []))]
    return _resolve(family[0] if family else known["generic"], known)


def layer_ranges(layers: list[Layer], global_ratios: dict[str, dict[str, float]], table: RuleTable) -> dict:
    """ranges.json ``layers``: {name: {min, max, params, role, rule, global_min, global_max}}.

    ``global_ratios`` maps a run label ("mag@0.80") to {layer name: ratio left by that run}.
    """
    out = {}
    for layer in layers:
        observed = [run[layer.name] for run in global_ratios.values()]
        lo, hi = min(observed), max(observed)
        clamped_by = []
        for rule in table.rules:
            if not rule.matches(layer):
                continue
            new_lo, new_hi = min(max(lo, rule.lo), rule.hi), min(max(hi, rule.lo), rule.hi)
            if (new_lo, new_hi) != (lo, hi):
                clamped_by.append(rule.name)
            lo, hi = new_lo, new_hi
        out[layer.name] = {
            "min": round(lo, 6), "max": round(hi, 6), "params": layer.params, "role": layer.role,
            "rule": "+".join(clamped_by) if clamped_by else "global",
            "global_min": round(min(observed), 6), "global_max": round(max(observed), 6),
            "stage": layer.stage, "block": layer.block,
        }
    return out
