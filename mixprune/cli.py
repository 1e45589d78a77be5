"""The `mixprune` command line: one thin command per stage, plus `run` for all of them.

Commands parse and validate flags, then call the stage; nothing imports this module.
Any MixpruneError ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from .config import FIELDS, RUN_DEFAULTS, RunConfig, resolve_resume, run_presets
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


# --- options, each declared once -----------------------------------------------------------
# A run setting's option (flag, help, default) is made from its entry in config.FIELDS; the
# other options are declared in OPTIONS below. Each command takes the ones it needs, in the
# order given, with _options.
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


def _explicit(ctx, **values):
    """Only the flags the user gave, so TOML files and resumed runs keep their own values."""
    from click.core import ParameterSource

    return {k: v for k, v in values.items() if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}


def _config_defaults(*presets: dict) -> dict:
    """RunConfig's field defaults with ``presets`` on top; tuples as the comma lists their flags take."""
    values = {name: field.default for name, field in FIELDS.items()}
    for preset in presets:
        values.update(preset)
    return {name: ",".join(map(str, v)) if isinstance(v, tuple) else v for name, v in values.items()}


CONFIG_DEFAULTS = _config_defaults()  # prune, and the run settings of rank, export and bench
RUN_FLAG_DEFAULTS = _config_defaults(RUN_DEFAULTS)  # run: prune's training, less fine-tuning


def _setting_option(name: str, defaults: dict) -> dict:
    """The click.option attributes of run setting ``name`` (config.FIELDS); ``defaults`` gives the
    default shown. Click passes that default when the flag is not given, but _explicit() drops it,
    so a --config file, --quick and a resumed run keep their own values."""
    field = FIELDS[name]
    flag = field.flag
    attrs = {"help": field.help, **({"metavar": flag.metavar} if flag.metavar else {})}
    if field.kind == "bool":  # the flag sets the opposite of the default (--pretrained, --no-recalibrate)
        return {**attrs, "is_flag": True, "flag_value": not field.default, "default": None}
    if field.kind == "table":  # --model-arg KEY=VALUE, repeatable
        return {**attrs, "multiple": True, "callback": _model_args}
    if flag.path:
        attrs["type"] = click.Path(file_okay=flag.path == "file", dir_okay=flag.path == "dir")
    elif field.choices is not None and not field.is_list:
        attrs["type"] = click.Choice(field.choices)
    elif flag.click_checks:
        attrs["type"] = (click.IntRange if field.kind == "int" else click.FloatRange)(min=field.minimum)
    else:  # the range is checked with the others when the RunConfig is built, naming the flag
        attrs["type"] = {"int": int, "number": float}.get(field.kind, str)
    if field.kind == "numbers":
        attrs["callback"] = _ratio_list
    if defaults[name] is not None:
        attrs.update(default=defaults[name], show_default=True)
    elif flag.default_text:
        attrs["show_default"] = flag.default_text
    return attrs


# The options that are not run settings: {name: (flags and parameter name, click.option attributes)}.
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "config_file": (("--config", "config_file"), dict(
        type=click.Path(dir_okay=False),
        help="TOML file with any of these settings, keys named like the flags (e.g. finetune-epochs = 3); "
             "flags you give win over it, and it wins over the defaults shown.")),
    "resume": (("--resume",), dict(is_flag=True, help="Continue an interrupted run in --out without redoing "
                                                      "finished work; the run keeps its settings.")),
    "force": (("--force",), dict(is_flag=True)),  # its help: what the command redoes
    "candidates": (("--candidate", "candidates"), dict(
        multiple=True, metavar="CID", show_default="all",
        help="Export only this candidate ('dense' for the dense model); repeatable.")),
    "candidate": (("--candidate",), dict(
        default="best", show_default=True, metavar="CID|best",
        help="Candidate id to release; 'best' = the one ranking.json chose (run `mixprune rank` first).")),
    "bundle_out": (("--out", "out"), dict(type=click.Path(dir_okay=False, path_type=str),
                                          show_default="RUN_DIR/release/<model>-<cid>.tar.gz",
                                          help="Bundle path (.tar.gz).")),
    "no_simplify": (("--no-simplify",), dict(
        is_flag=True, help="Skip onnxsim (it is also skipped whenever it loses zeros or grows the file).")),
    "opset": (("--opset",), dict(type=click.IntRange(13, 20), default=17, show_default=True,
                                 help="ONNX opset version.")),
    "device": (("--device",), dict(
        required=True, metavar="NAME|FILE",
        help="Device profile: a built-in name (see `mixprune devices list`) or a profile .toml file.")),
    "rank_devices": (("--device", "devices"), dict(multiple=True, metavar="NAME", show_default="every benchmarked device",
                                                   help="Rank on this device's bench records (repeatable).")),
    "runs": (("--runs",), dict(
        type=click.IntRange(min=1), show_default="the profile's",
        help="Timed runs per model after warm-up (alone, and in all over the interleaved rounds).")),
    "warmup": (("--warmup",), dict(type=click.IntRange(min=0), show_default="the profile's",
                                   help="Untimed runs before timing.")),
    "threads": (("--threads",), dict(type=click.IntRange(min=0),
                                     help="onnxruntime intra-op threads, overriding the profile's; 0 = all cores "
                                          "of the device.")),
    "shapes": (("--shape", "shapes"), dict(
        multiple=True, metavar="NAME=DIMS", callback=_parse_shapes,
        help="Size of an input with dynamic dimensions, e.g. --shape input=1x3x224x224; repeat per input.")),
    "as_json": (("--json", "as_json"), dict(is_flag=True, help="Print the JSON record(s) instead of a table.")),
}
assert not set(OPTIONS) & set(FIELDS), "an option and a run setting share a name"
EXECUTOR_OPTIONS = ("executor", "ray_address", "ray_cpus_per_task")  # where the per-candidate work runs


