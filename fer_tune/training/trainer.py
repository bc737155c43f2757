"""The trainable: one `train(config, data)` for `fer-tune train`, Ray Tune trials and final retrains.

Each split lives on the device as one uint8 tensor; batches are randperm slices, augmented whole on the
device (`fer_tune.training.augment`). Every epoch reports the same metrics, writes a self-describing
checkpoint (model, optimizer, schedulers, RNG states, history, config, normalisation) and can be resumed
bit-for-bit on CPU.

Choices (documented in docs/training.md):
- Validation is PublicTest. When it is also trained on (`train.train_on: Training+PublicTest`), `val_*` is
  still computed on it but is not held out: the result says `val_held_out: False`. Without PublicTest in
  the data, `val_loss`/`val_acc` are NaN and the plateau schedule steps on `train_loss` (`train_acc` for
  `train.plateau_metric: val_acc`).
- `model.pt` holds the last epoch's weights (no selection on the validation split); it records the best
  epoch and its `val_acc` beside them. With `train.ema` those weights are the moving average, which every
  score but `live_val_acc` and `train_*` is of.
- With `train.snapshots` the weights at the end of each lr cycle are also kept (`keep_snapshot`,
  `fer_tune.training.snapshots`): in checkpoint.pt, as `snapshots/snapshot_<k>.pt`, and scored together as
  `snapshot_val_acc`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler
from torch.optim.swa_utils import AveragedModel

from fer_tune.data import EMOTIONS, FER2013
from fer_tune.models import build_model
from fer_tune.training.augment import augment_batch, eval_batch, normalize
from fer_tune.training.checkpoint import ReportFn, model_meta, restore, save_epoch
from fer_tune.training.config import RunConfig, as_run_config
from fer_tune.training.device import Precision, channels_last, setup_device
from fer_tune.training.distill import Teacher, load_teacher
from fer_tune.training.losses import batch_loss
from fer_tune.training.metrics import METRIC_KEYS, METRIC_MODES, scores  # noqa: F401  (METRIC_MODES re-exported)
from fer_tune.training.optim import build_optimizer, build_schedulers, optimizer_step, weight_average
from fer_tune.training.sam import sam_second_pass
from fer_tune.training.snapshots import Snapshots
from fer_tune.training.splits import DeviceData, prepare_data

CUDA_CHECK_EVERY = 25  # steps between non-finite-loss checks on CUDA (a check is a host-device sync)


def epoch_order(labels: torch.Tensor, sampler: str) -> torch.Tensor:
    """The epoch's image indices: a permutation (shuffle), or n draws with replacement in which every class
    is equally likely (balanced: a rare class's images are seen several times an epoch).

    Args:
        labels: (N,) class indices of the training split, on the device.
        sampler: `train.sampler`: `shuffle` or `balanced`.

    Returns:
        (N,) indices into the split.
    """
    if sampler == "balanced":
        per_class = torch.bincount(labels, minlength=len(EMOTIONS)).clamp(min=1)
        return torch.multinomial(1.0 / per_class[labels].float(), len(labels), replacement=True)
    return torch.randperm(len(labels), device=labels.device)


def train_one_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: lr_scheduler.LRScheduler | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: RunConfig,
    norm: tuple[float, float],
    epoch: int,
    amp: Precision,
    scaler: torch.amp.GradScaler | None = None,
    bar: Any = None,
    weight: torch.Tensor | None = None,
    teacher: Teacher | None = None,
    ema: AveragedModel | None = None,
) -> dict[str, float]:
    """One pass over the training images in randperm batches (the last partial batch is dropped).

    With fp16 `scaler` scales the loss (and skips steps whose gradients overflowed, as GradScaler does).
    `weight`: per-class loss weights. `train.sampler: balanced` draws the epoch's n images with replacement,
    each class equally often, instead of a permutation. With a `teacher`, `train.distill_alpha` of the loss is
    `distill_loss` against its output on the same augmented batch. With `train.sam` each step's gradient is
    taken at SAM's perturbed weights (`sam_second_pass`; the reported loss is the first, unperturbed one).

    Args:
        model: the model, trained in place.
        opt: its optimiser.
        sched: the per-batch scheduler, stepped after each step; None for none.
        images: (N, 48, 48) uint8 training images on the device.
        labels: (N,) their class indices.
        cfg: the run's config.
        norm: (mean, std) of the training pixels (0..255).
        epoch: the 1-based epoch number, for messages.
        amp: the precision forward passes run in.
        scaler: the fp16 gradient scaler; None otherwise.
        bar: a tqdm bar advanced as steps finish; None for none.
        weight: (7,) per-class loss weights; None for unweighted.
        teacher: the distillation teacher; None for none.
        ema: the weights' moving average, updated after every step; None for none.

    Returns:
        `{"train_loss", "train_acc" (against each batch's dominant label), "lr" (of the last step),
        "images" (through the model: batches x batch_size x `augment.views`)}`.

    Raises:
        FloatingPointError: a loss was NaN or infinite; the message names the epoch and step.
    """
    model.train()
    dev, n = images.device, len(labels)
    bs = min(cfg.train.batch_size, n)
    steps, check_every = n // bs, (1 if dev.type == "cpu" else CUDA_CHECK_EVERY)
    perm = epoch_order(labels, cfg.train.sampler)
    loss_sum = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    first_bad = torch.full((), -1, device=dev, dtype=torch.long)  # first step with a non-finite loss
    lr = opt.param_groups[0]["lr"]
    for step in range(1, steps + 1):
        idx = perm[(step - 1) * bs : step * bs]
        x, y_a, y_b, lam = augment_batch(normalize(images[idx], *norm), labels[idx], cfg.augment)
        target = (y_a, y_b, lam)
        with amp.autocast():
            x = channels_last(x)
            out = model(x)
            soft = teacher(x) if teacher is not None and cfg.train.distill_alpha > 0 else None
            loss = batch_loss(out, target, soft, cfg, weight)
        opt.zero_grad(set_to_none=True)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if cfg.train.sam:

            def perturbed_loss() -> torch.Tensor:
                with amp.autocast():
                    return batch_loss(model(x), target, soft, cfg, weight)  # noqa: B023  (called right here)

            sam_second_pass(model, cfg.train.sam, perturbed_loss, scaler)
        optimizer_step(model, opt, cfg.train.grad_clip, scaler)
        if ema is not None:
            ema.update_parameters(model)
        lr = opt.param_groups[0]["lr"]  # the rate this step used
        if sched is not None:
            sched.step()
        loss = loss.detach().float()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        loss_sum += loss * bs
        correct += (out.argmax(1) == (y_a if lam >= 0.5 else y_b)).sum()  # against the dominant label
        if step % check_every == 0 or step == steps:
            if (bad := int(first_bad)) >= 0:
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {bad}")
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{float(loss_sum) / (step * bs):.3f}", refresh=False)
    seen = steps * bs * cfg.augment.views  # images through the model: each of `views` copies counts
    return {
        "train_loss": float(loss_sum) / (steps * bs),
        "train_acc": int(correct) / seen,
        "lr": lr,
        "images": seen,
    }


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: tuple[float, float],
    input_size: int,
    amp: Precision | None = None,
) -> dict[str, Any]:
    """Mean cross-entropy and `fer_tune.training.metrics.scores` (accuracy, macro-F1, recall per class) in
    eval mode, without augmentation (the center crop for crop-trained models); NaN scores for no images.

    Args:
        model: the model; put in eval mode.
        images: (N, 48, 48) uint8 images on the device.
        labels: (N,) their class indices.
        norm: (mean, std) of the training pixels (0..255).
        input_size: the side the model was trained on, px.
        amp: the precision to run in; None for fp32.

    Returns:
        `{"loss", ...scores}`.
    """
    k = len(EMOTIONS)
    if len(labels) == 0:
        return {"loss": math.nan, **scores(np.zeros((k, k), dtype=np.int64))}  # every score NaN
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    cm = torch.zeros(k * k, device=images.device, dtype=torch.long)
    for i in range(0, len(labels), 512):
        x, y = eval_batch(images[i : i + 512], *norm, input_size), labels[i : i + 512]
        with amp.autocast() if amp is not None else contextlib.nullcontext():
            out = model(channels_last(x)).float()
        loss_sum += F.cross_entropy(out, y, reduction="sum")
        cm += torch.bincount(y * k + out.argmax(1), minlength=k * k)
    return {"loss": float(loss_sum) / len(labels), **scores(cm.view(k, k).cpu().numpy())}


def run_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: lr_scheduler.LRScheduler | None,
    plateau: lr_scheduler.ReduceLROnPlateau | None,
    d: DeviceData,
    cfg: RunConfig,
    epoch: int,
    amp: Precision,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
    teacher: Teacher | None = None,
    ema: AveragedModel | None = None,
) -> dict[str, Any]:
    """Train one epoch, score PublicTest and the clean training sample, step plateau; the metrics.

    With `ema` the scores are the averaged weights' (they are the model) and `live_val_acc` is PublicTest
    accuracy of the trained weights; the plateau schedule steps on the trained weights' scores, so the
    training itself is the same with or without the average.

    Args:
        model: the model, trained in place.
        opt: its optimiser.
        sched: the per-batch scheduler; None for none.
        plateau: the per-epoch ReduceLROnPlateau, stepped on `train.plateau_metric` (its train_* twin
            without PublicTest); None for none.
        d: the splits on the device.
        cfg: the run's config.
        epoch: the 1-based epoch number.
        amp: the precision forward passes run in.
        scaler: the fp16 gradient scaler; None otherwise.
        progress: show a tqdm bar.
        teacher: the distillation teacher; None for none.
        ema: the weights' moving average (`train.ema`); None for none.

    Returns:
        One metrics dict, with the keys of `METRIC_KEYS` (and `live_val_acc` with `ema`).

    Raises:
        FloatingPointError: a loss was NaN or infinite.
    """
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=d.steps_per_epoch(cfg.train.batch_size),
            desc=f"epoch {epoch}/{cfg.train.epochs}",
            leave=False,
        )
    t0 = time.perf_counter()
    try:
        stats = train_one_epoch(
            model, opt, sched, d.x_train, d.y_train, cfg, d.norm, epoch, amp, scaler, bar, d.weight, teacher,
            ema,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if d.x_train.is_cuda:
        torch.cuda.synchronize(d.x_train.device)
    train_seconds = time.perf_counter() - t0
    size = cfg.augment.input_size
    live = evaluate_split(model, d.x_val, d.y_val, d.norm, size, amp)  # the trained weights
    scored = model if ema is None else ema.module  # the model the run saves
    val = live if ema is None else evaluate_split(scored, d.x_val, d.y_val, d.norm, size, amp)
    clean = evaluate_split(scored, d.x_train[d.clean], d.y_train[d.clean], d.norm, size, amp)
    if plateau is not None:
        name = cfg.train.plateau_metric.removeprefix("val_")  # loss | acc
        held = {"loss": live["loss"], "acc": live["accuracy"]} if len(d.y_val) else None
        plateau.step(held[name] if held else stats[f"train_{name}"])
    metrics = {
        "epoch": epoch,
        "train_loss": stats["train_loss"],
        "train_acc": stats["train_acc"],
        "clean_train_acc": clean["accuracy"],
        "val_loss": val["loss"],
        "val_acc": val["accuracy"],
        "val_macro_f1": val["macro_f1"],
        **{f"val_recall_{c}": r for c, r in val["recall"].items()},
        "lr": stats["lr"],
        "epoch_seconds": time.perf_counter() - t0,
        "images_per_second": stats["images"] / train_seconds,
    }
    if ema is not None:
        metrics["live_val_acc"] = live["accuracy"]
    return metrics


def keep_snapshot(
    snaps: Snapshots,
    model: nn.Module,
    d: DeviceData,
    cfg: RunConfig,
    epoch: int,
    amp: Precision,
    history: list[dict[str, Any]],
) -> float:
    """At the end of an lr cycle (`train.snapshots`) keep the weights as a snapshot; `snapshot_val_acc`.

    Args:
        snaps: the run's snapshots so far; a snapshot is added when `epoch` ends a cycle.
        model: the model being trained.
        d: the splits on the device.
        cfg: the run's config.
        epoch: the epoch just trained (1-based).
        amp: the precision forward passes run in.
        history: the metrics of the epochs before this one.

    Returns:
        PublicTest accuracy of the snapshots' mean softmax (`Snapshots.ensemble`) from the second snapshot on,
        carried over from the previous epoch between cycle ends (the snapshots are the same); NaN before, and
        without PublicTest.
    """
    if not snaps.due(epoch):
        return history[-1]["snapshot_val_acc"] if history else math.nan
    snaps.take(model, epoch)
    if len(snaps) < 2 or not len(d.y_val):
        return math.nan
    ensemble = snaps.ensemble(model)
    return evaluate_split(ensemble, d.x_val, d.y_val, d.norm, cfg.augment.input_size, amp)["accuracy"]


def train(
    config: RunConfig | Mapping[str, Any],
    data: FER2013,
    *,
    device: str | torch.device | None = None,
    threads: int | None = None,
    report: ReportFn | None = None,
    resume: str | Path | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
    gpu_fraction: float | None = None,
) -> dict[str, Any]:
    """Train one run config on `data`; standalone and as the body of a Ray Tune trial.

    Args:
        config: a RunConfig or a (sampled) nested mapping.
        data: FER2013 holding the `train.train_usages` splits and, for validation, PublicTest.
        device: cpu, cuda, cuda:1 (default: cuda when available); cuda without CUDA is a DeviceError.
        threads: torch CPU threads (default: leave torch's setting alone).
        report: called `report(metrics, checkpoint_dir)` each epoch after `checkpoint.pt` was written there.
        resume: a folder holding `checkpoint.pt`, or the file, to continue from.
        out_dir: where to write config.yaml, metrics.csv, checkpoint.pt and model.pt (each epoch).
        progress: show a tqdm bar per epoch.
        gpu_fraction: this process's share of its GPU (a packed trial, < 1): caps its memory at
            `fer_tune.training.device.memory_cap(gpu_fraction)`.

    Returns:
        `best_val_acc`, `best_epoch`, `history` (one metrics dict per epoch), `val_held_out`, `params`,
        `out_dir` (None without one).

    Raises:
        ConfigError: a bad config, or one that differs from the checkpoint resumed.
        DataError: the data lacks a training split, or the teacher or checkpoint cannot be read.
        DeviceError: the device cannot be used.
    """
    cfg = as_run_config(config)
    if threads is not None:
        torch.set_num_threads(threads)
    dev, amp = setup_device(device, cfg.train.precision, gpu_fraction)
    teacher = None
    if cfg.train.teacher is not None:  # read before the data: a bad teacher fails at once
        teacher = load_teacher(cfg.train.teacher, cfg.augment.input_size, cfg.train.train_usages, dev)

    d = prepare_data(cfg, data, dev)
    if teacher is not None:
        teacher.standardise_for(*d.norm)
        d.state["teacher"] = teacher.describe()  # model.pt says what it was distilled from
    torch.manual_seed(cfg.seed)  # after the teacher was built: a student's start is the same with or without
    model = build_model(cfg.model).to(dev, memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg.train)
    sched, plateau = build_schedulers(opt, cfg.train, d.steps_per_epoch(cfg.train.batch_size))
    scaler = amp.scaler()
    ema = weight_average(model, cfg.train.ema)
    snaps = Snapshots(cfg.train.epochs, cfg.train.snapshots) if cfg.train.snapshots else None
    history: list[dict[str, Any]] = []
    if resume is not None:
        schedulers = {"scheduler": sched, "plateau": plateau, "scaler": scaler, "ema": ema}
        history = restore(resume, cfg, dev, model, opt, schedulers | {"snapshots": snaps})

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml", header="resolved run config (fer-tune train)")
        for k in range(1, len(snaps or []) + 1):  # a resumed run's snapshots: also into a new out_dir
            snaps.write(out, k, cfg, history, d.state)
    for epoch in range(len(history) + 1, cfg.train.epochs + 1):
        metrics = run_epoch(model, opt, sched, plateau, d, cfg, epoch, amp, scaler, progress, teacher, ema)
        if snaps is not None:
            metrics["snapshot_val_acc"] = keep_snapshot(snaps, model, d, cfg, epoch, amp, history)
        if progress:  # the epoch's line, with every score (the snapshot ensemble's too)
            from tqdm import tqdm

            tqdm.write(
                " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            )
        history.append(metrics)
        if snaps is not None and out is not None and snaps.due(epoch):
            snaps.write(out, len(snaps), cfg, history, d.state)
        averaged = None if ema is None else ema.module  # with train.ema, the model the run saves
        stateful, extra = (sched, plateau, scaler), {"ema": ema, "snapshots": snaps}
        save_epoch(
            model, opt, stateful, cfg, history, d.state, dev, out, report, extra=extra, averaged=averaged
        )

    meta = model_meta(cfg, history, d.state)
    return {
        "best_val_acc": meta["best_val_acc"],
        "best_epoch": meta["best_epoch"],
        "history": history,
        "val_held_out": d.state["val_held_out"],
        "params": sum(p.numel() for p in model.parameters()),
        "out_dir": str(out) if out is not None else None,
    }
