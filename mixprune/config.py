"""One typed RunConfig, from command-line flags or a TOML file (flags win).

FIELDS declares each run setting once: its kind and range or choices, its default, its help
and its command-line flag (none: set in a --config file only). RunConfig's fields are made
from it, and so are the click options of `prune`, `run` and the other commands that take a
setting (mixprune/cli.py). mixprune.settings checks the TOML file, the flags and the merged
RunConfig against it, so a bad value fails before anything is written, with one line naming
the key as the user wrote it (TOML key or flag) and what is allowed.
"""

from __future__ import annotations

import dataclasses

from .errors import ConfigError
from .executors import EXECUTORS as executor_registry
from .executors import Executor, ExecutorOptions, open_executor
from .pruning import scores
from .objectives import OBJECTIVES
from .settings import Field, Flag, check, fields_of, read_toml

SIGNALS = tuple(scores.SIGNALS.names())  # the registries of pruning/scores.py are the one source
BASELINES = tuple(scores.BASELINES.names())
STRUCTURED_BASELINES = tuple(scores.STRUCTURED_BASELINES.names())
STORAGES = ("dense", "sparse")
# --mode: zeros in the weights (the paper's method), whole channels cut (the method on channel groups:
# pruning/structured.py), or both families side by side.
MODE_FAMILIES = {"unstructured": ("unstructured",), "structured": ("structured",),
                 "both": ("unstructured", "structured")}
MODES = tuple(MODE_FAMILIES)
# --quantize: which INT8 recipes (exporter/quantize.py RECIPES, by name) make each model's variants.
# static: uint8 activations, the type measured fastest on this x86 host; auto: every recipe that applies to the
# model (int8d, dynamic quantization, only to models with attention), the bench decides.
QUANTIZE = {"none": (), "static": ("int8u",), "auto": ("int8", "int8u", "int8d")}
EXECUTORS = tuple(executor_registry.names())  # local, ray (mixprune/executors)
# the authors' cap on one layer's ratio when shifting a strategy to a common global sparsity
# (pruning/strategies.py); a --sparsity above it is out of reach for any model (at it, every layer sits at
# the cap; a model whose ranges pin some layers at 0 cannot reach it, which the shift reports)
MAX_SHIFTED_RATIO = 0.98
# structured cuts keep channel counts a multiple of this unless --round-to or a device profile's
# channel_multiple says otherwise
DEFAULT_ROUND_TO = 8


# `mixprune run` trains like `prune` (32x32, 15 epochs) but fine-tunes less, and makes INT8 variants,
# keeping the whole default run (resnet18 on digits, host) under 5 minutes;
# experiments/pipeline/README.md has the measured stage times.
RUN_DEFAULTS = {"finetune_epochs": 1, "finetune_top": 1, "recal_samples": 256, "quantize": "auto",
                "mode": "both", "macs_reduction": 0.5}
# `mixprune run --quick`: a tiny configuration for tests and smoke checks (about a minute).
QUICK_DEFAULTS = {"model": "test_resnet", "img_size": 16, "train_epochs": 1, "signals": ("magnitude",),
                  "baselines": ("mag",), "finetune_epochs": 1, "finetune_top": 1, "recal_samples": 128,
                  "export_top": 2, "bench_runs": 10, "bench_warmup": 2}


def describe_settings(values: dict) -> str:
    """Settings as --help shows them: name=value, lists as comma lists."""
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in values.items())


_EXECUTOR_NOTE = "ray needs the optional extra: pip install -e \".[ray]\""

