"""Knowledge distillation: train one model on a trained teacher's softened probabilities (`train.teacher`).

The teacher is usually a retrain folder's seed ensemble: the most accurate model a search gives, but N times
the cost of one at prediction. A student of the same (or a smaller) family trained on its probabilities
keeps much of the ensemble's gain at the cost of one model (Hinton, Vinyals and Dean 2015, "Distilling the
Knowledge in a Neural Network"). The teacher sees the student's own augmented batch each step, so the soft
targets follow the crops, rotations, erasing and mixes the student is trained on. An ensemble's output is the
log of its members' mean probability (`fer_tune.training.ensemble`): the temperature softens that mean, not
each member before averaging.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.base import ConfigError
from fer_tune.training.ensemble import load, model_files, restandardise


def teacher_path(path: str | Path) -> Path:
    """`path`; in a Ray trial, which runs in its own folder, a relative path is taken from the driver's.

    Args:
        path: `train.teacher` (`~` is expanded).

    Returns:
        The path to read the teacher from.
    """
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists() and (driver := os.environ.get("TUNE_ORIG_WORKING_DIR")):
        return Path(driver) / p
    return p


def check_teacher(path: str | Path, out: str | Path) -> None:
    """Before any data is read: DataError if `path` holds no model, ConfigError if it lies in the output
    folder `out` (training there would overwrite the teacher with its student).

    Args:
        path: `train.teacher`: a model.pt, a run folder or a retrain folder.
        out: the student's output folder.

    Raises:
        DataError: `path` holds no model.
        ConfigError: a teacher's model file lies in `out`.
    """
    folder = Path(out).resolve()
    if any(folder in f.resolve().parents for f in model_files(teacher_path(path))):
        raise ConfigError(
            f"train.teacher: {path} lies in the output folder {out}: training would overwrite it"
        )


class Teacher(nn.Module):
    """A frozen trained model fed the student's normalised batches, re-standardised to its own mean/std.

    Args:
        model: the teacher (a model or a seed ensemble), frozen here.
        meta: its meta (`mean`, `std`, `arch`, `members`, ...), as `ensemble.load` returns it.
        path: where it was read from, recorded in the student's model.pt.
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any], path: str) -> None:
        super().__init__()
        self.model, self.meta, self.path = model, meta, path
        self.scale, self.shift = 1.0, 0.0
        self.eval().requires_grad_(False)

    def standardise_for(self, mean: float, std: float) -> None:
        """Take batches standardised by a student's mean/std (0..255 pixels) to the teacher's own.

        Args:
            mean: the student's training pixel mean (0..255).
            std: the student's training pixel standard deviation (0..255).
        """
        # The student's x = (p - mean) / std; the teacher wants (p - mean_t) / std_t of the same pixels p.
        # Statistics of the same split are the same floats: exactly 1 and 0, and forward skips the step.
        self.scale, self.shift = restandardise(mean, std, self.meta["mean"], self.meta["std"])

    def describe(self) -> dict[str, Any]:
        """What a student's model.pt records of its teacher.

        Returns:
            `{"path", "arch", "members"}`.
        """
        return {"path": self.path, "arch": self.meta["arch"], "members": self.meta["members"]}

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of a student's batch, without gradients.

        Args:
            x: (B, 1, S, S) images standardised as the student's (see `standardise_for`).

        Returns:
            (B, 7) logits (log-probabilities for an ensemble).
        """
        if self.scale != 1.0 or self.shift != 0.0:
            x = x * self.scale + self.shift
        return self.model(x)


def load_teacher(
    path: str | Path, input_size: int, train_usages: tuple[str, ...], device: torch.device
) -> Teacher:
    """The model (or seed ensemble) at `path` as a `Teacher` of a student of `input_size` px trained on
    `train_usages`. DataError naming the file if it cannot be read; ConfigError on `train.teacher` if its
    input size differs, or if it was trained on PublicTest and the student's PublicTest score is to be held
    out (the teacher would pass PublicTest's labels on to the student).

    Args:
        path: `train.teacher`: a model.pt, a run folder or a retrain folder.
        input_size: the student's image side, px.
        train_usages: the Usage splits the student trains on.
        device: where the teacher runs.

    Returns:
        The frozen teacher.

    Raises:
        DataError: the teacher cannot be read.
        ConfigError: its input size differs, or it saw PublicTest and the student holds PublicTest out.
    """
    model, meta = load(teacher_path(path), device=device)
    if meta["input_size"] != input_size:
        raise ConfigError(
            f"train.teacher: {path} takes {meta['input_size']} px faces, this run {input_size} px "
            "(augment.crop): they must match"
        )
    seen = (meta.get("data") or {}).get("train_usages") or []
    if "PublicTest" in seen and "PublicTest" not in train_usages:
        raise ConfigError(
            f"train.teacher: {path} was trained on PublicTest, so a student's PublicTest score would not be "
            "held out: distil from a teacher trained on Training only"
        )
    return Teacher(model, meta, str(path))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of their softmaxes at `temperature`, times its square (so that the gradient's
    scale does not depend on it), averaged over the batch.

    Args:
        student: (B, 7) student logits.
        teacher: (B, 7) teacher logits (or log-probabilities).
        temperature: the softmaxes' temperature; above 1 softens them.

    Returns:
        The loss, a scalar float32 tensor.
    """
    t = temperature
    s_logp = F.log_softmax(student.float() / t, dim=1)
    t_logp = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * (t * t)
