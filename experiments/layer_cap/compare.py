"""Layers pruned to nothing: what a per-layer cap of 99% changes (issue 11, part 4).

Ranges taken from global runs let a layer reach (nearly) 100% sparsity, which cuts a path
that no residual bypasses. This prunes resnet18 on digits with the default settings twice,
from the same dense weights: once with the built-in rule table, once with a table that
adds a rule capping every layer at 99%. Mix-and-Match candidates with a layer above 99% in
the first run are compared with their capped twins. The rule table does not govern the
global baselines (one threshold over all layers), so for each baseline with a layer at
100% the script measures the capped variant directly: the best-scored 1% of each such
layer (by the baseline's own score) restored from the dense weights, normalization
statistics re-estimated as in the stage.

    python experiments/layer_cap/compare.py [--work /tmp/layer-cap]

Results: experiments/layer_cap/results.json. Give --uncapped-rules / --capped-rules when
the built-in tables already hold a cap, to compare against a copy of them without it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mixprune.config import RunConfig
from mixprune.pruning.stage import run_prune
from mixprune.runs import RunDir, atomic_write_json, package_versions

HERE = Path(__file__).parent
FULL = 0.9999  # a layer at or above this ratio keeps (almost) nothing
CAP = 0.99
SETTINGS = dict(model="resnet18", data="digits", finetune_epochs=0)


def prune(out: Path, **flags) -> Path:
    config = RunConfig.build(**SETTINGS, out=str(out), **flags)
    run_prune(config, resume=RunDir(out).exists())
    return out


def candidates(run: Path) -> dict[str, dict]:
    rows, run = {}, RunDir(run)
    for cid in run.candidate_ids():
        strategy, record = run.candidate(cid).read_strategy(), run.candidate(cid).read_eval()
        rows[cid] = dict(kind=strategy["kind"], signal=strategy["signal"],
                                 full_layers=sorted(n for n, r in strategy["measured"].items() if r >= FULL),
                                 above_cap=sorted(n for n, r in strategy["measured"].items() if r > CAP + 1e-6),
                                 sparsity=strategy["global_sparsity"],
                                 accuracy=record["accuracy"], tune_accuracy=record["tune_accuracy"],
                                 accuracy_raw=record["accuracy_raw"])
    return rows


def capped_baseline(run: Path, cid: str, layers: list[str]) -> dict:
    """A baseline's accuracy once the best-scored 1% of each of ``layers`` is restored (see the docstring)."""
    import torch

    from mixprune.data import DataSpec, load_splits
    from mixprune.models import ModelSpec, build_model, load_state
    from mixprune.pruning.scores import BASELINES
    from mixprune.pruning.inputs import prepare
    from mixprune.pruning.stage import calibration_stage
    from mixprune.training import evaluate, recalibrate_batchnorm

    run = RunDir(run)
    info = run.require()
    config = RunConfig.build(**{k: v for k, v in info["config"].items()})
    splits = load_splits(DataSpec.from_dict(info["data"]))
    dense = {name: torch.from_numpy(array) for name, array in run.dense_state().items()}
    inputs = prepare(config)  # the stage drops its calibration cache once the candidates exist: recompute it
    load_state(inputs.model, dense, "dense")
    calibration = calibration_stage(inputs)
    run.drop_scores()
    model = build_model(ModelSpec.from_dict(info["model"]))
    load_state(model, run.candidate(cid).load_state(), cid)
    strategy = run.candidate(cid).read_strategy()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in layers:
            w = dense[name]
            score = BASELINES.get(strategy["signal"]).score(w, calibration["grad"][name],
                                                            calibration["hg"][name]).reshape(-1)
            keep = score.topk(max(1, round((1 - CAP) * w.numel()))).indices
            flat = params[name].data.reshape(-1)
            flat[keep] = w.reshape(-1)[keep]
    # the stage's normalization re-estimation set: the same seeded sample of the training split
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(config.seed))
    recalibrate_batchnorm(model, torch.utils.data.Subset(splits.train, sorted(order[: config.recal_samples].tolist())))
    zeros = sum(int((params[n] == 0).sum()) for n in strategy["layers"])
    return dict(accuracy=evaluate(model, splits.val), tune_accuracy=evaluate(model, splits.tune),
                sparsity=zeros / sum(params[n].numel() for n in strategy["layers"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/layer-cap")
    parser.add_argument("--uncapped-rules", default=None,
                        help="rule table without the cap (when the built-in tables hold it)")
    parser.add_argument("--capped-rules", default=None, help="rule table with the cap (default: built-in + a 99%% cap)")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    capped_rules = args.capped_rules
    if capped_rules is None:
        capped_rules = work / "capped.toml"
        capped_rules.write_text('name = "resnet_capped"\nextends = "resnet"\n[[rules]]\nname = "layer_cap"\n'
                                'max = 0.99\npriority = 1\n')
    uncapped = prune(work / "uncapped", **({"rules": args.uncapped_rules} if args.uncapped_rules else {}))
    dense = RunDir(uncapped).dense.read_eval()
    capped = prune(work / "capped", checkpoint=str(RunDir(uncapped).dense.weights_file),
                   rules=str(capped_rules))
    before, after = candidates(uncapped), candidates(capped)
    affected = {}
    for cid, row in before.items():
        if row["kind"] == "mixmatch" and row["above_cap"]:
            twin = after[cid]
        elif row["kind"] == "baseline" and row["full_layers"]:
            twin = capped_baseline(uncapped, cid, row["full_layers"])
        else:
            continue
        affected[cid] = dict(kind=row["kind"], layers_above_99=row["above_cap"], layers_at_100=row["full_layers"],
                             sparsity=row["sparsity"], sparsity_capped=twin["sparsity"],
                             accuracy=row["accuracy"], accuracy_capped=twin["accuracy"],
                             tune_accuracy=row["tune_accuracy"], tune_accuracy_capped=twin["tune_accuracy"])

    def mean_gain(kind, key):
        gains = [100 * (r[f"{key}_capped"] - r[key]) for r in affected.values() if r["kind"] == kind]
        return round(statistics.mean(gains), 3) if gains else None

    summary = {kind: dict(affected=sum(r["kind"] == kind for r in affected.values()),
                          mean_gain_points=dict(held_out=mean_gain(kind, "accuracy"),
                                                tune=mean_gain(kind, "tune_accuracy")),
                          worse_with_cap=sorted(c for c, r in affected.items()
                                                if r["kind"] == kind and r["accuracy_capped"] < r["accuracy"]),
                          better_with_cap=sorted(c for c, r in affected.items()
                                                 if r["kind"] == kind and r["accuracy_capped"] > r["accuracy"]))
               for kind in ("mixmatch", "baseline")}
    summary.update(candidates=len(before),
                   mixmatch_layers_above_99_capped=sum(bool(r["above_cap"]) for r in after.values()
                                                       if r["kind"] == "mixmatch"))
    record = dict(settings=SETTINGS, dense_accuracy=dense["accuracy"], dense_tune_accuracy=dense["tune_accuracy"],
                  summary=summary, affected=affected, versions=package_versions())
    atomic_write_json(HERE / "results.json", record)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
