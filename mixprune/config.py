"""One typed RunConfig, from command-line flags or a TOML file (flags win)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SIGNALS = ("magnitude", "gradient", "product")
BASELINES = ("mag", "snip", "grasp", "uniform")
OBJECTIVES = ("latency", "size", "memory")
STORAGES = ("dense", "sparse")


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
    baselines: tuple = ("mag", "snip", "grasp")
    targets: tuple = (0.7, 0.8, 0.9)
    sparsity: float | None = None
    rules: str | None = None
    recalibrate: bool = True
    recal_samples: int = 512
    finetune_epochs: int = 2
    finetune_top: int = 3
    finetune_lr: float = 1e-4
    finetune_patience: int = 3
    # later stages (seams; only the local executor and unstructured mode exist today)
    out: str | None = None
    devices: tuple = ("host",)
    max_drop: float = 1.0
    objective: str = "latency"
    storage: str = "dense"
    export_top: int = 3  # `mixprune run`: export and bench the K best candidates within --max-drop
    bench_runs: int | None = None  # None: the device profile's
    bench_warmup: int | None = None
    quick: bool = False
    mode: str = "unstructured"
    executor: str = "local"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def ratio(name, value):
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")

        for target in self.targets:
            ratio("each --targets value", target)
        if not self.targets:
            raise ConfigError("--targets needs at least one value, e.g. 0.7,0.8,0.9")
        if self.sparsity is not None:
            ratio("--sparsity", self.sparsity)
        if not 0.0 < self.calib_fraction <= 1.0:
            raise ConfigError(f"--calib-fraction must be in (0, 1], got {self.calib_fraction}")
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown or not self.signals:
            raise ConfigError(f"unknown signal(s) {unknown or '(none)'}; choose from {', '.join(SIGNALS)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
        for name in ("train_epochs", "finetune_epochs", "finetune_top", "finetune_patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
        if self.train_lr is not None and self.train_lr <= 0:
            raise ConfigError(f"--train-lr must be > 0, got {self.train_lr}")
        if self.batch_size < 1 or self.img_size < 8:
            raise ConfigError("--batch-size must be >= 1 and --img-size >= 8")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective must be one of {', '.join(OBJECTIVES)}, got '{self.objective}'")
        if self.storage not in STORAGES:
            raise ConfigError(f"--storage must be one of {', '.join(STORAGES)}, got '{self.storage}'")
        if self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 accuracy points, got {self.max_drop}")
        if not self.devices:
            raise ConfigError("--devices needs at least one device profile, e.g. host")
        if self.export_top < 1 or (self.bench_runs is not None and self.bench_runs < 1) or \
                (self.bench_warmup is not None and self.bench_warmup < 0):
            raise ConfigError("--export-top and --bench-runs must be >= 1, --bench-warmup >= 0")
        if self.mode != "unstructured":
            raise ConfigError(f"--mode {self.mode} is not available yet; use unstructured")
        if self.executor != "local":
            raise ConfigError(f"--executor {self.executor} is not available yet; use local")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def build(cls, toml_file: str | None = None, presets: tuple = (), **flags) -> "RunConfig":
        """Defaults, then ``presets`` (dicts, in order), then the TOML file, then explicitly given flags."""
        values = {}
        for preset in presets:
            values.update(preset)
        values.update(load_toml(toml_file) if toml_file else {})
        values.update({k: v for k, v in flags.items() if v is not None})
        tuple_fields = {f.name for f in dataclasses.fields(cls) if f.type == "tuple"}
        for key in tuple_fields & set(values):
            if isinstance(values[key], str):
                values[key] = split_list(values[key])
            values[key] = tuple(values[key])
        if "targets" in values:
            values["targets"] = tuple(float(v) for v in values["targets"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"bad configuration: {exc}") from exc


def split_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def load_toml(path: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(values) - RunConfig.field_names())
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    return values


# `mixprune run` trains like `prune` (32x32, 15 epochs) but fine-tunes less, to keep the whole
# default run (resnet18 on digits, host) near 2.5 minutes; experiments/pipeline/README.md has
# the measured stage times.
RUN_DEFAULTS = {"finetune_epochs": 1, "finetune_top": 1, "recal_samples": 256}
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
    given = set(explicit) | (set(load_toml(toml_file)) if toml_file else set())
    clashes = sorted(k for k in given if k in stored and requested.get(k) != stored[k])
    if clashes:
        raise ConfigError(f"--resume: {', '.join(clashes)} differ from the run in {out}; "
                          f"drop those flags or start a new run with another --out")
    return RunConfig.build(**{k: v for k, v in stored.items() if k in RunConfig.field_names()})
