"""Losses: cross-entropy or focal, with optional per-class weights from the training counts."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fer_tune.data import EMOTIONS
from fer_tune.training.config import RunConfig, TrainConfig
from fer_tune.training.distill import distill_loss


def class_weights(labels: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-class loss weights from training counts (`train.class_weights`), averaging 1 over the samples.

    inverse: 1/n_c, so every class weighs as much as any other in total; sqrt: 1/sqrt(n_c), half-way.

    Args:
        labels: the training labels, class indices into `EMOTIONS`.
        mode: `none`, `inverse` or `sqrt`.

    Returns:
        (7,) float32 weights, or None for `none`.
    """
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=len(EMOTIONS)).astype(np.float64)
    w = 1 / np.maximum(counts, 1) ** (1.0 if mode == "inverse" else 0.5)
    return (w * counts.sum() / (w @ counts)).astype(np.float32)


def classification_loss(
    out: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy or focal loss (`train.loss`), with label smoothing and per-class weights.

    Weighted losses are weighted means, sum(w_y * l) / sum(w_y), as torch's cross-entropy takes them.

    Args:
        out: (B, 7) logits.
        y: (B,) class indices.
        cfg: the `train:` keys (`loss`, `label_smoothing`, `focal_gamma`).
        weight: (7,) per-class weights from `class_weights`; None for unweighted.

    Returns:
        The mean loss, a scalar tensor.
    """
    ls = cfg.label_smoothing
    if cfg.loss == "ce":
        return F.cross_entropy(out, y, weight=weight, label_smoothing=ls)
    out = out.float()
    ce = F.cross_entropy(out, y, label_smoothing=ls, reduction="none")
    p_true = out.softmax(1).gather(1, y[:, None]).squeeze(1)
    focal = (1 - p_true).pow(cfg.focal_gamma) * ce  # confident, right answers count less
    if weight is None:
        return focal.mean()
    w = weight[y]
    return (focal * w).sum() / w.sum()


def mixed_loss(
    out: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float,
    cfg: TrainConfig,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`classification_loss` of a mixup/cutmix batch: `lam * loss(y_a) + (1 - lam) * loss(y_b)`.

    Args:
        out: (B, 7) logits.
        y_a: (B,) class indices.
        y_b: (B,) class indices of the images mixed in.
        lam: the weight of `y_a`, as `augment.mix` returns it; 1 for an unmixed batch (one loss only).
        cfg: the `train:` keys.
        weight: (7,) per-class loss weights; None for unweighted.

    Returns:
        The scalar loss.
    """
    loss = classification_loss(out, y_a, cfg, weight)
    if lam < 1:
        loss = lam * loss + (1 - lam) * classification_loss(out, y_b, cfg, weight)
    return loss


def batch_loss(
    out: torch.Tensor,
    target: tuple[torch.Tensor, torch.Tensor, float],
    soft: torch.Tensor | None,
    cfg: RunConfig,
    weight: torch.Tensor | None,
) -> torch.Tensor:
    """A step's loss: `mixed_loss` on the (mixup) labels, mixed with the teacher's when there is one.

    Args:
        out: (B, 7) the model's logits.
        target: (y_a, y_b, lam) from `augment_batch`.
        soft: (B, 7) the teacher's logits of the same batch; None without distillation.
        cfg: the run's config (`train.distill_alpha`, `train.distill_temperature`, the loss keys).
        weight: (7,) per-class loss weights; None for unweighted.

    Returns:
        The mean loss, a scalar tensor.
    """
    loss = mixed_loss(out, *target, cfg.train, weight)
    if soft is not None:
        alpha = cfg.train.distill_alpha
        loss = (1 - alpha) * loss + alpha * distill_loss(out, soft, cfg.train.distill_temperature)
    return loss
