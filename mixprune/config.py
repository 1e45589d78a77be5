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
    train_lr: float = 1e-3
    # pruning
    calib_fraction: float = 0.10
    signals: tuple = SIGNALS
    baselines: tuple = ("mag", "snip", "grasp")
    targets: tuple = (0.7, 0.8, 0.9)
    sparsity: float | None = None
    rules: str | None = None
    recalibrate: bool = True
    recal_samples: int = 1024
    finetune_epochs: int = 2
    finetune_top: int = 3
    finetune_lr: float = 1e-4
    finetune_patience: int = 3
    # later stages (seams; only the local executor and unstructured mode exist today)
    out: str | None = None
    devices: tuple = ("host",)
    max_drop: float = 1.0
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
        if self.batch_size < 1 or self.img_size < 8:
            raise ConfigError("--batch-size must be >= 1 and --img-size >= 8")
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
    def build(cls, toml_file: str | None = None, **flags) -> "RunConfig":
        """Defaults, then the TOML file, then explicitly given flags."""
        values = load_toml(toml_file) if toml_file else {}
        values.update({k: v for k, v in flags.items() if v is not None})
        tuple_fields = {f.name for f in dataclasses.fields(cls) if f.type == "tuple"}
        for key in tuple_fields & set(values):
            if isinstance(values[key], str):
                values[key] = split_list(values[key])
            values[key] = tuple(values[key])
        for key in ("targets",):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
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


def resolve_resume(toml_file: str | None, explicit: dict) -> RunConfig:
    """The configuration of the run being resumed; flags that contradict it are refused."""
    from .runs import RunDir

    out = explicit.get("out") or (load_toml(toml_file).get("out") if toml_file else None)
    if not out:
        raise ConfigError("--resume needs --out: the run directory to continue")
    run = RunDir(out)
    if not run.exists():
        return RunConfig.build(toml_file, **explicit)
    stored = run.load().get("config", {})
    requested = RunConfig.build(toml_file, **explicit).to_dict() if (explicit or toml_file) else {}
    given = set(explicit) | (set(load_toml(toml_file)) if toml_file else set())
    clashes = sorted(k for k in given if k in stored and requested.get(k) != stored[k])
    if clashes:
        raise ConfigError(f"--resume: {', '.join(clashes)} differ from the run in {out}; "
                          f"drop those flags or start a new run with another --out")
    return RunConfig.build(**{k: v for k, v in stored.items() if k in RunConfig.field_names()})
