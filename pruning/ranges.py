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
from importlib import resources

from mixprune.errors import ConfigError
from mixprune.settings import OMIT, Field, check, parse_toml, read_toml

from .roles import ROLE_PATTERNS, Layer

SCHEDULES = ("constant", "cosine")
MAX_RATIO = 0.99
# every role pruning/roles.py gives a layer (normalization weights are never layers: only conv and linear weights are)
ROLES = tuple(role for role, _ in ROLE_PATTERNS) + ("classifier", "stem", "depthwise", "conv", "linear")

# What a rule table may hold; mixprune.settings checks a table against these.
TABLE_FIELDS = {
    "name": Field("str", help="the table's name"),
    "extends": Field("str", OMIT),
    "models": Field("str_list", OMIT, note="timm name patterns such as 'resnet*'"),
    "strategies": Field("str_list", OMIT, nonempty=True),
    "rules": Field("tables", OMIT, note="[[rules]] sections"),
    "training": Field("table", OMIT, note="a [training] section"),
}
RULE_FIELDS = {
    "name": Field("str", help="the rule's name, a string"),
    "roles": Field("str_list", (), choices=ROLES),
    "max_params": Field("int", None, range=">= 0"),  # matches layers with fewer parameters
    "min_params": Field("int", None, range=">= 0"),
    "name_regex": Field("regex", None),
    "min": Field("number", 0.0, range=f"[0, {MAX_RATIO}]"),
    "max": Field("number", MAX_RATIO, range=f"[0, {MAX_RATIO}]"),
    "priority": Field("int", 0),
}
# [training]: how to train the dense model from scratch for this family (prune without a checkpoint)
TRAINING_FIELDS = {
    "lr": Field("number", OMIT, range="> 0"),
    "batch_size": Field("int", OMIT, range=">= 1"),
    "warmup": Field("number", OMIT, range="[0, 1)", note="a fraction of all steps"),
    "schedule": Field("str", OMIT, choices=SCHEDULES),
}


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


def _parse_rule(raw, where: str, index: int) -> Rule:
    v = check(raw, RULE_FIELDS, where, label=lambda key: f"rules[{index}].{key}")
    if v["min"] > v["max"]:
        raise ConfigError(f"{where}rules[{index}]: min {v['min']} is above max {v['max']}")
    return Rule(name=v["name"], priority=v["priority"], lo=float(v["min"]), hi=float(v["max"]), roles=v["roles"],
                max_params=v["max_params"], min_params=v["min_params"], name_regex=v["name_regex"])


def _check_training(raw, where: str) -> dict:
    return check(raw, TRAINING_FIELDS, f"{where}[training] ", fill=False)


def _read_table(text: str, source: str) -> dict:
    return _check_table(parse_toml(text, f"rule table {source}"), source)


def _check_table(raw: dict, source: str) -> dict:
    where = f"rule table {source}: "
    from .strategies import STRATEGIES  # registered strategies, plugins included

    table = check(raw, TABLE_FIELDS, where, label=lambda key: f"'{key}'")
    unknown = [name for name in table.get("strategies", ()) if name not in STRATEGIES]
    if unknown:
        raise ConfigError(f"{where}'strategies' values must be strategy names ({', '.join(STRATEGIES.names())}), "
                          f"got {unknown[0]!r}")
    table["training"] = _check_training(table.get("training", {}), where)
    table["parsed_rules"] = [_parse_rule(r, where, i) for i, r in enumerate(table.get("rules", ()))]
    table["source"] = source
    return table


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


def get_table(model_name: str, rules_file: str | None = None) -> RuleTable:
    """The user's table when given, else the most specific built-in table for the model."""
    known = _builtin_raw_tables()
    if rules_file:
        return _resolve(_check_table(read_toml(rules_file, "rule table"), str(rules_file)), known)
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
