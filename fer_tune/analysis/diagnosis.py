"""Over- and underfitting, read from a trial's learning curves (the report's diagnosis of its top trials)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Diagnosis thresholds, as accuracy fractions. PublicTest has 3,589 images, yet val_acc moves ~0.5-1 point
# between epochs from lr and batch-norm noise, so every rule asks for a change clearly above that.
OVERFIT_VAL_DROP = 0.01  # val_acc ends at least 1 point below its best...

OVERFIT_GAP_GROWTH = 0.03  # ...while clean_train_acc - val_acc grew 3+ points since the best epoch

UNDERFIT_ACC = 0.70  # a FER2013 CNN that fits its data reaches 75-95% clean train accuracy; below 70% on both

UNDERFIT_RISE = 0.01  # ...and still gaining 1+ point over the last RISE_WINDOW epochs: it needed more epochs

RISE_WINDOW = 3  # epochs over which "still rising" is measured

INVERT_MARGIN = 0.005  # augmented train_acc below val_acc by more than rounding noise


@dataclass(frozen=True)
class Diagnosis:
    """The fit of one trial, from its per-epoch clean_train_acc, train_acc and val_acc.

    Accuracies are fractions (0..1); NaN where the history is too short to say.

    Args:
        label: `overfitting`, `underfitting`, `regularisation inverts the gap`, `good fit` or `too short`.
        epochs: epochs with a val_acc.
        best_epoch: the epoch of the best val_acc.
        val_best: the best val_acc.
        val_end: the last epoch's val_acc.
        clean_best: clean_train_acc at the best epoch.
        clean_end: clean_train_acc at the last epoch.
        train_best: the augmented train_acc at the best epoch.
        gap_best: clean_train_acc - val_acc at the best epoch.
        gap_end: clean_train_acc - val_acc at the last epoch.
    """

    label: str
    epochs: int
    best_epoch: int
    val_best: float
    val_end: float
    clean_best: float
    clean_end: float
    train_best: float
    gap_best: float  # clean_train_acc - val_acc at the best epoch
    gap_end: float  # ... at the last epoch


def diagnose(history: pd.DataFrame | Sequence[Mapping[str, float]]) -> Diagnosis:
    """Label a metric history (rows with epoch, train_acc, clean_train_acc, val_acc) as one of:

    `overfitting` (after the best epoch val_acc falls while the clean train/val gap grows), `underfitting`
    (both accuracies low and still rising at the end), `regularisation inverts the gap` (augmented train_acc
    below val_acc while clean_train_acc is above it: augmentation, not the data, limits train accuracy),
    `good fit`, or `too short` (under 2 epochs).

    Args:
        history: one row per epoch (a DataFrame or a list of metric dicts); rows without val_acc are
            ignored.

    Returns:
        The label and the numbers it was read from.
    """
    h = pd.DataFrame(list(history) if not isinstance(history, pd.DataFrame) else history)
    if h.empty:
        return Diagnosis("too short", 0, 0, *[float("nan")] * 7)
    h = h.dropna(subset=["val_acc"]).sort_values("epoch").reset_index(drop=True)
    if len(h) < 2:
        v = float(h["val_acc"].iloc[0]) if len(h) else float("nan")
        return Diagnosis(
            "too short", len(h), int(h["epoch"].max()) if len(h) else 0, v, v, *[float("nan")] * 5
        )
    val, clean, train = (h[k].to_numpy(dtype=float) for k in ("val_acc", "clean_train_acc", "train_acc"))
    b = int(np.argmax(val))
    gap = clean - val
    w = min(RISE_WINDOW, len(h) - 1)
    rising = val[-1] - val[-1 - w] >= UNDERFIT_RISE or clean[-1] - clean[-1 - w] >= UNDERFIT_RISE
    if b < len(h) - 1 and val[b] - val[-1] >= OVERFIT_VAL_DROP and gap[-1] - gap[b] >= OVERFIT_GAP_GROWTH:
        label = "overfitting"
    elif max(clean[-1], val[-1]) < UNDERFIT_ACC and rising and b >= len(h) - 1 - w:
        label = "underfitting"
    elif train[b] < val[b] - INVERT_MARGIN and clean[b] > val[b]:
        label = "regularisation inverts the gap"
    else:
        label = "good fit"
    numbers = (val[b], val[-1], clean[b], clean[-1], train[b], gap[b], gap[-1])
    return Diagnosis(label, len(h), int(h["epoch"].iloc[b]), *map(float, numbers))
