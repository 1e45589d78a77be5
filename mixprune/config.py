"""One typed RunConfig, from command-line flags or a TOML file (flags win).

FIELDS says what each setting may hold; mixprune.settings checks the TOML file, the flags
and the merged RunConfig against it, so a bad value fails before anything is written,
with one line naming the key (or flag) and what is allowed.
"""

from __future__ import annotations

import dataclasses

from .errors import ConfigError
from .executors import EXECUTORS as executor_registry
from .executors import Executor, ExecutorOptions, open_executor
from .pruning import scores
from .settings import Field, check, read_toml

SIGNALS = tuple(scores.SIGNALS.names())  # the registries of pruning/scores.py are the one source
BASELINES = tuple(scores.BASELINES.names())
STRUCTURED_BASELINES = tuple(scores.STRUCTURED_BASELINES.names())
OBJECTIVES = ("latency", "size", "memory")
STORAGES = ("dense", "sparse")
# --mode: zeros in the weights (the paper's method), whole channels cut (the method on channel groups:
# pruning/structured.py), or both families side by side.
MODE_FAMILIES = {"unstructured": ("unstructured",), "structured": ("structured",),
                 "both": ("unstructured", "structured")}
MODES = tuple(MODE_FAMILIES)
# --quantize: which INT8 variants each model gets, by activation type (exporter/quantize.py).
# static: the type measured fastest on this x86 host (uint8); auto: both, the bench decides.
QUANTIZE = {"none": (), "static": ("uint8",), "auto": ("int8", "uint8")}
EXECUTORS = tuple(executor_registry.names())  # local, ray (mixprune/executors)
# the authors' cap on one layer's ratio when shifting a strategy to a common global sparsity
# (pruning/strategies.py); a --sparsity above it is out of reach for any model (at it, every layer sits at
# the cap; a model whose ranges pin some layers at 0 cannot reach it, which the shift reports)
MAX_SHIFTED_RATIO = 0.98
# structured cuts keep channel counts a multiple of this unless --round-to or a device profile's
# channel_multiple says otherwise
DEFAULT_ROUND_TO = 8


@dataclasses.dataclass
class RunConfig:
    # model and data
    model: str = "resnet18"
    data: str = "digits"
    img_size: int = 32
    checkpoint: str | None = None
    pretrained: bool = False
    pretrained_file: str | None = None
    model_args: dict = dataclasses.field(default_factory=dict)
    seed: int = 0
    batch_size: int = 64
    # dense training (only without a checkpoint)
    train_epochs: int = 15
    train_lr: float | None = None  # None: the model family's rule table ([training] lr)
    # pruning
    calib_fraction: float = 0.10
    signals: tuple = SIGNALS
    baselines: tuple = scores.global_methods()  # the paper's MAG, SNIP and GraSP
    targets: tuple = (0.7, 0.8, 0.9)
    sparsity: float | None = None
    # structured pruning (--mode structured or both)
    macs_targets: tuple = (0.3, 0.5, 0.7)
    macs_reduction: float | None = None
    structured_baselines: tuple = STRUCTURED_BASELINES
    round_to: int | None = None  # None: the devices' channel_multiple (`run`), else DEFAULT_ROUND_TO
    rules: str | None = None
    recalibrate: bool = True
    recal_samples: int = 512
    finetune_epochs: int = 2
    finetune_top: int = 3
    finetune_lr: float = 1e-4
    finetune_patience: int = 3
    # later stages
    out: str | None = None
    devices: tuple = ("host",)
    max_drop: float = 1.0
    objective: str = "latency"
    storage: str = "dense"
    quantize: str = "none"
    export_top: int = 2  # `mixprune run`: export, quantize and bench the K best of each family within --max-drop
    bench_runs: int | None = None  # None: the device profile's
    bench_warmup: int | None = None
    quick: bool = False
    mode: str = MODES[0]
    # where the per-candidate work runs (mixprune/executors): same results either way
    executor: str = "local"
    ray_address: str | None = None  # None: a local Ray instance, started and stopped by mixprune
    ray_cpus_per_task: int = 1

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field against FIELDS (types and ranges); lists become tuples."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in check(values, FIELDS, fill=False).items():
            setattr(self, name, value)

    def open_executor(self, devices: tuple[str, ...] = ()) -> Executor:
        """The executor the run's per-candidate work runs on (a context manager); a local Ray
        instance also holds ``devices`` (profile names) for the benchmarks."""
        return open_executor(self.executor, ExecutorOptions(self.ray_address, self.ray_cpus_per_task, devices))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, toml_file: str | None = None, presets: tuple = (), **flags) -> "RunConfig":
        """Defaults, then ``presets`` (dicts, in order), then the TOML file, then explicitly given flags.

        The TOML file and the flags are checked on their own first, so a bad value is named
        as the user gave it (``targets`` in run.toml, ``--targets`` on the command line).
        """
        values = {}
        for preset in presets:
            values.update(preset)
        values.update(load_toml(toml_file) if toml_file else {})
        values.update(check({k: v for k, v in flags.items() if v is not None}, FIELDS,
                            label=flag_label, noun="flag", fill=False))
        return cls(**values)


