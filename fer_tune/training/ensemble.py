"""Seed ensembles: a retrain folder with N seeds is one model, the mean of its members' softmax probabilities.

`Ensemble` returns log(mean_m softmax(member_m(x))): log-probabilities are logits (softmax gives the mean
probabilities back), so everything that takes a classifier (evaluation, TTA, export, prediction) takes one.
`load_models(path)` reads a `model.pt`, a run folder, a retrain folder (`seed_<s>/model.pt`) or a run's
`snapshots/` folder (`snapshot_<k>.pt`, `train.snapshots`), and `load(path)` returns the single model or the
ensemble of what it found, with the meta both share.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_tune.base import DataError
from fer_tune.training.checkpoint import load_model

# What every member must share to be fed the same input: its crop size. Members standardised by other
# statistics (e.g. seeds of a `train.subset` run, each on its own subset) take it re-standardised.
SHARED_META = ("input_size",)


def restandardise(mean: float, std: float, to_mean: float, to_std: float) -> tuple[float, float]:
    """(scale, shift) such that x * scale + shift is (p - to_mean) / to_std when x is (p - mean) / std: pixels
    standardised by one model's training statistics, as another model was trained to see them.

    Args:
        mean: the pixel mean the input was standardised by (0..255).
        std: the pixel standard deviation the input was standardised by (0..255).
        to_mean: the pixel mean the model was trained with.
        to_std: the pixel standard deviation the model was trained with.

    Returns:
        (scale, shift); (1.0, 0.0) for equal statistics.
    """
    return std / to_std, (mean - to_mean) / to_std


class Ensemble(nn.Module):
    """The mean of several classifiers' softmax probabilities, as log-probabilities (B, classes)."""

    def __init__(self, members: list[nn.Module], inputs: list[tuple[float, float]] | None = None) -> None:
        """Hold the members, each with the affine map to its own standardisation.

        Args:
            members: the classifiers, at least one.
            inputs: each member's (scale, shift) from the ensemble's standardised input to its own
                (`restandardise`); None: all take it as it is.

        Raises:
            ValueError: no members.
        """
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.inputs = list(inputs) if inputs is not None else [(1.0, 0.0)] * len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The log of the members' mean softmax probability.

        Args:
            x: (B, 1, S, S) images standardised as the first member was trained.

        Returns:
            (B, 7) float32 log-probabilities (usable as logits).
        """
        views = [x if (s, b) == (1.0, 0.0) else x * s + b for s, b in self.inputs]
        probs = torch.stack(
            [m(v).float().softmax(-1) for m, v in zip(self.members, views, strict=True)]
        ).mean(0)
        return probs.clamp_min(1e-12).log()  # clamp: a probability that underflowed to 0 stays finite


SNAPSHOT_FILE = re.compile(r"snapshot_(\d+)\.pt")  # a snapshot ensemble's member: snapshots/snapshot_<k>.pt


def _seed_number(path: Path) -> int:
    return int(path.parent.name.removeprefix("seed_"))


def model_files(path: str | Path) -> list[Path]:
    """The model files `path` names: itself, `<dir>/model.pt`, every `<dir>/seed_<s>/model.pt`, or every
    `<dir>/snapshot_<k>.pt` (a run's `snapshots/` folder).

    Args:
        path: a model file, a run folder, a retrain folder or a snapshots folder.

    Returns:
        The files, retrain seeds and snapshots in numeric order.

    Raises:
        DataError: no such path, or a folder holding no model.pt.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such model file or folder")
    if (path / "model.pt").is_file():
        return [path / "model.pt"]
    seeds = [p for p in path.glob("seed_*/model.pt") if re.fullmatch(r"seed_\d+", p.parent.name)]
    if seeds:
        return sorted(seeds, key=_seed_number)
    snapshots = {
        int(m.group(1)): p for p in path.glob("snapshot_*.pt") if (m := SNAPSHOT_FILE.fullmatch(p.name))
    }
    if not snapshots:
        raise DataError(f"{path}: no model.pt, nor seed_<s>/model.pt of a retrain, nor snapshot_<k>.pt")
    return [snapshots[k] for k in sorted(snapshots)]


def member_name(file: Path) -> str:
    """`seed_3` for a retrain member, `snapshot_2` for a snapshot, else the run folder's name.

    Args:
        file: a model.pt or a snapshot_<k>.pt.

    Returns:
        The snapshot's name, or that of its folder.
    """
    return file.stem if SNAPSHOT_FILE.fullmatch(file.name) else file.parent.name


def load_models(
    path: str | Path, device: str | torch.device | None = None
) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(name, model in eval mode, meta) for every model file `path` names; members must share SHARED_META.

    Args:
        path: a model file, a run folder, a retrain folder or a snapshots folder.
        device: where the models go; None to pick CUDA when available.

    Returns:
        One (member name, model, meta) per file, in `model_files` order.

    Raises:
        DataError: a file cannot be read, or members take different input sizes.
    """
    loaded = [(member_name(f), *load_model(f, device=device)) for f in model_files(path)]
    _, _, first = loaded[0]
    for name, _, meta in loaded[1:]:
        for key in SHARED_META:
            if (a := first.get(key)) != (b := meta.get(key)):
                raise DataError(
                    f"{path}: {name}/model.pt has {key} {b!r}, {loaded[0][0]} has {a!r}: "
                    "members of an ensemble must take the same input size"
                )
    return loaded


def load(path: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model `path` names, or the ensemble of its seeds or snapshots; the first's meta, plus `members`.

    Args:
        path: a model file, a run folder, a retrain folder or a snapshots folder.
        device: where the models go; None to pick CUDA when available.

    Returns:
        (the model or `Ensemble`, in eval mode, its meta); an ensemble's `arch` reads
        `ensemble of N <arch>`.

    Raises:
        DataError: a file cannot be read, or members take different input sizes.
    """
    loaded = load_models(path, device)
    names = [name for name, _, _ in loaded]
    meta = dict(loaded[0][2]) | {"members": names}
    if len(loaded) == 1:
        return loaded[0][1], meta
    # The ensemble takes faces standardised as its first member was trained; each member gets its own.
    inputs = [restandardise(meta["mean"], meta["std"], m["mean"], m["std"]) for _, _, m in loaded]
    model = Ensemble([m for _, m, _ in loaded], inputs).eval()
    return model, meta | {"arch": f"ensemble of {len(loaded)} {meta['arch']}"}
