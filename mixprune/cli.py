"""The `mixprune` command line: one thin command per stage, plus `run` for all of them.

Commands parse and validate flags, then call the stage; nothing imports this module.
Any MixpruneError ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import sys

import click

from .config import (BASELINES, DEFAULT_ROUND_TO, EXECUTORS, FIELDS, MODES, OBJECTIVES, QUANTIZE, QUICK_DEFAULTS, RUN_DEFAULTS,
                     SIGNALS, STORAGES, STRUCTURED_BASELINES, RunConfig, resolve_resume, run_presets)
from .devices.fields import MB
from .errors import MixpruneError


class MixpruneGroup(click.Group):
    """Turns mixprune's own errors into one clear line and exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MixpruneError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            resumable = ctx.invoked_subcommand in ("prune", "run")
            click.echo("Interrupted; finished work is kept" + (", continue with --resume." if resumable else "."),
                       err=True)
            ctx.exit(130)


@click.group(cls=MixpruneGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mixprune")
def main():
    """Compress a vision model for an edge device and ship the best variant.

    \b
    One command for everything (train, prune, export, bench, rank, report, release):
      mixprune run
    Or stage by stage (each reads and writes one run directory):
      mixprune prune  --model resnet18 --data digits --out runs/demo
      mixprune export runs/demo
      mixprune bench  runs/demo --device host
      mixprune rank   runs/demo
      mixprune release runs/demo && mixprune verify runs/demo/release/*.tar.gz
    """


# --- models ---------------------------------------------------------------------------
@main.group()
def models():
    """Look up timm model names."""


@models.command("list")
@click.argument("pattern", required=False)
def models_list(pattern):
    """List timm model names matching PATTERN (shell wildcards, e.g. 'resnet*')."""
    from .models import list_models

    names = list_models(pattern if pattern and any(c in pattern for c in "*?[") else (f"*{pattern}*" if pattern else None))
    if not names:
        raise MixpruneError(f"no timm model matches '{pattern}'; try a wildcard such as 'resnet*'")
    click.echo("\n".join(names))


# --- the options of prune and run, each declared once -----------------------------------
def _ratio_list(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers such as 0.7,0.8,0.9, got '{value}'")


def _model_args(ctx, param, values):
    if not values:
        return None
    parsed = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got '{item}'")
        parsed[key] = _literal(raw)
    return parsed


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _explicit(ctx, **values):
    """Only the flags the user gave, so TOML files and resumed runs keep their own values."""
    from click.core import ParameterSource

    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}


# Each option is declared once, in OPTIONS; each command takes the ones it needs with _options.
# An option whose default is FROM_CONFIG sets the RunConfig field of its name, and its help shows
# that field's default as the command uses it: RunConfig's default in config.py, and for `run`
# RUN_DEFAULTS on top. Click passes that default when the flag is not given, but _explicit()
# drops it, so a --config file, --quick and a resumed run keep their own values.
FROM_CONFIG = object()


def _config_defaults(*presets: dict) -> dict:
    """RunConfig's field defaults with ``presets`` on top; tuples as the comma lists their flags take."""
    values = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}
    for preset in presets:
        values.update(preset)
    return {name: ",".join(map(str, v)) if isinstance(v, tuple) else v for name, v in values.items()}


CONFIG_DEFAULTS = _config_defaults()  # prune, and the RunConfig options of rank and export
RUN_FLAG_DEFAULTS = _config_defaults(RUN_DEFAULTS)  # run: prune's training, less fine-tuning


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in values.items())