# Every run setting, declared once: kind, range or choices, default, help, flag (None: --config only).
# RunConfig has one field per entry, in this order (run.json's "config" keeps it); `prune` and `run`
# offer the flags, the defaults shown by click (for `run` with RUN_DEFAULTS on top).
FIELDS: dict[str, Field] = {
    # model and data
    "model": Field("str", default="resnet18", flag=Flag("--model"),
                   help="timm model name (see `mixprune models list`)."),
    "data": Field("str", default="digits", flag=Flag("--data"),
                  help="'digits' (built in) or a folder with train/ and val/ class folders."),
    "img_size": Field("int", range=">= 8", default=32, flag=Flag("--img-size"),
                      help="Input image size in pixels (square)."),
    "checkpoint": Field("str", optional=True, default=None, flag=Flag("--checkpoint", path="file"),
                        help="Trained weights (.safetensors, or a torch file loaded with weights_only); without it "
                             "the dense model is trained first."),
    "pretrained": Field("bool", default=False, flag=Flag("--pretrained"),
                        help="Start from timm's pretrained weights (needs the hub, or --pretrained-file)."),
    "pretrained_file": Field("str", optional=True, default=None, flag=Flag("--pretrained-file", path="file"),
                             help="Local file for timm's pretrained loading."),
    "model_args": Field("table", note="timm constructor arguments, e.g. {patch_size = 4}", default={},
                        flag=Flag("--model-arg", metavar="KEY=VALUE"),
                        help="Extra timm constructor argument, e.g. patch_size=4 (repeatable)."),
    "seed": Field("int", range=">= 0", default=0, flag=Flag("--seed"), help="Random seed."),
    "batch_size": Field("int", range=">= 1", default=64,
                        help="Images per batch of the calibration pass and of fine-tuning."),
    # dense training (only without a checkpoint)
    "train_epochs": Field("int", range=">= 0", default=15, flag=Flag("--train-epochs"),
                          help="Epochs to train the dense model when no --checkpoint is given."),
    "train_lr": Field("number", range="> 0", optional=True, default=None,  # None: the rule table's [training] lr
                      flag=Flag("--train-lr", default_text="the rule table's"),
                      help="Adam learning rate for that training; each model family's rule table sets one "
                           "([training] lr), with its batch size and schedule."),
    # pruning
    "calib_fraction": Field("number", range="(0, 1]", default=0.10, flag=Flag("--calib-fraction"),
                            help="Fraction of the training split used for calibration."),
    "signals": Field("names", choices=SIGNALS, nonempty=True, default=SIGNALS, flag=Flag("--signals"),
                     help=f"Saliency signals to prune by: a comma list of {', '.join(SIGNALS)}."),
    "baselines": Field("names", choices=BASELINES, default=scores.global_methods(),  # the paper's MAG, SNIP, GraSP
                       flag=Flag("--baselines"),
                       help=f"Matched global baselines: a comma list of {', '.join(BASELINES)}."),
    "targets": Field("numbers", range="[0, 1)", nonempty=True, default=(0.7, 0.8, 0.9), flag=Flag("--targets"),
                     help="Global sparsities of the range-finding runs (comma list)."),
    "sparsity": Field("number", range=f"[0, {MAX_SHIFTED_RATIO}]", optional=True, default=None,
                      note=f"every layer is capped at {MAX_SHIFTED_RATIO:.0%}", flag=Flag("--sparsity"),
                      help="Shift every strategy to this global sparsity (e.g. 0.9)."),
    # structured pruning (--mode structured or both)
    "macs_targets": Field("numbers", range="(0, 1)", nonempty=True, default=(0.3, 0.5, 0.7),
                          flag=Flag("--macs-targets"),
                          help="Structured mode: MAC reductions of the range-finding global channel runs "
                               "(comma list)."),
    "macs_reduction": Field("number", range="(0, 1)", optional=True, default=None, flag=Flag("--macs-reduction"),
                            help="Structured mode: shift every strategy so its cut removes this share of the MACs "
                                 "(e.g. 0.5)."),
    "structured_baselines": Field("names", choices=STRUCTURED_BASELINES, default=STRUCTURED_BASELINES,
                                  flag=Flag("--structured-baselines"),
                                  help=f"Structured mode's matched baselines at the same MACs: a comma list of "
                                       f"{', '.join(STRUCTURED_BASELINES)} (Torch-Pruning's global magnitude and "
                                       f"Taylor, one ratio for every layer)."),
    "round_to": Field("int", range=">= 1", optional=True, default=None, note="channels",  # None: see default_text
                      flag=Flag("--round-to", default_text=f"{DEFAULT_ROUND_TO}; under `run`, the devices' "
                                                           f"channel_multiple"),
                      help="Structured mode: keep channel counts multiples of this."),
    "rules": Field("str", optional=True, default=None, flag=Flag("--rules", path="file"),
                   help="Your own rule table (TOML) instead of the built-in one."),
    "recalibrate": Field("bool", default=True, flag=Flag("--no-recalibrate"),
                         help="Skip re-estimating BatchNorm statistics after pruning."),
    "recal_samples": Field("int", range=">= 1", default=512,
                           help="Training images that re-estimate the BatchNorm statistics of each candidate."),
    "finetune_epochs": Field("int", range=">= 0", default=2, flag=Flag("--finetune-epochs"),
                             help="Fine-tune epochs (0 = none)."),
    "finetune_top": Field("int", range=">= 0", default=3, flag=Flag("--finetune-top"),
                          help="Fine-tune the best K candidates and their matched baselines."),
    "finetune_lr": Field("number", range="> 0", default=1e-4, flag=Flag("--finetune-lr"),
                         help="Adam learning rate for fine-tuning."),
    "finetune_patience": Field("int", range=">= 0", default=3,
                               help="Stop fine-tuning after this many epochs without a gain in tune accuracy."),
    # later stages
    "out": Field("str", optional=True, default=None, flag=Flag("--out", path="dir"), help="Run directory to write."),
    "devices": Field("names", nonempty=True, note="device profile names or .toml files, e.g. host", default=("host",),
                     flag=Flag("--devices"), help="Comma list of device profiles to benchmark on, e.g. host,rpi4."),
    "max_drop": Field("number", minimum=0, note="accuracy points", default=1.0,
                      flag=Flag("--max-drop", click_checks=True),
                      help="Largest accuracy drop vs the dense model, in points (1.0 = one percentage point)."),
    "objective": Field("str", choices=OBJECTIVES, default="latency", flag=Flag("--objective"),
                       help="What the choice minimizes: p50 latency, compact file size or peak RSS."),
    "storage": Field("str", choices=STORAGES, default="dense", flag=Flag("--storage"),
                     help="What model.onnx holds: plain initializers, or sparse_initializers (smaller file; "
                          "onnxruntime densifies them at load)."),
    "quantize": Field("str", choices=tuple(QUANTIZE), default="none", flag=Flag("--quantize"),
                      note="INT8 variants: none, static (uint8 activations) or auto (int8 and uint8 activations, "
                           "and dynamic for attention models, each its own candidate)",
                      help="INT8 variants of every exported model, each a candidate of its own (<model>+int8u: "
                           "uint8 activations, <model>+int8: int8 ones, <model>+int8d: dynamic, attention models "
                           "only): none, static (uint8, the faster type on x86) or auto (all that apply; the bench "
                           "decides)."),
    "export_top": Field("int", range=">= 1", default=2, flag=Flag("--export-top"),
                        help="Export and bench the K best candidates of each family (unstructured, structured) "
                             "within --max-drop."),
    "bench_runs": Field("int", range=">= 1", optional=True, default=None,  # None: the device profile's
                        flag=Flag("--bench-runs", default_text="the device profile's"),
                        help="Timed runs per model."),
    "bench_warmup": Field("int", range=">= 0", optional=True, default=None,  # None: the device profile's
                          help="Untimed runs before timing."),
    "quick": Field("bool", default=False, flag=Flag("--quick"),
                   help=f"Tiny configuration for tests and smoke checks: {describe_settings(QUICK_DEFAULTS)} "
                        f"(flags you give and --config still win)."),
    "mode": Field("str", choices=MODES, default=MODES[0], flag=Flag("--mode"),
                  help="unstructured: zeros in the weights (smaller files, dense speed); structured: whole channels "
                       "cut (smaller, faster models); both: the two families side by side."),
    # where the per-candidate work runs (mixprune/executors): same results either way
    "executor": Field("str", choices=EXECUTORS, note=_EXECUTOR_NOTE, default="local", flag=Flag("--executor"),
                      help=f"Where the per-candidate work runs: in this process, or as tasks on a Ray cluster "
                           f"(same results; {_EXECUTOR_NOTE})."),
    "ray_address": Field("str", optional=True, note="auto, host:port, or none for a local instance", default=None,
                         flag=Flag("--ray-address", metavar="auto|HOST:PORT"),
                         help="--executor ray: the cluster to join (auto: the one `ray start` made on this machine); "
                              "none: a local Ray instance, started and stopped by mixprune."),
    "ray_cpus_per_task": Field("int", minimum=1, default=1, flag=Flag("--ray-cpus-per-task", click_checks=True),
                               help="--executor ray: CPUs (and torch threads) per task."),
}
# fields that say where work runs, not what it makes: a resumed run may change them
PLACEMENT = frozenset({"executor", "ray_address", "ray_cpus_per_task"})


@dataclasses.dataclass
@fields_of(FIELDS)
class RunConfig:
    """Every setting of a run: one field per entry of FIELDS (its name, its type, its default)."""

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


def flag_label(name: str) -> str:
    """How a value given as a flag (or a Python keyword) is named in messages: its flag, else its name."""
    field = FIELDS.get(name)
    return field.flag.name if field is not None and field.flag is not None else name


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
