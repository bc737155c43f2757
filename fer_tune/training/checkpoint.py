"""Checkpoints and model files: written atomically, read without unpickling code, describing themselves.

`checkpoint.pt` (written every epoch) holds everything a run needs to continue bit-for-bit: config, model,
optimizer, schedulers, gradient scaler, RNG states, history, normalisation (and the weights' moving average
with `train.ema`). `model.pt` holds the weights (the moving average with `train.ema`) with the config that
builds them and the metrics that describe them, so `load_model` needs nothing else. Both are read with
`torch.load(weights_only=True)`: a file holding pickled classes is refused, never run, and every bad file
(cut, foreign, edited) is one DataError naming it.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from fer_tune.base import ConfigError, DataError, FerTuneError, atomic_write
from fer_tune.models import build_model
from fer_tune.training.config import RunConfig
from fer_tune.training.device import resolve_device
from fer_tune.training.metrics import metric_columns

ReportFn = Callable[[dict[str, Any], Path], None]  # (metrics of the epoch, folder holding checkpoint.pt)

CHECKPOINT_KEYS = ("config", "model", "optimizer", "scheduler", "plateau", "rng", "history")
# What torch.load raises for a cut file (RuntimeError, EOFError, OSError EINVAL) or a foreign one (KeyError).
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through `atomic_write`.

    Args:
        obj: what to save (tensors, dicts, lists, numbers).
        path: the file to write (its folder must exist).

    Raises:
        OutputError: the file cannot be written.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def rng_state(device: torch.device) -> dict[str, Any]:
    """The CPU and (on CUDA) device RNG states: a resumed run draws the same batches and augmentations.

    Args:
        device: the run's device; its CUDA RNG state is saved too when it is a GPU.

    Returns:
        `{"torch": ..., "cuda": ... or None}`, for `set_rng_state`.
    """
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` saved.

    Args:
        state: what `rng_state` returned.
        device: the run's device; its CUDA RNG is restored when it is a GPU and a state was saved.
    """
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def first_difference(a: Any, b: Any, key: str = "") -> str | None:
    """Dotted path of the first key where two nested config dicts differ.

    Args:
        a: a nested config dict (or a leaf value).
        b: the other one.
        key: the dotted path of `a` and `b` themselves; empty at the top.

    Returns:
        The dotted key (`train.lr`), or None when they are equal.
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in [*a, *(k for k in b if k not in a)]:
            diff = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if diff:
                return diff
        return None
    return None if a == b else key


def one_line(e: BaseException) -> str:
    """`Type: first sentence` of an exception: torch's messages run to paragraphs of advice.

    Args:
        e: the exception.

    Returns:
        Its type name and the first sentence of its message, on one line.
    """
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "").split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def read_torch_file(path: Path, what: str, keys: tuple[str, ...], device: Any = "cpu") -> dict[str, Any]:
    """`torch.load(weights_only=True)` of a dict fer-tune wrote, with `keys`; else DataError naming it.

    Args:
        path: the file to read.
        what: what the file should be, for messages (`fer-tune model.pt`).
        keys: the keys the dict must hold.
        device: where tensors are loaded (`map_location`).

    Returns:
        The dict.

    Raises:
        DataError: the file cannot be read, holds pickled classes, is cut or corrupt, or lacks a key.
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses arbitrary classes (running their code is what a malicious file would do).
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        held = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        raise DataError(f"{path}: not a {what}: it holds {held}, which fer-tune does not unpickle") from None
    except LOAD_ERRORS as e:
        raise DataError(f"{path}: not a {what}, truncated or corrupt ({one_line(e)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a {what}: it holds a {type(obj).__name__}, not fer-tune's dict")
    missing = [k for k in keys if k not in obj]
    if missing:
        hint = " (a bare state_dict?)" if all(isinstance(v, torch.Tensor) for v in obj.values()) else ""
        raise DataError(f"{path}: not a {what}: no `{'`, `'.join(missing)}`{hint}")
    return obj