FIELDS: dict[str, Field] = {
    "model": Field("str"),
    "data": Field("str"),
    "img_size": Field("int", range=">= 8"),
    "checkpoint": Field("str", optional=True),
    "pretrained": Field("bool"),
    "pretrained_file": Field("str", optional=True),
    "model_args": Field("table", note="timm constructor arguments, e.g. {patch_size = 4}"),
    "seed": Field("int", range=">= 0"),
    "batch_size": Field("int", range=">= 1"),
    "train_epochs": Field("int", range=">= 0"),
    "train_lr": Field("number", range="> 0", optional=True),
    "calib_fraction": Field("number", range="(0, 1]"),
    "signals": Field("names", choices=SIGNALS, nonempty=True),
    "baselines": Field("names", choices=BASELINES),
    "targets": Field("numbers", range="[0, 1)", nonempty=True),
    "sparsity": Field("number", range=f"[0, {MAX_SHIFTED_RATIO}]", optional=True,
                      note=f"every layer is capped at {MAX_SHIFTED_RATIO:.0%}"),
    "macs_targets": Field("numbers", range="(0, 1)", nonempty=True),
    "macs_reduction": Field("number", range="(0, 1)", optional=True),
    "structured_baselines": Field("names", choices=STRUCTURED_BASELINES),
    "round_to": Field("int", range=">= 1", optional=True, note="channels"),
    "rules": Field("str", optional=True),
    "recalibrate": Field("bool"),
    "recal_samples": Field("int", range=">= 1"),
    "finetune_epochs": Field("int", range=">= 0"),
    "finetune_top": Field("int", range=">= 0"),
    "finetune_lr": Field("number", range="> 0"),
    "finetune_patience": Field("int", range=">= 0"),
    "out": Field("str", optional=True),
    "devices": Field("names", nonempty=True, note="device profile names or .toml files, e.g. host"),
    "max_drop": Field("number", range=">= 0", note="accuracy points"),
    "objective": Field("str", choices=OBJECTIVES),
    "storage": Field("str", choices=STORAGES),
    "quantize": Field("str", choices=tuple(QUANTIZE), note="INT8 variants: none, static (uint8 activations) "
                      "or auto (int8 and uint8 activations, each its own candidate)"),
    "export_top": Field("int", range=">= 1"),
    "bench_runs": Field("int", range=">= 1", optional=True),
    "bench_warmup": Field("int", range=">= 0", optional=True),
    "quick": Field("bool"),
    "mode": Field("str", choices=MODES),
    "executor": Field("str", choices=EXECUTORS, note="ray needs the optional extra: pip install -e \".[ray]\""),
    "ray_address": Field("str", optional=True, note="auto, host:port, or none for a local instance"),
    "ray_cpus_per_task": Field("int", range=">= 1"),
}
# fields that say where work runs, not what it makes: a resumed run may change them
PLACEMENT = frozenset({"executor", "ray_address", "ray_cpus_per_task"})
assert set(FIELDS) == RunConfig.field_names(), "FIELDS and RunConfig disagree"