def _options(*names: str, defaults: dict = CONFIG_DEFAULTS, **changes: dict):
    """The options ``names`` (run settings of config.FIELDS with a flag, and keys of OPTIONS), in this
    order; a setting's default is taken from ``defaults`` and shown by click. ``changes``
    {name: {attribute: value}} adapts an option to one command."""
    def decorate(command):
        for name in reversed(names):
            if name in OPTIONS:
                decls, attrs = OPTIONS[name]
            else:
                decls, attrs = (FIELDS[name].flag.name, name), _setting_option(name, defaults)
            attrs = {**attrs, **changes.get(name, {})}
            assert attrs.get("help"), f"option {name} has no help"
            command = click.option(*decls, **attrs)(command)
        return command
    return decorate


# --- prune ----------------------------------------------------------------------------
@main.command()
@_options("model", "data", "out", "checkpoint", "pretrained", "pretrained_file", "model_args", "img_size",
          "train_epochs", "train_lr", "mode", "signals", "baselines", "targets", "sparsity", "macs_targets",
          "macs_reduction", "structured_baselines", "round_to", "rules", "calib_fraction", "recalibrate",
          "finetune_epochs", "finetune_top", "finetune_lr", "seed", *EXECUTOR_OPTIONS, "config_file", "resume",
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
@_options("candidates", "storage", "quantize", "no_simplify", "opset", "force", *EXECUTOR_OPTIONS,
          force={"help": "Re-export models whose weights and options did not change."})
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


@main.command()
@click.argument("target", metavar="MODEL.onnx|RUN_DIR", type=click.Path(path_type=str))
@_options("device", "runs", "warmup", "threads", "shapes", "as_json", *EXECUTOR_OPTIONS)
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
@_options("max_drop", "rank_devices", "objective")
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
@_options("candidate", "bundle_out", "force", force={"help": "Overwrite an existing bundle."})
def release(run_dir, candidate, out, force):
    """Package a candidate as a verifiable, reproducible release bundle (.tar.gz).

    \b
    The bundle holds model.onnx (in the storage chosen at export), MODEL_CARD.md and
    manifest.json (sha256 of every other file, model, strategy with per-layer sparsity,
    accuracy, bench record per device, package versions, input spec, class labels).
    The same inputs give a byte-identical bundle. Check one with `mixprune verify`.
    """
    from .release.bundle import write_bundle

    result = write_bundle(run_dir, candidate, out, force=force)
    click.echo(f"{result['path']}  ({result['candidate']}, sha256 {result['sha256']})")


@main.command()
@click.argument("bundle", metavar="BUNDLE.tar.gz", type=click.Path(dir_okay=False, path_type=str))
def verify(bundle):
    """Check a release bundle: safe entries, every file's sha256, one onnxruntime inference.

    Refuses (exit code 2) modified, missing or extra files, absolute or '..' paths and
    links, without extracting anything outside a temporary folder. Needs only numpy and
    onnxruntime.
    """
    from .release.bundle import verify as check

    result = check(bundle)
    click.echo(f"OK {bundle}: {len(result['files'])} files match the manifest; model.onnx ran in onnxruntime "
               f"{result['onnxruntime']} (output {result['output_shape']}); sha256 {result['sha256']}")


@main.command()
@_options("model", "data", "checkpoint", "devices", "max_drop", "objective", "out", "img_size", "train_epochs",
          "signals", "sparsity", "macs_reduction", "finetune_epochs", "finetune_top", "export_top", "storage",
          "quantize", "bench_runs", "seed", "mode", *EXECUTOR_OPTIONS, "quick", "config_file", "resume", "force",
          defaults=RUN_FLAG_DEFAULTS, out={"show_default": "runs/<model>-<data>"},
          force={"help": "Delete an existing run in --out and start over."})
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