# {parameter name: (flag, click.option attributes)}
OPTIONS: dict[str, tuple[str, dict]] = {
    "model": ("--model", dict(default=FROM_CONFIG, help="timm model name (see `mixprune models list`).")),
    "data": ("--data", dict(default=FROM_CONFIG,
                            help="'digits' (built in) or a folder with train/ and val/ class folders.")),
    "out": ("--out", dict(type=click.Path(file_okay=False), help="Run directory to write.")),
    "checkpoint": ("--checkpoint", dict(
        type=click.Path(dir_okay=False),
        help="Trained weights (.safetensors, or a torch file loaded with weights_only); without it the "
             "dense model is trained first.")),
    "pretrained": ("--pretrained", dict(
        is_flag=True, default=None,
        help="Start from timm's pretrained weights (needs the hub, or --pretrained-file).")),
    "pretrained_file": ("--pretrained-file", dict(type=click.Path(dir_okay=False),
                                                  help="Local file for timm's pretrained loading.")),
    "model_args": ("--model-arg", dict(multiple=True, callback=_model_args, metavar="KEY=VALUE",
                                       help="Extra timm constructor argument, e.g. patch_size=4 (repeatable).")),
    "img_size": ("--img-size", dict(type=int, default=FROM_CONFIG, help="Input image size in pixels (square).")),
    "train_epochs": ("--train-epochs", dict(type=int, default=FROM_CONFIG,
                                            help="Epochs to train the dense model when no --checkpoint is given.")),
    "train_lr": ("--train-lr", dict(type=float, show_default="the rule table's",
                                    help="Adam learning rate for that training; each model family's rule "
                                         "table sets one ([training] lr), with its batch size and schedule.")),
    "signals": ("--signals", dict(default=FROM_CONFIG,
                                  help=f"Saliency signals to prune by: a comma list of {', '.join(SIGNALS)}.")),
    "baselines": ("--baselines", dict(default=FROM_CONFIG,
                                      help=f"Matched global baselines: a comma list of {', '.join(BASELINES)}.")),
    "targets": ("--targets", dict(default=FROM_CONFIG, callback=_ratio_list,
                                  help="Global sparsities of the range-finding runs (comma list).")),
    "sparsity": ("--sparsity", dict(type=float, help="Shift every strategy to this global sparsity (e.g. 0.9).")),
    "macs_targets": ("--macs-targets", dict(default=FROM_CONFIG, callback=_ratio_list,
                                            help="Structured mode: MAC reductions of the range-finding global "
                                                 "channel runs (comma list).")),
    "macs_reduction": ("--macs-reduction", dict(type=float, default=FROM_CONFIG, help="Structured mode: shift every strategy so its cut "
                                                                 "removes this share of the MACs (e.g. 0.5).")),
    "structured_baselines": ("--structured-baselines", dict(
        default=FROM_CONFIG, help=f"Structured mode's matched baselines at the same MACs: a comma list of "
                                  f"{', '.join(STRUCTURED_BASELINES)} (Torch-Pruning's global magnitude and "
                                  f"Taylor, one ratio for every layer).")),
    "round_to": ("--round-to", dict(type=int, default=FROM_CONFIG,
                                    show_default=f"{DEFAULT_ROUND_TO}; under `run`, the devices' channel_multiple",
                                    help="Structured mode: keep channel counts multiples of this.")),
    "rules": ("--rules", dict(type=click.Path(dir_okay=False),
                              help="Your own rule table (TOML) instead of the built-in one.")),
    "calib_fraction": ("--calib-fraction", dict(type=float, default=FROM_CONFIG,
                                                help="Fraction of the training split used for calibration.")),
    "recalibrate": ("--no-recalibrate", dict(flag_value=False, default=None,
                                             help="Skip re-estimating BatchNorm statistics after pruning.")),
    "finetune_epochs": ("--finetune-epochs", dict(type=int, default=FROM_CONFIG, help="Fine-tune epochs (0 = none).")),
    "finetune_top": ("--finetune-top", dict(type=int, default=FROM_CONFIG,
                                            help="Fine-tune the best K candidates and their matched baselines.")),
    "finetune_lr": ("--finetune-lr", dict(type=float, default=FROM_CONFIG, help="Adam learning rate for fine-tuning.")),
    "seed": ("--seed", dict(type=int, default=FROM_CONFIG, help="Random seed.")),
    "devices": ("--devices", dict(default=FROM_CONFIG,
                                  help="Comma list of device profiles to benchmark on, e.g. host,rpi4.")),
    "max_drop": ("--max-drop", dict(type=click.FloatRange(min=0), default=FROM_CONFIG,
                                    help="Largest accuracy drop vs the dense model, in points "
                                         "(1.0 = one percentage point).")),
    "objective": ("--objective", dict(type=click.Choice(OBJECTIVES), default=FROM_CONFIG,
                                      help="What the choice minimizes: p50 latency, compact file size or peak RSS.")),
    "storage": ("--storage", dict(type=click.Choice(STORAGES), default=FROM_CONFIG,
                                  help="What model.onnx holds: plain initializers, or sparse_initializers "
                                       "(smaller file; onnxruntime densifies them at load).")),
    "quantize": ("--quantize", dict(type=click.Choice(tuple(QUANTIZE)), default=FROM_CONFIG,
                                    help="INT8 variants of every exported model, each a candidate of its own "
                                         "(<model>+int8u: uint8 activations, <model>+int8: int8 ones): none, "
                                         "static (uint8, the faster type on x86) or auto (both; the bench decides).")),
    "export_top": ("--export-top", dict(type=int, default=FROM_CONFIG,
                                        help="Export and bench the K best candidates of each family (unstructured, "
                                             "structured) within --max-drop.")),
    "bench_runs": ("--bench-runs", dict(type=int, show_default="the device profile's", help="Timed runs per model.")),
    "mode": ("--mode", dict(type=click.Choice(MODES), default=FROM_CONFIG,
                            help="unstructured: zeros in the weights (smaller files, dense speed); structured: "
                                 "whole channels cut (smaller, faster models); both: the two families side by side.")),
    "executor": ("--executor", dict(type=click.Choice(EXECUTORS), default=FROM_CONFIG,
                                    help="Where the per-candidate work runs: in this process, or as tasks on a "
                                         f"Ray cluster (same results; {FIELDS['executor'].note}).")),
    "ray_address": ("--ray-address", dict(default=FROM_CONFIG, metavar="auto|HOST:PORT",
                                          help="--executor ray: the cluster to join (auto: the one `ray start` made "
                                               "on this machine); none: a local Ray instance, started and stopped "
                                               "by mixprune.")),
    "ray_cpus_per_task": ("--ray-cpus-per-task", dict(type=click.IntRange(min=1), default=FROM_CONFIG,
                                                      help="--executor ray: CPUs (and torch threads) per task.")),
    "quick": ("--quick", dict(is_flag=True, default=None,
                              help=f"Tiny configuration for tests and smoke checks: {_settings(QUICK_DEFAULTS)} "
                                   f"(flags you give and --config still win).")),
    "config_file": ("--config", dict(
        type=click.Path(dir_okay=False),
        help="TOML file with any of these settings, keys named like the flags (e.g. finetune-epochs = 3); "
             "flags you give win over it, and it wins over the defaults shown.")),
    "resume": ("--resume", dict(is_flag=True, help="Continue an interrupted run in --out without redoing "
                                                   "finished work; the run keeps its settings.")),
}


