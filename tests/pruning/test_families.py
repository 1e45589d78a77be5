"""The prune stage on each timm family the issue names, in the smallest configurations."""

import json

import pytest

from tests.helpers import check_contract, prune

FAMILY_ARGS = {
    "vit_tiny_patch16_224": ["--model-arg", "patch_size=4", "--model-arg", "depth=2", "--model-arg", "embed_dim=96",
                             "--model-arg", "num_heads=2"],
    "swin_tiny_patch4_window7_224": ["--model-arg", "window_size=4", "--model-arg", "embed_dim=64",
                                     "--model-arg", "depths=(1,1)", "--model-arg", "num_heads=(2,4)"],
    "mobilenetv3_small_050": [],
    "convnext_atto": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("model", FAMILY_ARGS)
def test_family_prunes_within_contract(tmp_path, model):
    run = prune(tmp_path / "run", "--model", model, "--train-epochs", "0", "--finetune-epochs", "0",
                "--signals", "magnitude", "--baselines", "grasp", "--img-size", "32",
                *FAMILY_ARGS[model])
    candidates = check_contract(run, within_ranges=True)
    assert sum(c["strategy"]["kind"] == "mixmatch" for c in candidates.values()) == 10
    record = json.loads((run / "run.json").read_text())
    assert record["model"]["name"] == model and record["stages"]["prune"]["status"] == "done"
    ranges = json.loads((run / "ranges.json").read_text())["layers"]
    if model.startswith(("vit", "swin")):
        embed = next(e for name, e in ranges.items() if name.startswith("patch_embed"))
        assert embed["max"] <= 0.30  # the patch embedding band, or the small-layer cap where it is tiny
        assert record["rule_table"] == model.split("_")[0]
    recipe = json.loads((run / "dense" / "eval.json").read_text())["training"]["recipe"]
    assert recipe["schedule"] == ("cosine" if model.startswith(("vit", "swin")) else "constant")
    # layer-wise candidates differ from one another in how they spread the zeros
    layers = {json.dumps(c["strategy"]["layers"], sort_keys=True) for c in candidates.values()
              if c["strategy"]["kind"] == "mixmatch" and c["strategy"]["signal"] == "magnitude"}
    assert len(layers) == 10
