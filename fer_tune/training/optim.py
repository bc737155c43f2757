"""Optimisers and learning-rate schedules built from a TrainConfig: what `train.optimizer`, `lr` and
`schedule` mean."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from fer_tune.training.config import TrainConfig


def no_weight_decay(model: nn.Module) -> set[str]:
    """Dotted names of the parameters that get no weight decay.

    1-D parameters (norm weights, biases) and whatever a submodule lists in its `no_weight_decay()` (timm's
    convention: position embeddings, class tokens). Decay would pull those towards 0, which for an embedding
    means "no position", not a simpler model; the rule holds for any future family that declares its own.

    Args:
        model: the model to train.

    Returns:
        The names, as `model.named_parameters()` gives them.

    Raises:
        ValueError: a `no_weight_decay()` names a parameter the module lacks.
    """
    params = dict(model.named_parameters())
    names = {n for n, p in params.items() if p.ndim <= 1}
    for prefix, module in model.named_modules():
        if callable(hook := getattr(module, "no_weight_decay", None)):
            listed = {f"{prefix}.{n}" if prefix else n for n in hook()}
            if unknown := sorted(listed - params.keys()):  # a typo would silently decay the embedding
                raise ValueError(f"{type(module).__name__}.no_weight_decay() names no parameter: {unknown}")
            names |= listed
    return names


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """sgd | adam | adamw; no weight decay on the parameters `no_weight_decay(model)` names.

    Args:
        model: the model to train; only parameters that require grad are optimised.
        cfg: the `train:` keys (`optimizer`, `lr`, `momentum`, `nesterov`, `weight_decay`).

    Returns:
        The optimiser; `momentum` is Adam's beta1.
    """
    skip = no_weight_decay(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n not in skip], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n in skip], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def build_schedulers(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> tuple[lr_scheduler.LRScheduler | None, lr_scheduler.ReduceLROnPlateau | None]:
    """(stepped every batch, stepped every epoch on `plateau_metric`); linear warm-up from lr/10 but onecycle.

    Args:
        opt: the optimiser from `build_optimizer`.
        cfg: the `train:` keys (`schedule`, `epochs`, `warmup_epochs`, `gamma`, `step_size`, `patience`,
            `plateau_metric`).
        steps_per_epoch: batches per epoch.

    Returns:
        (the per-batch scheduler or None, the ReduceLROnPlateau for `plateau` or None).
    """
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        # cycle_momentum=False: `train.momentum` means what it says for every schedule.
        return lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, cycle_momentum=False), None
    warm = round(cfg.warmup_epochs * steps_per_epoch)
    warmup = lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm) if warm else None
    if cfg.schedule == "plateau":
        mode = "max" if cfg.plateau_metric.endswith("_acc") else "min"  # an accuracy improves upwards
        plateau = lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=cfg.gamma, patience=cfg.patience)
        return warmup, plateau
    if cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    elif cfg.schedule == "step":
        main = lr_scheduler.StepLR(opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:  # constant
        main = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if warmup is None:
        return main, None
    return lr_scheduler.SequentialLR(opt, [warmup, main], milestones=[warm]), None