def _options(defaults: dict, *names: str, **changes: dict):
    """The options ``names`` (keys of OPTIONS), in this order, FROM_CONFIG defaults taken from
    ``defaults``; ``changes`` {name: {attribute: value}} adapts an option to one command."""
    def decorate(command):
        for name in reversed(names):
            flag, attrs = OPTIONS[name]
            attrs = {**attrs, **changes.get(name, {})}
            if attrs.get("default") is FROM_CONFIG:
                attrs["default"] = defaults[name]
                attrs.setdefault("show_default", True)
            command = click.option(flag, name, **attrs)(command)
        return command
    return decorate


# --- prune ----------------------------------------------------------------------------
@main.command()
@_options(CONFIG_DEFAULTS, "model", "data", "out", "checkpoint", "pretrained", "pretrained_file", "model_args",
          "img_size", "train_epochs", "train_lr", "mode", "signals", "baselines", "targets", "sparsity",
          "macs_targets", "macs_reduction", "structured_baselines", "round_to", "rules", "calib_fraction", "recalibrate", "finetune_epochs", "finetune_top", "finetune_lr", "seed",
          "executor", "ray_address", "ray_cpus_per_task", "config_file", "resume",
          out={"help": "Run directory to create, e.g. runs/demo (required: here or in --config)."})