def restore(
    resume: str | Path,
    cfg: RunConfig,
    device: torch.device,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    schedulers: dict[str, Any],
) -> list[dict[str, Any]]:
    """Restore model, optimizer, schedulers and RNG from a checkpoint of the same config; its history.

    Args:
        resume: a `checkpoint.pt`, or the folder holding one.
        cfg: the run's config; it must equal the checkpoint's (keys added since take their defaults).
        device: the run's device.
        model: loaded in place.
        opt: loaded in place.
        schedulers: checkpoint key (`scheduler`, `plateau`, `scaler`, `snapshots`, `ema`) -> object with
            `load_state_dict`, or None for one the run has not.

    Returns:
        The checkpoint's history: one metrics dict per epoch done.

    Raises:
        DataError: no checkpoint there, or it cannot be read or does not fit the model.
        ConfigError: the config differs from the checkpoint's; the message names the first key.
    """
    path = Path(resume)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    ckpt = read_torch_file(path, "fer-tune checkpoint", CHECKPOINT_KEYS, device)
    _check_same_config(cfg, ckpt["config"], path)
    try:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        for key, s in schedulers.items():
            if s is not None and ckpt.get(key) is not None:  # no scaler state: an fp32/bf16 run
                s.load_state_dict(ckpt[key])
        set_rng_state(ckpt["rng"], device)
        return list(ckpt["history"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # edited or from another fer-tune version
        raise DataError(f"{path}: does not fit its config ({one_line(e)})") from None


def check_resumable(resume: str | Path, cfg: RunConfig) -> None:
    """Refuse, before anything is written, to continue the checkpoint at `resume` with another config.

    Args:
        resume: a `checkpoint.pt`, or the folder holding one.
        cfg: the config the run would continue with.

    Raises:
        DataError: no checkpoint there, or it cannot be read.
        ConfigError: the config differs from the checkpoint's; the message names the first key.
    """
    path = Path(resume)
    path = path / "checkpoint.pt" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    _check_same_config(cfg, read_torch_file(path, "fer-tune checkpoint", CHECKPOINT_KEYS)["config"], path)


def _check_same_config(cfg: RunConfig, saved: Any, path: Path) -> None:
    with contextlib.suppress(FerTuneError, TypeError):  # keys added since the checkpoint: their defaults
        saved = RunConfig.from_dict(saved).to_dict()
    diff = first_difference(cfg.to_dict(), saved)
    if diff:
        raise ConfigError(f"{diff}: differs from the config of the checkpoint being resumed ({path})")


def model_meta(cfg: RunConfig, history: list[dict], state: dict[str, Any]) -> dict[str, Any]:
    """What model.pt says beside its weights: arch, config, history, the best epoch, normalisation, data.

    Args:
        cfg: the run's config.
        history: one metrics dict per epoch done.
        state: the run's other facts (`mean`, `std`, `input_size`, `val_held_out`, `data`, ...), copied in.

    Returns:
        The meta dict `load_model` returns.
    """
    best = max((h for h in history if not math.isnan(h["val_acc"])), key=lambda h: h["val_acc"], default=None)
    return {
        "arch": cfg.model.arch,
        "config": cfg.to_dict(),
        "epoch": len(history),
        "metrics": history[-1] if history else {},
        "history": history,
        "best_val_acc": best["val_acc"] if best else math.nan,
        "best_epoch": best["epoch"] if best else None,
        **state,
    }


def load_model(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from `model.pt` (or its folder); returns (model in eval mode, meta).

    meta holds `config` (the run config dict), `arch`, `metrics` (last epoch), `history`, `epoch`,
    `best_val_acc`, `best_epoch`, `mean`, `std`, `input_size`, `val_held_out` and `data`.

    Args:
        path: a `model.pt`, or the run folder holding one.
        device: where the model goes, as for `resolve_device`; None to pick CUDA when available.

    Returns:
        (the model, in eval mode and channels-last, the meta).

    Raises:
        DataError: no such file, or it is not a fer-tune model or its weights do not fit its config.
        DeviceError: the device cannot be used.
    """
    path = Path(path)
    file = path / "model.pt" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{file}: no such model file")
    obj = read_torch_file(file, "fer-tune model.pt", ("state_dict", "config"))
    weights = obj.pop("state_dict")
    try:
        model = build_model(obj["config"]["model"])
    except (ConfigError, KeyError, TypeError) as e:
        raise DataError(f"{file}: its config does not describe a model ({one_line(e)})") from None
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as e:
        # "Error(s) in loading state_dict for X:" then one line per mismatch: the first says what is wrong.
        lines = [ln.strip().rstrip(".") for ln in str(e).splitlines()[1:] if ln.strip()] or [one_line(e)]
        more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
        raise DataError(f"{file}: weights do not fit its config: {lines[0]}{more}") from None
    return model.to(resolve_device(device), memory_format=torch.channels_last).eval(), obj


def save_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    stateful: tuple[Any, Any, Any],
    cfg: RunConfig,
    history: list[dict[str, Any]],
    state: dict[str, Any],
    dev: torch.device,
    out: Path | None,
    report: ReportFn | None,
    *,
    extra: Mapping[str, Any] | None = None,
    averaged: nn.Module | None = None,
) -> None:
    """Write checkpoint.pt (and metrics.csv, model.pt) to out, and hand a checkpoint folder to report.

    Args:
        model: the model being trained.
        opt: its optimiser.
        stateful: (per-batch scheduler, plateau scheduler, fp16 gradient scaler), each None when unused.
        cfg: the run's config.
        history: one metrics dict per epoch done, this one last.
        state: the run's other facts, saved in both files (see `model_meta`).
        dev: the run's device, for its RNG state.
        out: the run folder to write into; None to write nothing there.
        report: called with (this epoch's metrics, a temporary folder holding checkpoint.pt), which is
            deleted when it returns (Ray Tune's `train.report`); None for none.
        extra: more of the run's state in checkpoint.pt only: key -> object with `state_dict()`, None for
            none (`snapshots`: `fer_tune.training.snapshots.Snapshots`); `restore` loads it back by key.
        averaged: the model whose weights model.pt holds instead of `model`'s (`train.ema`: the moving
            average's `.module`); None for `model`'s. checkpoint.pt always holds `model`'s.

    Raises:
        OutputError: a file cannot be written.
    """
    if out is None and report is None:
        return
    sched, plateau, scaler = stateful  # per-batch schedule, plateau schedule, fp16 gradient scaler
    ckpt = {
        "epoch": len(history),
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict() if sched is not None else None,
        "plateau": plateau.state_dict() if plateau is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(dev),
        "history": history,
        **state,
        **{key: s.state_dict() for key, s in (extra or {}).items() if s is not None},
    }
    if out is not None:
        atomic_save(ckpt, out / "checkpoint.pt")
        saved = model if averaged is None else averaged
        weights = {k: v.detach().cpu() for k, v in saved.state_dict().items()}
        atomic_save({"state_dict": weights, **model_meta(cfg, history, state)}, out / "model.pt")
        csv = pd.DataFrame(history, columns=metric_columns(history)).to_csv(index=False).encode()
        atomic_write(out / "metrics.csv", lambda f: f.write(csv))
    if report is not None:
        folder = Path(tempfile.mkdtemp(prefix="fer-tune-ckpt-"))
        try:
            if out is not None:
                shutil.copy2(out / "checkpoint.pt", folder / "checkpoint.pt")
            else:
                torch.save(ckpt, folder / "checkpoint.pt")
            report(dict(history[-1]), folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # Ray has copied it into the trial's storage
