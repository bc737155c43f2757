"""Evaluate a trained model on each Usage split present: accuracy, macro-F1, per-class recall, confusion.

Test-time augmentation (`tta`) averages the logits of several views of each image:
- `none`: the evaluation transform of training (the center crop for crop-trained models).
- `flip`: the image and its mirror.
- `tencrop`: five crops and their mirrors. A model trained on c x c crops (c < 48) sees the four corner
  crops and the center crop. A 48-px model sees the image shifted diagonally by d px towards each corner
  (reflect padding) and the image itself, with d = half the training shift (`augment.crop` 1..16) or 2 px
  when it was trained without shifts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.base import DataError, check_writable, json_safe
from fer_tune.data import EMOTIONS, FER2013, load_fer2013
from fer_tune.training.augment import center_crop, crop_at, normalize
from fer_tune.training.checkpoint import load_model
from fer_tune.training.device import Precision, channels_last, resolve_device, to_device
from fer_tune.training.metrics import classification_metrics

TTA = ("none", "flip", "tencrop")
# The views `evaluate_ensemble` scores on Training when the data has a held-out split too. Ten views of its
# 28,709 faces cost about 100 s a model on 2 CPU cores and tell no more about fitting than the centre view and
# flip do; held-out splits get every TTA.
TRAINING_TTAS = ("none", "flip")


def ttas_by_split(splits: Sequence[str], ttas: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The TTAs `evaluate_ensemble` scores each split with: all of `ttas`, but on Training only those in
    `TRAINING_TTAS` when a held-out split is there too.

    Args:
        splits: the Usage splits of the data.
        ttas: the TTA modes asked for.

    Returns:
        {split: its TTA modes, in the order of `ttas`}.
    """
    held_out = any(s != "Training" for s in splits)
    return {
        s: tuple(t for t in ttas if not (s == "Training" and held_out and t not in TRAINING_TTAS))
        for s in splits
    }


def tta_views(x: torch.Tensor, input_size: int, tta: str, shift: int = 2) -> list[torch.Tensor]:
    """The views of a normalised (B, 1, 48, 48) batch that `tta` averages over, each (B, 1, S, S).

    Args:
        x: the normalised batch.
        input_size: the side the model was trained on, px (S).
        tta: `none` (1 view), `flip` (2) or `tencrop` (10).
        shift: for a 48-px model's `tencrop`: the diagonal shift towards each corner, px.

    Returns:
        The views, the center view first.

    Raises:
        ValueError: `tta` is not one of `TTA`.
    """
    if tta not in TTA:
        raise ValueError(f"tta must be one of {TTA}, got {tta!r}")
    center = center_crop(x, input_size)
    if tta == "none":
        return [center]
    if tta == "flip":
        return [center, center.flip(-1)]
    if input_size < x.shape[-1]:
        src, size, far = x, input_size, x.shape[-1] - input_size
    else:  # 48-px model: shift instead of crop
        src, size, far = F.pad(x, (shift,) * 4, mode="reflect"), x.shape[-1], 2 * shift
    b = x.shape[0]
    views = [center]
    for top, left in ((0, 0), (0, far), (far, 0), (far, far)):
        offsets = torch.full((b,), top, device=x.device), torch.full((b,), left, device=x.device)
        views.append(crop_at(src, *offsets, size))
    return views + [v.flip(-1) for v in views]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    meta: Mapping[str, Any],
    images: torch.Tensor,
    tta: str = "none",
    batch_size: int = 256,
    precision: str | None = None,
) -> torch.Tensor:
    """Logits (N, 7) float32 for uint8 images (N, 48, 48) on the model's device, averaged over TTA views.

    `precision` (a `train.precision` value) defaults to the GPU's autocast precision on a GPU and to fp32 on a
    CPU: scores then do not depend on the CPU model (bf16 with AMX or AVX512-BF16).
    `fer_tune.inference.predictor` asks for `auto`.

    Args:
        model: the classifier, on the device of `images`.
        meta: its meta (`config`, `mean`, `std`, `input_size`), as `load_model` returns it.
        images: (N, 48, 48) uint8 faces.
        tta: `none`, `flip` or `tencrop` (see the module's docstring).
        batch_size: images per forward pass (each with all its views).
        precision: `auto`, `bf16`, `fp16` or `fp32`; None for the default above.

    Returns:
        (N, 7) float32 logits, on the device of `images`.
    """
    crop = meta["config"]["augment"]["crop"]
    shift = max(1, crop // 2) if 1 <= crop <= 16 else 2
    dev = images.device
    amp = Precision.select(precision or ("auto" if dev.type == "cuda" else "fp32"), dev)
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i : i + batch_size], meta["mean"], meta["std"])
        views = tta_views(x, meta["input_size"], tta, shift)
        with amp.autocast():
            logits = torch.stack([model(channels_last(v)).float() for v in views]).mean(0)
        out.append(logits.float())
    return torch.cat(out) if out else torch.zeros(0, len(EMOTIONS), device=dev)


