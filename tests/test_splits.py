"""The tune split that makes every choice: big enough that one image is a fraction of a point."""

import numpy as np

from mixprune.data import DataSpec, load_splits


def _labels(subset):
    return np.bincount([int(subset.dataset.tensors[1][i]) for i in subset.indices], minlength=10)


def test_digits_tune_split_is_a_quarter_of_train_stratified_and_apart_from_held_out():
    splits = load_splits(DataSpec(img_size=8))
    train_images = len(splits.train) + len(splits.tune)
    assert len(splits.tune) == round(0.25 * train_images) == 359
    assert 100 / len(splits.tune) < 0.3  # one image is under a third of the default 1-point --max-drop
    assert not set(splits.tune.indices) & (set(splits.val.indices) | set(splits.train.indices))
    assert _labels(splits.tune).min() >= 34 and _labels(splits.tune).max() <= 38  # each digit ~10%


def test_tune_split_is_capped_in_images():
    splits = load_splits(DataSpec(img_size=8, tune_max=100))
    assert len(splits.tune) == 100 and len(splits.train) + len(splits.tune) == 1437
    assert _labels(splits.tune).min() >= 9  # still stratified
