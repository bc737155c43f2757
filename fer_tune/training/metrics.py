"""Classification scores from a confusion matrix: one definition for the per-epoch metrics and `evaluate`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fer_tune.data import EMOTIONS

# Every metric a trial reports each epoch, in metrics.csv's order, with its direction for `search.metric`
# (None: no natural direction, so `search.mode` must give it).
METRIC_MODES: dict[str, str | None] = {
    "epoch": None,
    "train_loss": "min",
    "train_acc": "max",
    "clean_train_acc": "max",
    "val_loss": "min",
    "val_acc": "max",
    "val_macro_f1": "max",
    **{f"val_recall_{c}": "max" for c in EMOTIONS},  # the rare classes (disgust: 1.5% of Training) show here
    "lr": None,
    "epoch_seconds": "min",
    "images_per_second": "max",
}
METRIC_KEYS = tuple(METRIC_MODES)
# Metrics only the runs that enable them report (then every epoch, NaN where not yet defined), after
# METRIC_KEYS in metrics.csv: `snapshot_val_acc` with `train.snapshots` (PublicTest accuracy of the snapshot
# ensemble so far); `live_val_acc` with `train.ema` (PublicTest accuracy of the trained weights, beside the
# average's `val_acc`). Not a `search.metric`: trials without it could not be ranked.
OPTIONAL_METRIC_MODES: dict[str, str | None] = {"snapshot_val_acc": "max", "live_val_acc": "max"}


def metric_columns(history: list[dict[str, Any]]) -> list[str]:
    """metrics.csv's columns: METRIC_KEYS, then the optional metrics the history's epochs hold.

    Args:
        history: one metrics dict per epoch.

    Returns:
        The column names, in order.
    """
    return [*METRIC_KEYS, *(k for k in OPTIONAL_METRIC_MODES if any(k in h for h in history))]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int = len(EMOTIONS)) -> np.ndarray:
    """(k, k) counts; rows: true class, columns: predicted class.

    Args:
        y_true: class indices of the labels.
        y_pred: class indices of the predictions, one per label.
        k: the number of classes.

    Returns:
        The (k, k) int confusion matrix.
    """
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def scores(cm: np.ndarray) -> dict[str, Any]:
    """n, accuracy, macro-F1 (over classes present in truth or prediction), per-class recall, confusion.

    Args:
        cm: a (7, 7) confusion matrix, rows true, columns predicted.

    Returns:
        `{"n", "accuracy", "macro_f1", "recall": {class: recall}, "confusion"}`; NaN where undefined (an
        empty matrix, a class with no true samples).
    """
    cm = np.asarray(cm)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = tp / support
        precision = tp / predicted
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    present = (support + predicted) > 0
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else math.nan,
        "macro_f1": float(f1[present].mean()) if present.any() else math.nan,
        "recall": {name: float(r) for name, r in zip(EMOTIONS, recall, strict=True)},
        "confusion": cm.tolist(),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """`scores` of the confusion matrix of labels and predictions.

    Args:
        y_true: class indices of the labels.
        y_pred: class indices of the predictions, one per label.

    Returns:
        The dictionary `scores` returns.
    """
    return scores(confusion(y_true, y_pred))