@click.pass_context
def prune(ctx, config_file, resume, **flags):
    """Train (if needed) and prune a model into Mix-and-Match candidates.

    \b
    Writes to --out: dense/ (weights, accuracy), ranges.json (per-layer ranges),
    candidates/<cid>/ (strategy.json, eval.json, and the weights as masks over
    the dense ones: masks/state.safetensors, values.safetensors once fine-tuned)
    for 3 signals x 10 strategies plus matched global baselines.
    With --mode structured (or both), also candidates/st-<signal>-<strategy>/:
    whole channels cut (cut.json + state.safetensors: the tensors that differ
    from the dense ones with the cut replayed),
    and st-base-<mag|taylor|uniform>-m<MAC reduction %> baselines at the same MACs.
    """
    from .pruning.stage import run_prune

    explicit = _explicit(ctx, **flags)
    if resume:
        config = resolve_resume(config_file, explicit)
    else:
        config = RunConfig.build(config_file, **explicit)
    if not config.out:
        raise click.UsageError("--out is required (the run directory to write), e.g. --out runs/demo")
    summary = run_prune(config, resume=resume)
    click.echo(f"{summary['mixmatch']} Mix-and-Match candidates, {summary['structured']} structured ones and "
               f"{summary['baselines']} baselines in {config.out}; best before export: {summary['best']} "
               f"(dense accuracy {summary['dense_accuracy']:.3f})")



# --- export ---------------------------------------------------------------------------
@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--candidate", "candidates", multiple=True, metavar="CID", show_default="all",
              help="Export only this candidate ('dense' for the dense model); repeatable.")
@_options(CONFIG_DEFAULTS, "storage", "quantize")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim (it is also skipped whenever it loses zeros or grows the file).")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True, help="ONNX opset version.")
@click.option("--force", is_flag=True, help="Re-export models whose weights and options did not change.")
@_options(CONFIG_DEFAULTS, "executor", "ray_address", "ray_cpus_per_task")
def export(run_dir, candidates, storage, quantize, no_simplify, opset, force, **placement):
    """Export the dense model and candidates of RUN_DIR to ONNX, verified and stored compactly.

    Writes model.onnx, model.onnx.mxc (lossless compact container; expand it with
    `python -m mixprune.compact expand`) and export.json into each model's folder.
    A model that cannot be exported is named with why and the command fails, after
    exporting the others all the same.
    """
    from mixprune.errors import ExportError
    from mixprune.exporter.stage import ExportOptions, export_run

    options = ExportOptions(opset=opset, storage=storage, simplify=not no_simplify, force=force, quantize=quantize)
    with _open_executor(**placement) as executor:
        summary = export_run(run_dir, candidates, options, executor)
    _echo_exports(summary)
    if summary.failures:
        listed = "; ".join(f"{cid}: {why}" for cid, why in summary.failures.items())
        raise ExportError(f"{len(summary.failures)} model(s) could not be exported ({listed})")


def _open_executor(executor: str, ray_address: str | None, ray_cpus_per_task: int, devices: tuple[str, ...] = ()):
    from .executors import ExecutorOptions, open_executor

    return open_executor(executor, ExecutorOptions(ray_address, ray_cpus_per_task, devices))


