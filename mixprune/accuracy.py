"""Which accuracy a choice is made on, and which one is reported.

Every choice (the candidates to fine-tune, the ones `run` exports, eligibility under
--max-drop, the shipped candidate, the accuracy study's best candidate) is made on the
tune split; the held-out split only reports the accuracy of whatever was picked. Picking
the best of ~60 candidates on the split that then reports its accuracy would bias that
figure upward.
"""

from __future__ import annotations

from .errors import RunDirError

SELECTION_SPLIT = "tune"
REPORT_SPLIT = "held-out"
# eval.json keys of each split: (after normalization re-estimation, after fine-tuning)
_KEYS = {SELECTION_SPLIT: ("tune_accuracy", "tune_accuracy_finetuned"),
         REPORT_SPLIT: ("accuracy", "accuracy_finetuned")}


def accuracy_of(record: dict, split: str = REPORT_SPLIT) -> tuple[float, str]:
    """The accuracy a model ships with on ``split`` (fine-tuned when it was), and which measurement it is."""
    pruned_key, finetuned_key = _KEYS[split]
    if pruned_key not in record:
        raise RunDirError(f"an eval.json has no '{pruned_key}': it was written by an older mixprune; "
                          f"prune again into a new --out")
    if record.get(finetuned_key) is not None:
        return record[finetuned_key], "finetuned"
    return record[pruned_key], "pruned" + (" + BN re-estimated" if record.get("recalibrated") else "")


def selection_accuracy(record: dict) -> float:
    return accuracy_of(record, SELECTION_SPLIT)[0]


def eval_record(measured: dict, *, samples: int, tune_samples: int, **more) -> dict:
    """eval.json of a model not fine-tuned (yet): its ``measured`` accuracies (``accuracy``,
    ``tune_accuracy``, ...), the fine-tuned ones null, the sizes of both splits, then ``more``."""
    return {**measured, **{finetuned: None for _, finetuned in _KEYS.values()}, "samples": samples,
            "tune_samples": tune_samples, **more}
