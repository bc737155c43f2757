"""Snapshot ensembles (Huang et al. 2017, "Snapshot Ensembles: Train 1, get M for free"): `train.snapshots`.

With `train.snapshots: N` the cosine schedule restarts N times (`fer_tune.training.optim.snapshot_cosine`),
and the weights at the end of each cycle, where the learning rate has annealed to ~0, are kept. The N
snapshots are one model, the mean of their softmax probabilities (`fer_tune.training.ensemble.Ensemble`): an
ensemble for the training cost of one model, paid for with N forward passes per prediction.

A run with an `out_dir` writes snapshot k (1..N) as `out_dir/snapshots/snapshot_<k>.pt` in model.pt's format
(`load_model` reads one, `ensemble.load(out_dir / "snapshots")` the ensemble); the last is model.pt's
weights. checkpoint.pt holds them too (a Ray trial has no out_dir), so a resumed run loses none.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_tune.training.checkpoint import atomic_save, model_meta
from fer_tune.training.config import RunConfig
from fer_tune.training.ensemble import Ensemble

SNAPSHOT_DIR = "snapshots"  # in a run's out_dir


def snapshot_path(out: Path, k: int) -> Path:
    """Where snapshot k (1-based) of the run in `out` is written.

    Args:
        out: the run's out_dir.
        k: the snapshot's number, 1..`train.snapshots`.

    Returns:
        `out/snapshots/snapshot_<k>.pt`.
    """
    return out / SNAPSHOT_DIR / f"snapshot_{k}.pt"


class Snapshots:
    """The snapshots a run kept so far; saved in checkpoint.pt through `state_dict` / `load_state_dict`.

    Args:
        epochs: `train.epochs`.
        n: `train.snapshots` (>= 2, dividing `epochs`).
    """

    def __init__(self, epochs: int, n: int) -> None:
        self.n = n
        self.cycle = epochs // n  # epochs per lr cycle
        self.epochs: list[int] = []  # the epoch each snapshot was kept after
        self.weights: list[dict[str, torch.Tensor]] = []  # their state_dicts, on the CPU

    def due(self, epoch: int) -> bool:
        """Whether `epoch` (1-based) ends an lr cycle, so its weights are a snapshot."""
        return epoch % self.cycle == 0

    def take(self, model: nn.Module, epoch: int) -> None:
        """Keep a copy of the model's weights (and buffers) as the next snapshot.

        Args:
            model: the model being trained.
            epoch: the epoch just finished.
        """
        self.epochs.append(epoch)
        self.weights.append({k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})

    def ensemble(self, model: nn.Module) -> Ensemble:
        """The snapshots so far as one model: the mean of their softmax probabilities.

        Args:
            model: the model being trained; copied for each member (a copy draws no random numbers, so
                training goes on exactly as it would without the ensemble).

        Returns:
            The Ensemble, on the model's device, in eval mode.
        """
        members = []
        for weights in self.weights:
            member = copy.deepcopy(model)
            member.load_state_dict(weights)
            members.append(member)
        return Ensemble(members).eval()

    def write(self, out: Path, k: int, cfg: RunConfig, history: list[dict[str, Any]], state: dict) -> Path:
        """Write snapshot k as a model file, described by the history up to its epoch.

        Args:
            out: the run's out_dir.
            k: the snapshot's number, 1..len(self).
            cfg: the run's config.
            history: the run's metrics, at least up to the snapshot's epoch.
            state: the run's other facts (normalisation, input size, data), as model.pt has them.

        Returns:
            The file written (`snapshot_path(out, k)`).
        """
        epoch = self.epochs[k - 1]
        meta = model_meta(cfg, history[:epoch], state)
        path = snapshot_path(out, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = {"index": k, "of": self.n, "epoch": epoch}
        atomic_save({"state_dict": self.weights[k - 1], **meta, "snapshot": snapshot}, path)
        return path

    def __len__(self) -> int:
        return len(self.weights)

    def state_dict(self) -> dict[str, Any]:
        """What checkpoint.pt keeps: `{"epochs": [...], "weights": [state_dict, ...]}`."""
        return {"epochs": list(self.epochs), "weights": list(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` gave (weights back on the CPU).

        Args:
            state: a checkpoint's `snapshots`.
        """
        self.epochs = [int(e) for e in state["epochs"]]
        self.weights = [{k: v.cpu() for k, v in w.items()} for w in state["weights"]]
