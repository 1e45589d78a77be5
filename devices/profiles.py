"""Device profiles: TOML data files describing a machine and how to benchmark on it.

Built-in profiles live in ``devices/profiles/*.toml``; a user's own TOML file works anywhere
a name does. The schema below is the whole contract; every field is checked, and a
malformed file is reported with the name of the bad field. An MB is 2^20 bytes (``fields.MB``)
in every ``*_mb`` field, as in the bench records the budgets are compared with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mixprune.errors import DeviceError
from mixprune.settings import read_toml

from .fields import SHAPES, Field, validate
from .runners import Runner, get_runner, list_runners

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"

SCHEMA: dict[str, dict[str, Field]] = {
    "": {
        "name": Field("str", help="short id, used in file names (bench/<name>.json)", pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*"),
        "description": Field("str", ""),
        "arch": Field("str", help="CPU architecture; auto = whatever runs the agent (the record's machine)",
                      choices=("auto", "x86_64", "aarch64", "armv7l")),
        "cpu": Field("str", "", help="CPU model, e.g. Cortex-A72"),
        "cores": Field("int", help="CPU cores of the device; 0 = every core of the machine the agent runs on", minimum=0),
        "memory_mb": Field("number", 0, help="installed RAM, MB (2^20 bytes; informative); 0 = unknown", minimum=0),
        "channel_multiple": Field("int", 0, minimum=0, help="`mixprune run` keeps the channel counts of structured "
                                  "cuts a multiple of this (the vector width the device's kernels prefer); "
                                  "0 = mixprune's default"),
    },
    "onnxruntime": {
        "intra_op_threads": Field("int", help="threads inside one operator; 0 = all usable cores", minimum=0),
        "inter_op_threads": Field("int", 1, help="threads across operators (sequential execution uses 1)", minimum=1),
        "execution_providers": Field("str_list", ["CPUExecutionProvider"]),
        "graph_optimization_level": Field("str", "all", choices=("disable", "basic", "extended", "all")),
        "allow_spinning": Field("bool", True, help="worker threads spin between operators (faster, burns CPU)"),
    },
    "budget": {
        "memory_mb": Field("number", 0, help="peak RSS allowed for the model's process, MB (2^20 bytes); "
                                             "0 = no budget", minimum=0),
        "latency_ms": Field("number", 0, help="p50 latency allowed; 0 = no budget", minimum=0),
        "size_mb": Field("number", 0, help="size of the model file shipped, MB (2^20 bytes); 0 = no budget", minimum=0),
    },
    "benchmark": {
        "warmup": Field("int", 10, minimum=0),
        "runs": Field("int", 100, minimum=1, help="timed runs per model (in all, over the interleaved rounds)"),
        "rounds": Field("int", 20, minimum=1, help="rounds of interleaved runs when a run directory's models "
                                                   "are compared in one process"),
        "interleave_models": Field("int", 8, minimum=2, help="models loaded in one process at once (with the "
                                                             "reference); lower it on a device with little RAM"),
        "interleave_processes": Field("int", 3, minimum=1, help="agent processes each group is timed in (a process "
                                                                "has a speed of its own; their ratios are pooled)"),
        "shapes": Field(SHAPES, {}, help='sizes for dynamic input dims, e.g. {input = "1x3x224x224"}'),
    },
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    arch: str
    cpu: str
    cores: int
    memory_mb: float
    channel_multiple: int
    intra_op_threads: int
    inter_op_threads: int
    execution_providers: tuple[str, ...]
    graph_optimization_level: str
    allow_spinning: bool
    memory_budget_mb: float
    latency_budget_ms: float
    size_budget_mb: float
    warmup: int
    runs: int
    rounds: int
    interleave_models: int
    interleave_processes: int
    shapes: dict
    runner: Runner
    source: str

    @property
    def emulated(self) -> bool:
        return self.runner.emulated


def parse_profile(data: dict, where: str) -> Profile:
    """Validate one parsed TOML document; ``where`` names it in error messages."""
    layout = {**SCHEMA[""], **{section: Field("table", {}, note=f"a [{section}] section") for section in SCHEMA if section},
              "runner": Field("table", {"kind": "local"}, note="a [runner] section")}
    document = validate(data, layout, where)
    v = {section: validate(document[section], SCHEMA[section], where, prefix=f"{section}.") for section in SCHEMA if section}
    v[""] = {key: document[key] for key in SCHEMA[""]}
    runner_table = document["runner"]
    kinds = {"kind": Field("str", choices=tuple(list_runners()))}
    kind = validate({"kind": runner_table["kind"]} if "kind" in runner_table else {}, kinds, where, prefix="runner.")["kind"]
    runner_cls = get_runner(kind)
    runner = runner_cls(validate(runner_table, runner_cls.fields, where, prefix="runner."))
    top, ort, budget, bench = v[""], v["onnxruntime"], v["budget"], v["benchmark"]
    return Profile(
        name=top["name"], description=top["description"], arch=top["arch"], cpu=top["cpu"], cores=top["cores"],
        memory_mb=top["memory_mb"], channel_multiple=top["channel_multiple"], intra_op_threads=ort["intra_op_threads"],
        inter_op_threads=ort["inter_op_threads"], execution_providers=tuple(ort["execution_providers"]),
        graph_optimization_level=ort["graph_optimization_level"], allow_spinning=ort["allow_spinning"],
        memory_budget_mb=budget["memory_mb"], latency_budget_ms=budget["latency_ms"],
        size_budget_mb=budget["size_mb"],
        warmup=bench["warmup"], runs=bench["runs"], rounds=bench["rounds"],
        interleave_models=bench["interleave_models"], interleave_processes=bench["interleave_processes"],
        shapes=bench["shapes"], runner=runner, source=where,
    )


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".toml") or os.sep in ref or (os.altsep is not None and os.altsep in ref)


def load_profile(ref: str | os.PathLike) -> Profile:
    """A built-in profile by name (``rpi4``) or a user's TOML file (``./my-pi.toml``)."""
    ref = str(ref)
    if _looks_like_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise DeviceError(f"device profile {ref} does not exist")
    else:
        path = BUILTIN_DIR / f"{ref}.toml"
        if not path.is_file():
            raise DeviceError(f"unknown device '{ref}'; built-in devices: {', '.join(builtin_names())} "
                              "(or give the path of your own profile .toml; see `mixprune devices show host`)")
    return parse_profile(read_toml(path, "device profile", DeviceError), str(path))


def builtin_profiles() -> list[Profile]:
    return [load_profile(name) for name in builtin_names()]
