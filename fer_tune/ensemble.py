"""Seed ensembles: a retrain folder with N seeds is one model, the mean of its members' softmax probabilities.

`Ensemble` returns log(mean_m softmax(member_m(x))): log-probabilities are logits (softmax gives the mean
probabilities back), so everything that takes a classifier (evaluation, TTA, export, prediction) takes one.
`load_models(path)` reads a `model.pt`, a run folder or a retrain folder (`seed_<s>/model.pt`), and
`load(path)` returns the single model or the ensemble of what it found, with the meta both share.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_tune.checkpoint import load_model
from fer_tune.errors import DataError

# What every member must share to be fed the same normalised input (normalisation and crop size).
SHARED_META = ("input_size", "mean", "std")


class Ensemble(nn.Module):
    """The mean of several classifiers' softmax probabilities, as log-probabilities (B, classes)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()  # clamp: a probability that underflowed to 0 stays finite


def _seed_number(path: Path) -> int:
    return int(path.parent.name.removeprefix("seed_"))


def model_files(path: str | Path) -> list[Path]:
    """The model.pt files `path` names: itself, `<dir>/model.pt`, or every `<dir>/seed_<s>/model.pt`."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such model file or folder")
    if (path / "model.pt").is_file():
        return [path / "model.pt"]
    seeds = [p for p in path.glob("seed_*/model.pt") if re.fullmatch(r"seed_\d+", p.parent.name)]
    if not seeds:
        raise DataError(f"{path}: no model.pt, nor seed_<s>/model.pt of a retrain")
    return sorted(seeds, key=_seed_number)


def member_name(file: Path) -> str:
    """`seed_3` for a retrain member, else the run folder's name."""
    return file.parent.name


def load_models(
    path: str | Path, device: str | torch.device | None = None
) -> list[tuple[str, nn.Module, dict[str, Any]]]:
    """(name, model in eval mode, meta) for every model.pt `path` names; members must share SHARED_META."""
    loaded = [(member_name(f), *load_model(f, device=device)) for f in model_files(path)]
    _, _, first = loaded[0]
    for name, _, meta in loaded[1:]:
        for key in SHARED_META:
            a, b = first.get(key), meta.get(key)
            same = a == b or (
                isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6)
            )
            if not same:
                raise DataError(
                    f"{path}: {name}/model.pt has {key} {b!r}, {loaded[0][0]} has {a!r}: "
                    "members of an ensemble must be trained on the same data and input size"
                )
    return loaded


def load(path: str | Path, device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model `path` names, or the ensemble of its seeds; the meta of the first, plus `members`."""
    loaded = load_models(path, device)
    names = [name for name, _, _ in loaded]
    meta = dict(loaded[0][2]) | {"members": names}
    if len(loaded) == 1:
        return loaded[0][1], meta
    model = Ensemble([m for _, m, _ in loaded]).eval()
    return model, meta | {"arch": f"ensemble of {len(loaded)} {meta['arch']}"}
