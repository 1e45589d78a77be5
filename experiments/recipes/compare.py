"""Dense training from scratch: each family's recipe ([training] in its rule table) vs the generic one.

    python experiments/recipes/compare.py     # ~15 min on 2 quiet cores

Trains each model on digits (32x32, seed 0) once with its family's recipe and once with the
generic table's, through mixprune's own train(), and writes held-out accuracy, the loss
per epoch and the wall time to results.json next to this file (resumable).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from mixprune.data import DataSpec, load_splits
from mixprune.models import ModelSpec, build_model
from mixprune.pruning.ranges import get_table
from mixprune.runs import atomic_write_json, package_versions
from mixprune.training import evaluate, train

HERE = Path(__file__).parent
MODELS = {  # name -> (timm constructor arguments, epochs)
    "vit_tiny_patch16_224": ({"patch_size": 4}, 15),
    "swin_tiny_patch4_window7_224": ({"window_size": 4}, 6),
}


def run_one(name: str, kwargs: dict, epochs: int, recipe: dict) -> dict:
    torch.manual_seed(0)
    splits = load_splits(DataSpec(source="digits", img_size=32))
    model = build_model(ModelSpec(name=name, in_chans=1, num_classes=10, img_size=32, kwargs=kwargs))
    start = time.perf_counter()
    history = train(model, splits.train, epochs=epochs, seed=0, description=f"{name}", **recipe)["history"]
    return {"recipe": recipe, "epochs": epochs, "seconds": round(time.perf_counter() - start, 1),
            "val_accuracy": evaluate(model, splits.val), "loss": [round(h["loss"], 4) for h in history]}


def main() -> int:
    out = HERE / "results.json"
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    generic = get_table("any-model-without-a-family").training
    for name, (kwargs, epochs) in MODELS.items():
        family = get_table(name)
        for label, recipe in ((family.name, family.training), ("generic", generic)):
            key = f"{name} / {label}"
            if key in results["runs"]:
                continue
            print(f"== {key}", file=sys.stderr, flush=True)
            results["runs"][key] = dict(model=name, model_args=kwargs, **run_one(name, kwargs, epochs, recipe))
            results["versions"] = package_versions()
            atomic_write_json(out, results)
    for key, r in results["runs"].items():
        print(f"{key:45} {r['epochs']:>3} epochs  val {100 * r['val_accuracy']:5.1f}%  {r['seconds']:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
