"""Accuracy study: best Mix-and-Match candidate vs global MAG / SNIP / GraSP at matched sparsity.

For each model and seed: train the dense model once on digits, then prune at each common
global sparsity S (`--sparsity S`: all 30 candidates and the baselines at S), with and
without BatchNorm re-estimation (eval.json's accuracy / accuracy_raw), before and after a
short fine-tune of the best candidate and its matched baselines. The best candidate is
picked on the tune split (as the prune stage picks what it fine-tunes); every accuracy in
the table is that candidate's held-out accuracy, so the pick does not bias it.

    python experiments/accuracy/study.py            # full study (about an hour on 2 quiet cores)
    python experiments/accuracy/study.py --smoke    # one tiny run to check the script

Results land in experiments/accuracy/results.json (resumable: finished runs are kept)
and a table in experiments/accuracy/table.md.
"""

from __future__ import annotations

import argparse
import os
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from mixprune.config import RunConfig
from mixprune.pruning.ranges import get_table
from mixprune.pruning.stage import run_prune
from mixprune.runs import RunDir, atomic_write_bytes, atomic_write_json, package_versions

HERE = Path(__file__).parent
STUDY = {
    "resnet18": dict(config=dict(model="resnet18", train_epochs=15), sparsities=(0.9, 0.95, 0.97, 0.98)),
    "vit_tiny": dict(config=dict(model="vit_tiny_patch16_224", model_args={"patch_size": 4}, train_epochs=15),
                     sparsities=(0.8, 0.9)),
}
SMOKE = {"test_resnet": dict(config=dict(model="test_resnet", train_epochs=2, img_size=16), sparsities=(0.9,))}
SEEDS = (0, 1, 2)
COMMON = dict(data="digits", finetune_epochs=2, finetune_top=1, baselines=("mag", "snip", "grasp"))


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def summarize_run(run: Path) -> dict:
    """Held-out accuracy of the best Mix-and-Match candidate (picked on tune) and of each global baseline at S."""
    run = RunDir(run)
    dense = run.dense.read_eval()
    rows = {}
    for cid in run.candidate_ids():
        strategy, record = run.candidate(cid).read_strategy(), run.candidate(cid).read_eval()
        rows[cid] = dict(kind=strategy["kind"], signal=strategy["signal"], strategy=strategy["strategy"],
                               sparsity=strategy["global_sparsity"], raw=record["accuracy_raw"],
                               recal=record["accuracy"], finetuned=record["accuracy_finetuned"],
                               tune_raw=record["tune_accuracy_raw"], tune_recal=record["tune_accuracy"],
                               tune_finetuned=record["tune_accuracy_finetuned"])
    mixmatch = {cid: r for cid, r in rows.items() if r["kind"] == "mixmatch"}

    def best_on_tune(key):
        return min(mixmatch, key=lambda cid: (-mixmatch[cid][key], cid))

    # the candidate the stage fine-tuned (its best by tune accuracy, ties to the first id), else that rule
    tuned = [cid for cid, r in mixmatch.items() if r["finetuned"] is not None]
    best = tuned[0] if tuned else best_on_tune("tune_recal")
    best_raw = best_on_tune("tune_raw")  # without re-estimation the pick is made on the raw tune accuracy
    by_method = {r["signal"]: dict(cid=cid, **r) for cid, r in rows.items() if r["kind"] == "baseline"}
    return dict(dense=dense["accuracy"], dense_tune=dense["tune_accuracy"], selection_split="tune",
                best_mixmatch=dict(cid=best, **mixmatch[best]),
                best_mixmatch_raw=dict(cid=best_raw, **mixmatch[best_raw]),
                baselines=by_method, all_mixmatch={cid: {"held_out": r["recal"], "tune": r["tune_recal"]}
                                                   for cid, r in mixmatch.items()})


def run_one(model_key: str, setup: dict, seed: int, sparsity: float, work: Path) -> dict:
    dense_ckpt = work / f"{model_key}-seed{seed}-dense.safetensors"
    out = work / f"{model_key}-seed{seed}-s{sparsity}-{os.getpid()}"  # parallel processes never share a folder
    shutil.rmtree(out, ignore_errors=True)
    flags = dict(COMMON, **setup["config"], seed=seed, sparsity=sparsity, out=str(out))
    if dense_ckpt.is_file():
        flags.update(checkpoint=str(dense_ckpt))
    start = time.perf_counter()
    summary = run_prune(RunConfig.build(**flags))
    if not dense_ckpt.is_file():
        shutil.copy(RunDir(out).dense.weights_file, dense_ckpt)
    result = dict(model=model_key, seed=seed, sparsity=sparsity, seconds=round(time.perf_counter() - start, 1),
                  timings_s=summary["timings_s"], **summarize_run(out))
    shutil.rmtree(out)
    return result


def drop(dense: float, acc: float | None) -> float | None:
    return None if acc is None else round(100 * (dense - acc), 2)