def _echo_exports(summary) -> None:
    width = max(map(len, [*summary.records, *summary.variant_failures]), default=0)
    for cid, rec in summary.records.items():
        size = rec["bytes"]
        click.echo(
            f"{cid:<{width}}  {'skipped (up to date)' if rec['skipped'] else 'exported':<20} "
            f"zeros {rec['zeros_onnx']}/{rec['zeros_torch']} {'kept' if rec['sparsity_preserved'] else 'LOST'}  "
            f"max|diff| {rec['parity']['max_abs_diff']:.1e}  top-1 agree {rec['parity']['top1_agreement']:.3f}  "
            f"onnx {size['onnx'] / MB:.2f} MB, compact {size['compact'] / size['onnx']:.3f}x")
    for vid, why in summary.variant_failures.items():
        click.echo(f"{vid:<{width}}  not made: {why}")



# --- devices and bench ----------------------------------------------------------------
@main.group()
def devices():
    """Device profiles: which machine `mixprune bench` measures on, and how.

    \b
    A profile is a TOML file: cores, onnxruntime threads and options, memory and
    latency budgets, warm-up and runs, and a runner (local, ssh or emulated).
    Make your own by copying a built-in one:
      mixprune devices show rpi4 > my-pi.toml    (then edit runner.host)
      mixprune bench model.onnx --device my-pi.toml
    """