# The command-line flag of each field, where `prune` or `run` has one: --img-size for img_size
# unless named here. CONFIG_ONLY fields have no flag; they are set in a --config file.
FLAG_NAMES = {"model_args": "--model-arg", "recalibrate": "--no-recalibrate"}
CONFIG_ONLY = frozenset({"batch_size", "recal_samples", "finetune_patience", "bench_warmup"})


def flag_label(name: str) -> str:
    """How a value given as a flag (or a Python keyword) is named in messages."""
    if name in CONFIG_ONLY or name not in FIELDS:
        return name
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def load_toml(path: str) -> dict:
    """The settings of a --config file, checked against FIELDS (keys may use - or _)."""
    where = f"config file {path}: "
    raw = read_toml(path, "config file")
    spelled = {}
    for key in raw:
        name = key.replace("-", "_")
        if name in spelled:
            raise ConfigError(f"{where}{spelled[name]} and {key} are the same key; keep one")
        spelled[name] = key
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    return check(values, FIELDS, where, label=lambda name: spelled.get(name, name), noun="key", fill=False)


# `mixprune run` trains like `prune` (32x32, 15 epochs) but fine-tunes less, and makes INT8 variants,
# keeping the whole default run (resnet18 on digits, host) under 5 minutes (4.8 measured);
# experiments/pipeline/README.md has the measured stage times.
RUN_DEFAULTS = {"finetune_epochs": 1, "finetune_top": 1, "recal_samples": 256, "quantize": "auto",
                "mode": "both", "macs_reduction": 0.5}
# `mixprune run --quick`: a tiny configuration for tests and smoke checks (about a minute).
QUICK_DEFAULTS = {"model": "test_resnet", "img_size": 16, "train_epochs": 1, "signals": ("magnitude",),
                  "baselines": ("mag",), "finetune_epochs": 1, "finetune_top": 1, "recal_samples": 128,
                  "export_top": 2, "bench_runs": 10, "bench_warmup": 2}


def run_presets(toml_file: str | None, explicit: dict) -> tuple:
    """The presets of `mixprune run`: RUN_DEFAULTS, plus QUICK_DEFAULTS with --quick (flag or TOML)."""
    quick = explicit.get("quick")
    if quick is None and toml_file:
        quick = load_toml(toml_file).get("quick")
    return (RUN_DEFAULTS, QUICK_DEFAULTS) if quick else (RUN_DEFAULTS,)


def resolve_resume(toml_file: str | None, explicit: dict, presets: tuple = ()) -> RunConfig:
    """The configuration of the run being resumed; flags that contradict it are refused."""
    from .runs import RunDir

    out = explicit.get("out") or (load_toml(toml_file).get("out") if toml_file else None)
    if not out:
        raise ConfigError("--resume needs --out: the run directory to continue")
    run = RunDir(out)
    if not run.exists():
        return RunConfig.build(toml_file, presets, **explicit)
    stored = run.load().get("config", {})
    requested = RunConfig.build(toml_file, **explicit).to_dict() if (explicit or toml_file) else {}
    from_file = set(load_toml(toml_file)) if toml_file else set()
    names = {k: flag_label(k) for k in explicit}  # a flag wins over the same key in the file
    names.update({k: f"{k} in {toml_file}" for k in from_file - set(explicit)})
    # the run is where --out says: a run directory moved or copied elsewhere resumes there
    clashes = sorted(label for k, label in names.items()
                     if k != "out" and k not in PLACEMENT and k in stored and requested.get(k) != stored[k])
    if clashes:
        raise ConfigError(f"--resume: {', '.join(clashes)} differ from the run in {out}; "
                          f"drop those settings or start a new run with another --out")
    placement = {k: requested[k] for k in PLACEMENT & set(names)}  # either executor resumes a run
    return RunConfig.build(**{**{k: v for k, v in stored.items() if k in RunConfig.field_names()}, **placement,
                              "out": str(out)})