def aggregate(results: list[dict]) -> list[dict]:
    rows = []
    keys = sorted({(r["model"], r["sparsity"]) for r in results})
    for model, sparsity in keys:
        runs = [r for r in results if r["model"] == model and r["sparsity"] == sparsity]

        def mean(values):
            values = [v for v in values if v is not None]
            return round(statistics.mean(values), 2) if values else None

        row = dict(model=model, sparsity=sparsity, seeds=len(runs), dense=mean([100 * r["dense"] for r in runs]))
        for stage in ("raw", "recal", "finetuned"):
            # each stage's best candidate: without re-estimation the best raw one, else the stage's choice
            mm = mean([drop(r["dense"], r["best_mixmatch_raw"]["raw"] if stage == "raw" else r["best_mixmatch"][stage])
                       for r in runs])
            per = {m: mean([drop(r["dense"], r["baselines"][m][stage]) for r in runs]) for m in ("mag", "snip", "grasp")}
            best_base = [min((d for d in (drop(r["dense"], r["baselines"][m][stage]) for m in ("mag", "snip", "grasp"))
                              if d is not None), default=None) for r in runs]
            best_drop = mean(best_base)
            # a ratio of drops means something only when the best baseline actually lost accuracy;
            # a candidate at or above dense then counts as a drop of 0 (ratio 0)
            row[stage] = dict(mixmatch_drop=mm, baseline_drops=per, best_baseline_drop=best_drop,
                              ratio_vs_best_baseline=(round(max(mm, 0.0) / best_drop, 2)
                                                      if mm is not None and best_drop and best_drop > 0 else None))
        row["best_strategies"] = sorted({r["best_mixmatch"]["cid"] for r in runs})
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | S | dense % | stage | best MM drop | MAG | SNIP | GraSP | best global | MM / best global |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    names = {"raw": "no BN re-est.", "recal": "BN re-estimated", "finetuned": "+ 2-epoch fine-tune"}
    for row in rows:
        for stage, label in names.items():
            s = row[stage]
            b = s["baseline_drops"]
            lines.append(f"| {row['model']} | {row['sparsity']:.0%} | {row['dense']} | {label} | {s['mixmatch_drop']} | "
                         f"{b['mag']} | {b['snip']} | {b['grasp']} | {s['best_baseline_drop']} | {s['ratio_vs_best_baseline']} |")
    return "\n".join(lines) + ("\n\nDrops are held-out accuracy points below the dense model (mean over seeds); lower is better. "
                                   "The best Mix-and-Match candidate of each run is picked on the tune split.\n")


def save(record: dict, out: Path, with_table: bool) -> None:
    """Summary and settings cover every model in the record, not only the ones run this time."""
    unique = {}
    for r in record["runs"]:  # one run per (model, seed, sparsity), the first that finished
        unique.setdefault((r["model"], r["seed"], r["sparsity"]), r)
    record["runs"] = list(unique.values())
    models = {r["model"] for r in record["runs"]}
    study = {k: dict(v["config"], sparsities=v["sparsities"], dense_recipe=get_table(v["config"]["model"]).training)
             for k, v in {**STUDY, **SMOKE}.items() if k in models}
    record.update(summary=aggregate(record["runs"]), versions=package_versions(),
                  settings=dict(common=COMMON, study=study))
    atomic_write_json(out, record)
    if with_table:
        atomic_write_bytes(HERE / "table.md", table(record["summary"]).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one tiny run to check the script")
    parser.add_argument("--work", default="/tmp/mixprune-accuracy-study", help="scratch folder for run directories")
    parser.add_argument("--models", default=None, help="comma list of study keys (default: all)")
    parser.add_argument("--seeds", default=None, help="comma list of seeds (default: 0,1,2); several processes "
                        "with different seeds may share one results file")
    parser.add_argument("--sparsities", default=None, help="comma list, in this order (default: each model's own)")
    args = parser.parse_args()
    study, seeds = (SMOKE, (0,)) if args.smoke else (STUDY, SEEDS)
    if args.models:
        study = {k: v for k, v in study.items() if k in args.models.split(",")}
    if args.seeds:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    sparsities = tuple(float(s) for s in args.sparsities.split(",")) if args.sparsities else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = HERE / ("smoke.json" if args.smoke else "results.json")
    for model_key, setup in study.items():
        for seed in seeds:
            for sparsity in (sparsities or setup["sparsities"]):
                if (model_key, seed, sparsity) in finished(out):
                    continue
                print(f"== {model_key} seed {seed} S={sparsity}", file=sys.stderr, flush=True)
                add_run(out, run_one(model_key, setup, seed, sparsity, work), work, with_table=not args.smoke)
    record = add_run(out, None, work, with_table=not args.smoke)
    print(table(record["summary"]))
    return 0


def finished(out: Path) -> set:
    return {(r["model"], r["seed"], r["sparsity"]) for r in (read(out)["runs"] if out.is_file() else [])}


def add_run(out: Path, result: dict | None, work: Path, with_table: bool) -> dict:
    """Add one run to the results file (re-read under a lock: parallel processes share it); save."""
    import fcntl

    with open(work / "results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read(out) if out.is_file() else {"runs": []}
        if result is not None:
            record["runs"].append(result)
        save(record, out, with_table)
        return record


if __name__ == "__main__":
    sys.exit(main())