@devices.command("list")
def devices_list():
    """List the built-in device profiles."""
    from .devices.profiles import builtin_profiles

    rows = [("name", "arch", "threads", "runner", "memory budget", "latency budget", "description")]
    for p in builtin_profiles():
        rows.append((p.name, p.arch, str(p.intra_op_threads or "all"), p.runner.describe(),
                     f"{p.memory_budget_mb:g} MB" if p.memory_budget_mb else "-",
                     f"{p.latency_budget_ms:g} ms" if p.latency_budget_ms else "-", p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@devices.command("show")
@click.argument("device", metavar="NAME|FILE")
def devices_show(device):
    """Check a profile (built-in NAME or .toml FILE) and print it."""
    from pathlib import Path

    from .devices.profiles import load_profile

    profile = load_profile(device)
    click.echo(f"# {profile.source}\n" + Path(profile.source).read_text(encoding="utf-8").rstrip())


def _parse_shapes(ctx, param, values):
    from .devices.fields import parse_dims

    shapes = {}
    for value in values:
        name, sep, dims = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError(f"'{value}' is not NAME=DIMS")
            shapes[name] = parse_dims(dims)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; use e.g. --shape input=1x3x224x224", ctx=ctx, param=param) from exc
    return shapes


@main.command()
@click.argument("target", metavar="MODEL.onnx|RUN_DIR", type=click.Path(path_type=str))
@click.option("--device", required=True, metavar="NAME|FILE",
              help="Device profile: a built-in name (see `mixprune devices list`) or a profile .toml file.")
@click.option("--runs", type=click.IntRange(min=1), show_default="the profile's",
              help="Timed runs per model after warm-up (alone, and in all over the interleaved rounds).")
@click.option("--warmup", type=click.IntRange(min=0), show_default="the profile's", help="Untimed runs before timing.")
@click.option("--threads", type=click.IntRange(min=0),
              help="onnxruntime intra-op threads, overriding the profile's; 0 = all cores of the device.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", callback=_parse_shapes,
              help="Size of an input with dynamic dimensions, e.g. --shape input=1x3x224x224; repeat per input.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record(s) instead of a table.")
@_options(CONFIG_DEFAULTS, "executor", "ray_address", "ray_cpus_per_task")
def bench(target, device, runs, warmup, threads, shapes, as_json, **placement):
    """Measure latency, cold start, peak memory and size with onnxruntime on a device.

    \b
    MODEL.onnx: any ONNX file; prints a table (or the JSON record with --json).
    RUN_DIR:    the dense model and every exported candidate of a mixprune run: each
                alone in a fresh process (cold start, peak RSS), then all of them
                timed in one process with the dense model, runs interleaved over
                rounds (the latency that ranks: paired ratios to dense); writes
                <model dir>/bench/<device>.json.
    The torch-free agent runs on this machine, over SSH or under ARM emulation, as
    the profile's runner says; with --executor ray, each agent process is a Ray task
    on the node that holds the device (resource device:NAME), one at a time.
    """
    import json
    from pathlib import Path

    from .benchmarks.bench import agent_config, bench_model, bench_run_dir
    from .benchmarks.records import format_record, format_table
    from .devices.profiles import load_profile
    from .errors import BenchmarkError
    from .progress import say

    path = Path(target)
    if not path.exists():
        raise BenchmarkError(f"{target} does not exist (give an .onnx file or a run directory)")
    profile = load_profile(device)
    config = agent_config(profile, runs=runs, warmup=warmup, threads=threads, shapes=shapes)
    with _open_executor(**placement, devices=(profile.name,)) as executor:
        if path.is_dir():
            records = bench_run_dir(path, profile, config, executor)
        else:
            say(f"Benchmarking {path.name} on {profile.name}: {config['warmup']} warm-up + {config['runs']} runs")
            record = bench_model(path, profile, config, executor)
    if path.is_dir():
        click.echo(json.dumps(records, indent=2) if as_json else format_table(records))
    else:
        click.echo(json.dumps(record, indent=2) if as_json else format_record(record))


# --- rank, release, verify, run ---------------------------------------------------------
@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@_options(CONFIG_DEFAULTS, "max_drop")
@click.option("--device", "devices", multiple=True, metavar="NAME", show_default="every benchmarked device",
              help="Rank on this device's bench records (repeatable).")
@_options(CONFIG_DEFAULTS, "objective")
def rank(run_dir, max_drop, devices, objective):
    """Rank every candidate of RUN_DIR (matched baselines included) and choose one to ship.

    \b
    Eligible: accuracy drop <= --max-drop, a verified export, and within each
    device profile's memory and latency budgets. The choice minimizes --objective on
    the first real (non-emulated) device; differences within measured noise are ties,
    broken by higher accuracy, then smaller size. Writes ranking.json (every candidate
    with `eligible` and the reason), report.html and pareto.png into RUN_DIR.
    """
    from .pipeline import rank_and_report

    ranking = rank_and_report(run_dir, max_drop=max_drop, devices=devices, objective=objective)
    _print_ranking(ranking, run_dir)


def _print_ranking(ranking: dict, run_dir, top: int = 5) -> None:
    devices = [d["name"] for d in ranking["devices"]]
    click.echo(f"{'rank':>4}  {'candidate':<32} {'kernels':>7} {'sparsity':>8} {'accuracy':>8} {'drop pt':>7} "
               f"{'compact MB':>10}" + "".join(f" {d + ' p50 ms':>14}" for d in devices))
    for r in [r for r in ranking["candidates"] if r["eligible"]][:top]:
        click.echo(f"{r['rank']:>4}  {r['cid']:<32} {r['kernels']:>7} {r['global_sparsity']:>8.1%} "
                   f"{r['accuracy']:>8.2%} {r['drop_points']:>7.2f} {r['bytes']['compact'] / MB:>10.2f}"
                   + "".join(f" {r['devices'][d]['p50_ms']:>14.3f}" for d in devices))
    excluded = len(ranking["candidates"]) - ranking["eligible_count"]
    click.echo(f"... {ranking['eligible_count']} eligible, {excluded} excluded (reasons in ranking.json)")
    for vid, why in ranking["variant_failures"].items():
        click.echo(f"not made: {vid}: {why}")
    click.echo(f"speed: {ranking['speed_note']}")
    click.echo(f"chosen: {ranking['chosen_why']}")
    click.echo(f"written: {run_dir}/ranking.json, {run_dir}/report.html, {run_dir}/pareto.png")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--candidate", default="best", show_default=True, metavar="CID|best",
              help="Candidate id to release; 'best' = the one ranking.json chose (run `mixprune rank` first).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str),
              show_default="RUN_DIR/release/<model>-<cid>.tar.gz", help="Bundle path (.tar.gz).")
@click.option("--force", is_flag=True, help="Overwrite an existing bundle.")
def release(run_dir, candidate, out, force):
    """Package a candidate as a verifiable, reproducible release bundle (.tar.gz).

    \b
    The bundle holds model.onnx (in the storage chosen at export), MODEL_CARD.md and
    manifest.json (sha256 of every other file, model, strategy with per-layer sparsity,
    accuracy, bench record per device, package versions, input spec, class labels).
    The same inputs give a byte-identical bundle. Check one with `mixprune verify`.
    """
    from .release import release as make_release

    result = make_release(run_dir, candidate, out, force=force)
    click.echo(f"{result['path']}  ({result['candidate']}, sha256 {result['sha256']})")


@main.command()
@click.argument("bundle", metavar="BUNDLE.tar.gz", type=click.Path(dir_okay=False, path_type=str))
def verify(bundle):
    """Check a release bundle: safe entries, every file's sha256, one onnxruntime inference.

    Refuses (exit code 2) modified, missing or extra files, absolute or '..' paths and
    links, without extracting anything outside a temporary folder. Needs only numpy and
    onnxruntime.
    """
    from .release import verify as check

    result = check(bundle)
    click.echo(f"OK {bundle}: {len(result['files'])} files match the manifest; model.onnx ran in onnxruntime "
               f"{result['onnxruntime']} (output {result['output_shape']}); sha256 {result['sha256']}")


@main.command()
@_options(RUN_FLAG_DEFAULTS, "model", "data", "checkpoint", "devices", "max_drop", "objective", "out", "img_size",
          "train_epochs", "signals", "sparsity", "macs_reduction", "finetune_epochs", "finetune_top", "export_top",
          "storage",
          "quantize", "bench_runs", "seed", "mode", "executor", "ray_address", "ray_cpus_per_task", "quick",
          "config_file", "resume",
          out={"show_default": "runs/<model>-<data>"})
@click.option("--force", is_flag=True, help="Delete an existing run in --out and start over.")
@click.pass_context
def run(ctx, config_file, resume, force, **flags):
    """Everything in one command: train, prune, export, bench, rank, report, release.

    \b
    With no arguments: resnet18 trained on the built-in digits data, pruned into
    Mix-and-Match candidates and matched global baselines, the best ones within
    --max-drop exported and measured on this machine (`host`), ranked, reported
    (report.html) and packaged (release/*.tar.gz) in runs/resnet18-digits.
    Prints where everything is and which candidate was chosen and why.
    """
    from .pipeline import default_out, run_pipeline

    if resume and force:
        raise click.UsageError("--resume and --force contradict each other; give one")
    explicit = _explicit(ctx, **flags)
    presets = run_presets(config_file, explicit)
    if not explicit.get("out"):
        draft = RunConfig.build(config_file, presets, **explicit)
        explicit["out"] = draft.out or default_out(draft)
    config = resolve_resume(config_file, explicit, presets) if resume else RunConfig.build(config_file, presets, **explicit)
    result = run_pipeline(config, resume=resume, force=force)
    ranking, bundle = result["ranking"], result["bundle"]
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in result["timings_s"].items() if "." not in k)
    click.echo(f"run directory: {result['out']}  ({timings})")
    click.echo(f"report:        {result['out'] / 'report.html'}  (ranking.json, pareto.png beside it)")
    click.echo(f"bundle:        {bundle['path']}  (sha256 {bundle['sha256'][:16]}...; check with `mixprune verify`)")
    click.echo(f"chosen:        {ranking['chosen_why']}")
    click.echo(f"speed:         {ranking['speed_note']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