def _check_labels(data: FER2013) -> None:
    if len(data) and (data.labels.min() < 0 or data.labels.max() >= len(EMOTIONS)):
        raise DataError(f"{data.source or 'dataset'}: images without labels (0..6) cannot be evaluated")


def evaluate_model(
    model: nn.Module,
    meta: Mapping[str, Any],
    data: FER2013,
    *,
    tta: str = "none",
    device: str | torch.device | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics for each Usage split present in `data`: {split: {n, accuracy, macro_f1, recall, confusion}}.

    Args:
        model: the classifier; moved to `device`.
        meta: its meta, as `load_model` returns it.
        data: labelled faces; each Usage split present is scored on its own.
        tta: `none`, `flip` or `tencrop`.
        device: where to run, as for `resolve_device`; None to pick CUDA when available.

    Returns:
        `{split: scores}`, as `fer_tune.training.metrics.scores` gives them.

    Raises:
        DataError: `data` holds images without labels 0..6.
    """
    _check_labels(data)
    dev = resolve_device(device)
    model = model.to(dev)
    results = {}
    for split in data.splits:
        part = data.split(split)
        logits = predict_logits(model, meta, to_device(part.images, dev), tta)
        results[split] = classification_metrics(part.labels, logits.argmax(1).cpu().numpy())
    return results


def save_confusion_png(cm: Any, path: str | Path, title: str) -> None:
    """Write a confusion matrix (rows true, columns predicted) with its counts and class names as a PNG.

    Args:
        cm: the (7, 7) matrix (a nested list or an array).
        path: the PNG file to write.
        title: the plot's title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    fig = Figure(figsize=(6.4, 5.6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: no display, no pyplot state
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ticks = range(len(EMOTIONS))
    ax.set_xticks(ticks, EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(ticks, EMOTIONS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), count in np.ndenumerate(cm):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.savefig(path, dpi=120)


def evaluate_dir(
    model_path: str | Path,
    data: str | Path | FER2013,
    *,
    tta: str = "none",
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate `model.pt` (or its folder) on every split of `data`; writes metrics.json and confusion PNGs.

    Returns {"model", "arch", "epoch", "tta", "data", "splits": {split: metrics}}, which is metrics.json.
    Files go to `out_dir` (default: the model's folder). `data` may be a path: it is parsed after the model
    was read and the output folder test-written, so neither error waits for the parse.

    Args:
        model_path: a `model.pt`, or the run folder holding one.
        data: the dataset, or a path `load_fer2013` reads.
        tta: `none`, `flip` or `tencrop`.
        out_dir: where metrics.json and `confusion_<split>.png` go; None for the model's folder.
        device: where to run; None to pick CUDA when available.

    Returns:
        The content of metrics.json.

    Raises:
        DataError: the model or the data cannot be read, or the data has no labels.
        OutputError: the output folder cannot be written.
    """
    model_path = Path(model_path)
    model, meta = load_model(model_path, device=device)
    out = Path(out_dir) if out_dir is not None else (model_path if model_path.is_dir() else model_path.parent)
    check_writable(out, "--out" if out_dir is not None else "model folder")
    data = data if isinstance(data, FER2013) else load_fer2013(data)
    splits = evaluate_model(model, meta, data, tta=tta, device=device)
    result = {
        "model": str(model_path),
        "arch": meta["arch"],
        "epoch": meta["epoch"],
        "tta": tta,
        "data": data.source,
        "splits": splits,
    }
    (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2) + "\n")
    for split, m in splits.items():
        title = f"{split} ({m['n']} images): accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}"
        save_confusion_png(m["confusion"], out / f"confusion_{split}.png", title)
    return result


def evaluate_ensemble(
    path: str | Path,
    data: str | Path | FER2013,
    *,
    ttas: tuple[str, ...] = ("none", "flip"),
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Score each seed of a retrain folder and their ensemble (`fer_tune.training.ensemble`), each TTA,
    every split (as `ttas_by_split` says).

    The ensemble is the mean of the seeds' softmax probabilities (averaged over the TTA views of each seed).
    Returns {"model", "members", "data", "ttas", "results": {member | "ensemble": {tta: {split: metrics}}},
    "table"}; it is written to `out_dir/metrics.json` (default: the folder), under the key "evaluation" when
    that file already holds the retrain's report, so the report stays whole.

    Args:
        path: a retrain folder (`seed_<s>/model.pt`), a run folder or a model file.
        data: the dataset, or a path `load_fer2013` reads.
        ttas: the TTA modes to score, each of `TTA`.
        out_dir: the folder of the metrics.json to write; None for `path`.
        device: where to run; None to pick CUDA when available.

    Returns:
        The result described above.

    Raises:
        DataError: a model or the data cannot be read, the data has no labels, or members take different
            input sizes.
        OutputError: the output folder cannot be written.
    """
    from fer_tune.training.ensemble import Ensemble, load_models

    path = Path(path)
    members = load_models(path, device=device)
    out = Path(out_dir) if out_dir is not None else path
    check_writable(out, "--out" if out_dir is not None else "model folder")
    data = data if isinstance(data, FER2013) else load_fer2013(data)
    _check_labels(data)
    dev = resolve_device(device)
    meta = members[0][2]
    results: dict[str, dict[str, Any]] = {name: {} for name, _, _ in members} | {"ensemble": {}}
    for split, split_ttas in ttas_by_split(data.splits, ttas).items():
        part = data.split(split)
        images = to_device(part.images, dev)
        for tta in split_ttas:
            probs = []
            for name, model, m in members:
                p = predict_logits(model.to(dev), m, images, tta).softmax(-1)
                results[name].setdefault(tta, {})[split] = classification_metrics(
                    part.labels, p.argmax(1).cpu().numpy()
                )
                probs.append(p)
            # Ensemble.forward's rule, applied to the views' mean of each seed: mean of probabilities.
            mean = torch.stack(probs).mean(0)
            results["ensemble"].setdefault(tta, {})[split] = classification_metrics(
                part.labels, mean.argmax(1).cpu().numpy()
            )
    table = [
        {"model": name, "tta": tta, "split": split, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
        for name, by_tta in results.items()
        for tta, splits in by_tta.items()
        for split, m in splits.items()
    ]
    result = {
        "model": str(path),
        "members": [name for name, _, _ in members],
        "arch": meta["arch"],
        "ensemble": f"{Ensemble.__module__}.Ensemble: mean of the members' softmax probabilities",
        "data": data.source,
        "ttas": list(ttas),
        "results": results,
        "table": table,
    }
    file = out / "metrics.json"
    previous = _read_json(file)
    doc = previous | {"evaluation": result} if "per_seed" in previous else result
    file.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
    return result


def _read_json(file: Path) -> dict[str, Any]:
    try:
        obj = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def format_ensemble(result: Mapping[str, Any]) -> str:
    """Accuracy (and macro-F1) per member and TTA (rows) and split (columns) of evaluate_ensemble's result.

    Args:
        result: what `evaluate_ensemble` returned.

    Returns:
        A heading line and the table, for the terminal.
    """
    table = pd.DataFrame(result["table"])
    wide = table.pivot_table(
        index=["model", "tta"], columns="split", values=["accuracy", "macro_f1"], sort=False
    )
    wide.columns = [f"{split} {score}" for score, split in wide.columns]
    head = f"{result['model']}: {len(result['members'])} members and their ensemble ({result['arch']})\n"
    return head + wide.to_string(float_format="{:.3f}".format, na_rep="-")  # -: ten-crop on Training


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A table (one row per split) of evaluate_dir's result or evaluate_model's {split: metrics}.

    Args:
        metrics: what `evaluate_dir` or `evaluate_model` returned.

    Returns:
        The table (n, accuracy, macro-F1, recall per class), headed by the model line for `evaluate_dir`'s.
    """
    splits = metrics.get("splits", metrics)
    rows = [
        {"split": s, "n": m["n"], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], **m["recall"]}
        for s, m in splits.items()
    ]
    table = (
        pd.DataFrame(rows)
        .set_index("split")
        .to_string(float_format="{:.3f}".format, na_rep="-", index_names=False)
    )
    head = ""
    if "model" in metrics:
        head = f"{metrics['model']} ({metrics['arch']}, epoch {metrics['epoch']}), tta={metrics['tta']}\n"
    return head + "columns after macro_f1: recall per class\n" + table
