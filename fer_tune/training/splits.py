"""A run's data on the device: the training split (or its stratified subset) and PublicTest as uint8
tensors, their normalisation, the clean-accuracy sample and the class weights (`prepare_data`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fer_tune.base import DataError
from fer_tune.data import FER2013
from fer_tune.training.config import RunConfig
from fer_tune.training.device import to_device
from fer_tune.training.losses import class_weights


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n rows with each class in proportion (at least one each), reproducible by seed.

    Args:
        labels: the class index of each row.
        n: how many rows to keep (`train.subset`).
        seed: seeds the draw.

    Returns:
        The indices, sorted; all of them when `n` is not below the row count.
    """
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    quota = np.maximum(1, np.floor(exact)).astype(int)
    for i in np.argsort(-(exact - np.floor(exact)))[: max(0, n - quota.sum())]:  # largest remainders first
        quota[i] += 1
    while quota.sum() > n:  # the one-per-class floor overshot: take from the largest classes
        quota[np.argmax(quota)] -= 1
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picks))


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Mean and std of uint8 pixels from their 256-bin histogram.

    Runs at every trial's start: numpy's `std()` would make a float64 copy of the whole split (530 MB for
    FER2013's Training), per trial; the histogram is one pass over the bytes and exact.

    Args:
        images: uint8 pixels, any shape.

    Returns:
        (mean, std) on the 0..255 scale; std is 1.0 for constant images.
    """
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256.0)
    n = counts.sum()
    mean = counts @ levels / n
    var = max(counts @ (levels * levels) / n - mean * mean, 0.0)
    return float(mean), float(np.sqrt(var)) or 1.0


@dataclass
class DeviceData:
    """Training and validation splits on the device, the clean-accuracy sample, what the model records.

    Args:
        x_train: (N, 48, 48) uint8 training images.
        y_train: (N,) int64 their class indices.
        x_val: PublicTest's images (empty when the data has none).
        y_val: PublicTest's class indices.
        clean: indices of the fixed training sample scored without augmentation (`clean_train_acc`).
        weight: (7,) float32 per-class loss weights (`train.class_weights`); None for unweighted.
        state: `mean`, `std`, `input_size`, `val_held_out`, `data`: saved with checkpoints and model.pt.
    """

    x_train: torch.Tensor  # (N, 48, 48) uint8
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    clean: torch.Tensor  # indices of the fixed training sample scored without augmentation
    weight: torch.Tensor | None  # per-class loss weights (train.class_weights), float32
    state: dict[str, Any]  # mean, std, input_size, val_held_out, data: saved with checkpoints and model.pt

    @property
    def norm(self) -> tuple[float, float]:
        """(mean, std) of the training pixels, on the 0..255 scale."""
        return self.state["mean"], self.state["std"]

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimiser steps per epoch (the last partial batch is dropped).

        Args:
            batch_size: `train.batch_size`; the split's size when larger.

        Returns:
            Full batches in the training split.
        """
        return len(self.y_train) // min(batch_size, len(self.y_train))


def prepare_data(cfg: RunConfig, data: FER2013, dev: torch.device) -> DeviceData:
    """The training split (or its stratified subset) and PublicTest, on the device as uint8.

    Args:
        cfg: the run's config (`train.train_on`, `train.subset`, `train.class_weights`, `seed`).
        data: the dataset.
        dev: the device to put the splits on.

    Returns:
        The splits and their normalisation; warns when PublicTest is also trained on.

    Raises:
        DataError: the data lacks a split `train.train_on` names.
    """
    usages = cfg.train.train_usages
    missing = [u for u in usages if u not in data.splits]
    if missing:
        raise DataError(f"{data.source or 'dataset'}: no {'/'.join(missing)} images to train on")
    tr = data.split(*usages)
    if cfg.train.subset is not None:
        keep = stratified_subset(tr.labels, cfg.train.subset, cfg.seed)
        tr = FER2013(tr.images[keep], tr.labels[keep], tr.usage[keep], tr.source)
    va = data.split("PublicTest")
    val_held_out = len(va) > 0 and "PublicTest" not in usages
    if len(va) and not val_held_out:
        warnings.warn("PublicTest is trained on: val_* metrics are not held out", stacklevel=3)
    # Normalisation from the training split (0..255 scale); saved with the model.
    mean, std = pixel_stats(tr.images)
    n_clean = len(va) if len(va) else min(len(tr), 2048)
    clean = torch.randperm(len(tr), generator=torch.Generator().manual_seed(cfg.seed))[:n_clean]
    info = {"source": data.source, "train_usages": list(usages), "n_train": len(tr), "n_val": len(va)}
    weight = class_weights(tr.labels, cfg.train.class_weights)
    return DeviceData(
        to_device(tr.images, dev),
        to_device(tr.labels, dev),
        to_device(va.images, dev),
        to_device(va.labels, dev),
        clean.to(dev),
        None if weight is None else torch.from_numpy(weight).to(dev),
        {
            "mean": mean,
            "std": std,
            "input_size": cfg.augment.input_size,
            "val_held_out": val_held_out,
            "data": info,
        },
    )
