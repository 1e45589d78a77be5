"""The `mixprune` command line: one thin command per stage, plus `run` for all of them.

Commands parse and validate flags, then call the stage; nothing imports this module.
Any MixpruneError ends the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from .config import OBJECTIVES, STORAGES
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


# --- prune ----------------------------------------------------------------------------
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


@main.command()
@click.option("--model", help="timm model name (see `mixprune models list`).  [default: resnet18]")
@click.option("--data", help="'digits' (built in) or a folder with train/ and val/ class folders.  [default: digits]")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory to create (e.g. runs/demo).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Trained weights (.safetensors, or a torch file loaded with weights_only).")
@click.option("--pretrained", is_flag=True, default=None, help="Start from timm's pretrained weights (needs the hub, or --pretrained-file).")
@click.option("--pretrained-file", type=click.Path(dir_okay=False), help="Local file for timm's pretrained loading.")
@click.option("--model-arg", "model_args", multiple=True, callback=_model_args, metavar="KEY=VALUE",
              help="Extra timm constructor argument, e.g. patch_size=4 (repeatable).")
@click.option("--img-size", type=int, help="Input image size.  [default: 32]")
@click.option("--train-epochs", type=int, help="Epochs to train the dense model when no checkpoint is given.  [default: 15]")
@click.option("--train-lr", type=float,
              help="Adam learning rate for that training.  [default: the model family's rule table: 1e-3; ViT/Swin 3e-4 with warmup and cosine decay]")
@click.option("--signals", help="Comma list of magnitude,gradient,product.  [default: all three]")
@click.option("--baselines", help="Matched global baselines: comma list of mag,snip,grasp,uniform.  [default: mag,snip,grasp]")
@click.option("--targets", callback=_ratio_list, help="Global sparsities of the range-finding runs.  [default: 0.7,0.8,0.9]")
@click.option("--sparsity", type=float, help="Shift every strategy to this global sparsity (e.g. 0.9).")
@click.option("--rules", type=click.Path(dir_okay=False), help="Your own rule table (TOML) instead of the built-in one.")
@click.option("--calib-fraction", type=float, help="Fraction of the training split used for calibration.  [default: 0.1]")
@click.option("--no-recalibrate", "recalibrate", flag_value=False, default=None,
              help="Skip re-estimating BatchNorm statistics after pruning.")
@click.option("--finetune-epochs", type=int, help="Fine-tune epochs (0 = none).  [default: 2]")
@click.option("--finetune-top", type=int, help="Fine-tune the best K candidates and their matched baselines.  [default: 3]")
@click.option("--finetune-lr", type=float, help="Adam learning rate for fine-tuning.  [default: 1e-4]")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file holding any of these options.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out; finished candidates are kept.")
@click.pass_context
def prune(ctx, config_file, resume, **flags):
    """Train (if needed) and prune a model into Mix-and-Match candidates.

    \b
    Writes to --out: dense/ (weights, accuracy), ranges.json (per-layer ranges),
    candidates/<cid>/ (strategy.json, weights.safetensors, eval.json) for
    3 signals x 10 strategies plus matched global baselines.
    """
    from .config import RunConfig, resolve_resume
    from .pruning.stage import run_prune

    explicit = _explicit(ctx, **flags)
    if resume:
        config = resolve_resume(config_file, explicit)
    else:
        config = RunConfig.build(config_file, **explicit)
    if not config.out:
        raise click.UsageError("--out is required (the run directory to write), e.g. --out runs/demo")
    summary = run_prune(config, resume=resume)
    click.echo(f"{summary['mixmatch']} Mix-and-Match candidates and {summary['baselines']} baselines in "
               f"{config.out}; best before export: {summary['best']} (dense accuracy {summary['dense_accuracy']:.3f})")



# --- export ---------------------------------------------------------------------------
@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--candidate", "candidates", multiple=True, metavar="CID",
              help="Export only this candidate ('dense' for the dense model); repeatable. Default: all.")
@click.option("--storage", type=click.Choice(STORAGES), default="dense", show_default=True,
              help="What model.onnx holds: plain initializers, or sparse_initializers (smaller file; "
                   "onnxruntime densifies them at load).")
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim (it is also skipped whenever it loses zeros or grows the file).")
@click.option("--opset", type=click.IntRange(13, 20), default=17, show_default=True)
@click.option("--force", is_flag=True, help="Re-export models whose weights and options did not change.")
def export(run_dir, candidates, storage, no_simplify, opset, force):
    """Export the dense model and candidates of RUN_DIR to ONNX, verified and stored compactly.

    Writes model.onnx, model.onnx.mxc (lossless compact container; expand it with
    `python -m mixprune.compact expand`) and export.json into each model's folder.
    """
    from mixprune.exporter.stage import ExportOptions, export_run

    options = ExportOptions(opset=opset, storage=storage, simplify=not no_simplify, force=force)
    results = export_run(run_dir, candidates, options)
    width = max(map(len, results))
    for cid, rec in results.items():
        size = rec["bytes"]
        click.echo(
            f"{cid:<{width}}  {'skipped (up to date)' if rec['skipped'] else 'exported':<20} "
            f"zeros {rec['zeros_onnx']}/{rec['zeros_torch']} {'kept' if rec['sparsity_preserved'] else 'LOST'}  "
            f"max|diff| {rec['parity']['max_abs_diff']:.1e}  top-1 agree {rec['parity']['top1_agreement']:.3f}  "
            f"onnx {size['onnx'] / 1e6:.2f} MB, compact {size['compact'] / size['onnx']:.3f}x")



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
@click.option("--runs", type=click.IntRange(min=1), help="Timed runs after warm-up [default: the profile's].")
@click.option("--warmup", type=click.IntRange(min=0), help="Untimed runs before timing [default: the profile's].")
@click.option("--threads", type=click.IntRange(min=0),
              help="onnxruntime intra-op threads, overriding the profile's; 0 = all cores of the device.")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=DIMS", callback=_parse_shapes,
              help="Size of an input with dynamic dimensions, e.g. --shape input=1x3x224x224; repeat per input.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON record(s) instead of a table.")
def bench(target, device, runs, warmup, threads, shapes, as_json):
    """Measure latency, cold start, peak memory and size with onnxruntime on a device.

    \b
    MODEL.onnx: any ONNX file; prints a table (or the JSON record with --json).
    RUN_DIR:    the dense model and every exported candidate of a mixprune run, one
                fresh process each; writes <model dir>/bench/<device>.json.
    Each model runs in a fresh process of the torch-free agent, on this machine, over
    SSH or under ARM emulation, as the profile's runner says.
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
    if path.is_dir():
        records = bench_run_dir(path, profile, config)
        click.echo(json.dumps(records, indent=2) if as_json else format_table(records))
    else:
        say(f"Benchmarking {path.name} on {profile.name}: {config['warmup']} warm-up + {config['runs']} runs")
        record = bench_model(path, profile, config)
        click.echo(json.dumps(record, indent=2) if as_json else format_record(record))


