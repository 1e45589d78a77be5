"""Datasets: the built-in ``digits`` (sklearn, no download) and image folders via timm.

Every stage rebuilds the same splits from a ``DataSpec`` stored in ``run.json``:
train (minus a tune split), val (the held-out split that reports accuracy) and a
calibration subset of train for the pruning signals. The tune split makes every choice
(early stopping, the candidates to fine-tune, eligibility, the shipped candidate): 25% of
train, so that on digits one image is 0.28 accuracy points (10% made it 0.7, most of the
default 1-point --max-drop), and at most 2000 images (0.05 points each), where more would
only slow every candidate's evaluation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .errors import DataError

DIGITS = "digits"


@dataclasses.dataclass
class DataSpec:
    source: str = DIGITS  # "digits" or a folder with train/ and val/ class folders
    img_size: int = 32
    calib_fraction: float = 0.10
    tune_fraction: float = 0.25
    tune_max: int = 2000  # images
    split_seed: int = 0  # fixed: every run and seed sees the same held-out split

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "DataSpec":
        return cls(**record)


@dataclasses.dataclass
class Splits:
    train: object  # torch Dataset of (image, label)
    tune: object
    val: object
    calibration: object
    num_classes: int
    in_chans: int
    class_names: list
    mean: list
    std: list

    def describe(self) -> dict:
        return dict(
            num_classes=self.num_classes, in_chans=self.in_chans, class_names=self.class_names,
            mean=self.mean, std=self.std, samples=dict(train=len(self.train), tune=len(self.tune),
                                                        val=len(self.val), calibration=len(self.calibration)),
        )


def load_splits(spec: DataSpec) -> Splits:
    if not 0.0 < spec.calib_fraction <= 1.0:
        raise DataError(f"calibration fraction must be in (0, 1], got {spec.calib_fraction}")
    if spec.img_size < 8:
        raise DataError(f"image size must be at least 8, got {spec.img_size}")
    if spec.source == DIGITS:
        return _digits(spec)
    return _image_folder(spec)


def _training_parts(labels, spec: DataSpec):
    """Positions in the training split of (what is fitted, the tune split, the calibration subset of the fitted)."""
    tune, fit = _stratified_subset(labels, spec.tune_fraction, spec.split_seed, spec.tune_max, what="tune split",
                                   fix="use more training images")
    calibration, _ = _stratified_subset(labels[fit], spec.calib_fraction, spec.split_seed, what="calibration set",
                                        fix="raise --calib-fraction (calib_fraction in a --config file) or use more "
                                            "training images")
    return fit, tune, fit[calibration]


def _stratified_subset(labels, fraction: float, seed: int, limit: int | None = None, *, what: str, fix: str):
    """Indices of a stratified ``fraction`` of ``labels`` (at most ``limit`` of them) and of the rest."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    n_take = min(int(round(fraction * len(labels))), limit or len(labels))
    if n_take >= len(labels):
        return idx, idx[:0]
    if n_take == 0:
        raise DataError(f"the {what} ({fraction:.0%} of {len(labels)} training images) is empty; {fix}")
    n_classes = len(set(int(v) for v in labels))
    stratify = labels if n_classes <= n_take <= len(labels) - n_classes else None
    taken, rest = train_test_split(idx, train_size=n_take, random_state=seed, stratify=stratify)
    return np.sort(taken), np.sort(rest)


def _digits(spec: DataSpec) -> Splits:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import Subset, TensorDataset

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(spec.img_size, spec.img_size), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=0.2, random_state=spec.split_seed, stratify=digits.target)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    images = (images - mean) / std
    train_val = TensorDataset(images, labels)
    fit_pos, tune_pos, calib_pos = _training_parts(digits.target[train_idx], spec)
    return Splits(
        train=Subset(train_val, np.sort(train_idx[fit_pos]).tolist()),
        tune=Subset(train_val, np.sort(train_idx[tune_pos]).tolist()),
        val=Subset(train_val, np.sort(val_idx).tolist()),
        calibration=Subset(train_val, np.sort(train_idx[calib_pos]).tolist()),
        num_classes=10, in_chans=1, class_names=[str(i) for i in range(10)],
        mean=[mean], std=[std],
    )


def _image_folder(spec: DataSpec) -> Splits:
    import numpy as np
    from torch.utils.data import Subset

    from .compat import import_timm

    root = Path(spec.source)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass --data digits or a folder with train/ and val/")
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataError(f"data folder {root} has no {part}/ folder (expected {root}/{part}/<class>/<image>)")
    timm = import_timm()
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_dataset, create_transform

    transform = create_transform(input_size=(3, spec.img_size, spec.img_size), is_training=False,
                                 crop_pct=1.0, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    train = create_dataset("", root=str(root / "train"), split="train", transform=transform)
    val = create_dataset("", root=str(root / "val"), split="validation", transform=transform)
    del timm
    train_classes = _class_names(train)
    if not train_classes or len(train) == 0:
        raise DataError(f"{root}/train holds no images in class folders")
    if _class_names(val) != train_classes:
        raise DataError(f"{root}/val has classes {_class_names(val)} but train/ has {train_classes}")
    if len(val) == 0:
        raise DataError(f"{root}/val holds no images")
    labels = np.array([target for _, target in train.reader.samples])
    fit_pos, tune_pos, calib_pos = _training_parts(labels, spec)
    return Splits(
        train=Subset(train, fit_pos.tolist()),
        tune=Subset(train, tune_pos.tolist()),
        val=val,
        calibration=Subset(train, calib_pos.tolist()),
        num_classes=len(train_classes), in_chans=3, class_names=train_classes,
        mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD),
    )


def _class_names(dataset) -> list:
    class_to_idx = getattr(dataset.reader, "class_to_idx", {}) or {}
    return [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
