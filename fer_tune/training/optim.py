"""Optimisers, learning-rate schedules and the weights' moving average built from a TrainConfig: what
`train.optimizer`, `lr`, `schedule` and `ema` mean, and the optimiser step."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

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

    With `train.snapshots` the cosine schedule is `snapshot_cosine`'s restarts.

    Args:
        opt: the optimiser from `build_optimizer`.
        cfg: the `train:` keys (`schedule`, `epochs`, `warmup_epochs`, `gamma`, `step_size`, `patience`,
            `plateau_metric`, `snapshots`).
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
    if cfg.schedule == "cosine" and cfg.snapshots:
        return snapshot_cosine(opt, cfg, steps_per_epoch), None
    if cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total - warm))
    elif cfg.schedule == "step":
        main = lr_scheduler.StepLR(opt, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:  # constant
        main = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if warmup is None:
        return main, None
    return lr_scheduler.SequentialLR(opt, [warmup, main], milestones=[warm]), None


def snapshot_cosine(
    opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> lr_scheduler.LRScheduler:
    """`train.snapshots` cosine cycles of epochs/snapshots epochs each (Huang et al. 2017's snapshots).

    Every cycle starts at the peak `lr` and anneals to ~0 by its last step, where the trainer keeps a
    snapshot. The warm-up (`warmup_epochs`, from lr/10) is only at the start of the first cycle, whose
    cosine is that much shorter: the restarts stay on cycle boundaries.

    Args:
        opt: the optimiser from `build_optimizer`.
        cfg: the `train:` keys (`epochs`, `snapshots` >= 2 dividing it, `warmup_epochs` below one cycle).
        steps_per_epoch: batches per epoch.

    Returns:
        The per-batch scheduler: CosineAnnealingWarmRestarts, after a LinearLR warm-up and a shortened
        CosineAnnealingLR first cycle when there is a warm-up (a SequentialLR).
    """
    cycle = cfg.epochs // cfg.snapshots * steps_per_epoch  # steps
    warm = min(round(cfg.warmup_epochs * steps_per_epoch), cycle - 1)
    restarts = lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=cycle)
    if warm == 0:
        return restarts
    warmup = lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warm)
    first = lr_scheduler.CosineAnnealingLR(opt, T_max=cycle - warm)
    return lr_scheduler.SequentialLR(opt, [warmup, first, restarts], milestones=[warm, cycle])


def optimizer_step(
    model: nn.Module, opt: torch.optim.Optimizer, grad_clip: float, scaler: torch.amp.GradScaler | None
) -> None:
    """Clip the gradients (`train.grad_clip`, 0: off) and step; with fp16 through the scaler, which unscales
    first (clipping acts on true gradients) and skips a step whose gradients overflowed.

    Args:
        model: the model whose `.grad`s are set.
        opt: its optimiser.
        grad_clip: the largest gradient L2 norm; 0 for no clipping.
        scaler: the fp16 gradient scaler the backward was scaled by; None otherwise.
    """
    if scaler is not None:
        scaler.unscale_(opt)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """The exponential moving average of `model`'s weights and buffers (`train.ema`), or None when off.

    torch's `AveragedModel` keeps a copy; `update_parameters(model)` after each optimiser step moves it by
    `1 - decay` towards the weights (the first update copies them). It reads the trained model and draws no
    random numbers, so training is the same with or without it. Batch-norm's running statistics are averaged
    too (`use_buffers`), so the average needs no pass over the data before it is scored.

    Args:
        model: the model being trained, on its device.
        decay: `train.ema`, in [0, 1); 0 for no average.

    Returns:
        The AveragedModel (its `.module` is the averaged model), or None.
    """
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