# --- rank, release, verify, run ---------------------------------------------------------
@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Largest accuracy drop vs the dense model, in points (1.0 = one percentage point).")
@click.option("--device", "devices", multiple=True, metavar="NAME",
              help="Rank on this device's bench records (repeatable). Default: every benchmarked device.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="latency", show_default=True,
              help="What the choice minimizes: p50 latency, compact file size or peak RSS.")
def rank(run_dir, max_drop, devices, objective):
    """Rank every candidate of RUN_DIR (matched baselines included) and choose one to ship.

    \b
    Eligible: accuracy drop <= --max-drop, a verified export, and within each
    device profile's memory and latency budgets. The choice minimizes --objective on
    the first real (non-emulated) device; differences within measured noise are ties,
    broken by higher accuracy, then smaller size. Writes ranking.json (every candidate
    with `eligible` and the reason), report.html and pareto.png into RUN_DIR.
    """
    from .ranking import rank_run

    ranking = rank_run(run_dir, max_drop=max_drop, devices=devices, objective=objective)
    _print_ranking(ranking, run_dir)


def _print_ranking(ranking: dict, run_dir, top: int = 5) -> None:
    devices = [d["name"] for d in ranking["devices"]]
    click.echo(f"{'rank':>4}  {'candidate':<32} {'sparsity':>8} {'accuracy':>8} {'drop pt':>7} {'compact MB':>10}"
               + "".join(f" {d + ' p50 ms':>14}" for d in devices))
    for r in [r for r in ranking["candidates"] if r["eligible"]][:top]:
        click.echo(f"{r['rank']:>4}  {r['cid']:<32} {r['global_sparsity']:>8.1%} {r['accuracy']:>8.2%} "
                   f"{r['drop_points']:>7.2f} {r['bytes']['compact'] / 1e6:>10.2f}"
                   + "".join(f" {r['devices'][d]['p50_ms']:>14.3f}" for d in devices))
    excluded = len(ranking["candidates"]) - ranking["eligible_count"]
    click.echo(f"... {ranking['eligible_count']} eligible, {excluded} excluded (reasons in ranking.json)")
    click.echo(f"speed: {ranking['speed_note']}")
    click.echo(f"chosen: {ranking['chosen_why']}")
    click.echo(f"written: {run_dir}/ranking.json, {run_dir}/report.html, {run_dir}/pareto.png")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=str))
