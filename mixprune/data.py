"""Datasets: the built-in ``digits`` (sklearn, no download) and image folders via timm.

Every stage rebuilds the same splits from a ``DataSpec`` stored in ``run.json``:
train (minus a small tune split used for early stopping), val (the held-out split all
accuracies are measured on) and a calibration subset of train for the pruning signals.
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
    tune_fraction: float = 0.10
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


def _stratified_subset(labels, fraction: float, seed: int):
    """Indices of a stratified ``fraction`` of ``labels`` and of the rest."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if fraction >= 1.0:
        return idx, idx[:0]
    n_take = int(round(fraction * len(labels)))
    if n_take == 0:
        raise DataError(
            f"a {fraction:.0%} subset of {len(labels)} training images is empty; "
            f"raise --calib-fraction or use more data")
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
    tune_pos, fit_pos = _stratified_subset(digits.target[train_idx], spec.tune_fraction, spec.split_seed)
    fit_idx, tune_idx = np.sort(train_idx[fit_pos]), np.sort(train_idx[tune_pos])
    calib_pos, _ = _stratified_subset(digits.target[fit_idx], spec.calib_fraction, spec.split_seed)
    return Splits(
        train=Subset(train_val, fit_idx.tolist()),
        tune=Subset(train_val, tune_idx.tolist()),
        val=Subset(train_val, np.sort(val_idx).tolist()),
        calibration=Subset(train_val, fit_idx[calib_pos].tolist()),
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
    tune_pos, fit_pos = _stratified_subset(labels, spec.tune_fraction, spec.split_seed)
    calib_pos, _ = _stratified_subset(labels[fit_pos], spec.calib_fraction, spec.split_seed)
    return Splits(
        train=Subset(train, fit_pos.tolist()),
        tune=Subset(train, tune_pos.tolist()),
        val=val,
        calibration=Subset(train, fit_pos[calib_pos].tolist()),
        num_classes=len(train_classes), in_chans=3, class_names=train_classes,
        mean=list(IMAGENET_DEFAULT_MEAN), std=list(IMAGENET_DEFAULT_STD),
    )


def _class_names(dataset) -> list:
    class_to_idx = getattr(dataset.reader, "class_to_idx", {}) or {}
    return [name for name, _ in sorted(class_to_idx.items(), key=lambda kv: kv[1])]