@click.option("--candidate", default="best", show_default=True, metavar="CID|best",
              help="Candidate id to release; 'best' = the one ranking.json chose (run `mixprune rank` first).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=str),
              help="Bundle path (.tar.gz).  [default: RUN_DIR/release/<model>-<cid>.tar.gz]")
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
@click.option("--model", help="timm model name.  [default: resnet18]")
@click.option("--data", help="'digits' (built in) or a folder with train/ and val/ class folders.  [default: digits]")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Trained weights; without it the dense model is trained first.")
@click.option("--devices", help="Comma list of device profiles to benchmark on, e.g. host,rpi4.  [default: host]")
@click.option("--max-drop", type=float, help="Largest accuracy drop vs dense, in points.  [default: 1.0]")
@click.option("--objective", type=click.Choice(OBJECTIVES), default=None,
              help="What the choice minimizes.  [default: latency]")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory.  [default: runs/<model>-<data>]")
@click.option("--img-size", type=int, help="Input image size.  [default: 32]")
@click.option("--train-epochs", type=int, help="Dense training epochs (without --checkpoint).  [default: 15]")
@click.option("--signals", help="Comma list of magnitude,gradient,product.  [default: all three]")
@click.option("--sparsity", type=float, help="Shift every strategy to this global sparsity (e.g. 0.9).")
@click.option("--finetune-epochs", type=int, help="Fine-tune epochs.  [default: 1]")
@click.option("--finetune-top", type=int, help="Fine-tune the best K candidates and their matched baselines.  [default: 1]")
@click.option("--export-top", type=int, help="Export and bench the K best candidates within --max-drop.  [default: 3]")
@click.option("--storage", type=click.Choice(STORAGES), default=None,
              help="What model.onnx (and the bundle) holds.  [default: dense]")
@click.option("--bench-runs", type=int, help="Timed runs per model [default: the device profile's].")
@click.option("--seed", type=int, help="Random seed.  [default: 0]")
@click.option("--mode", type=click.Choice(["unstructured", "structured", "both"]), default=None,
              help="Pruning mode (only unstructured exists today).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None, help="Where stages run (only local today).")
@click.option("--quick", is_flag=True, default=None, help="Tiny configuration for tests (test_resnet, 1 epoch, one signal).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file holding any of these options (flags win).")
@click.option("--resume", is_flag=True, help="Continue a killed run in --out without redoing finished work.")
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
    from .config import RunConfig, resolve_resume, run_presets
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
