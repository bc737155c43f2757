"""Knowledge distillation: train one model on a trained teacher's softened probabilities (`train.teacher`).

The teacher is usually a retrain folder's seed ensemble: the most accurate model a search gives, but N times
the cost of one at prediction. A student of the same (or a smaller) family trained on its probabilities
keeps much of the ensemble's gain at the cost of one model (Hinton, Vinyals and Dean 2015, "Distilling the
Knowledge in a Neural Network"). The teacher sees the student's own augmented batch each step, so the soft
targets follow the crops, rotations, erasing and mixes the student is trained on.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.errors import ConfigError


class Teacher(nn.Module):
    """A frozen trained model fed the student's normalised batches, re-standardised to its own mean/std."""

    def __init__(self, model: nn.Module, scale: float, shift: float) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.scale, self.shift = scale, shift

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0 or self.shift != 0.0:
            x = x * self.scale + self.shift
        return self.model(x)


def load_teacher(path: str | Path, mean: float, std: float, input_size: int, device: torch.device) -> Teacher:
    """The model (or seed ensemble) at `path` as a `Teacher` of a student normalised by mean/std (0..255).

    A missing or unreadable model is a DataError naming the file; an input size other than the student's
    a ConfigError on `train.teacher`.
    """
    from fer_tune.ensemble import load

    model, meta = load(path, device=device)
    if meta["input_size"] != input_size:
        raise ConfigError(
            f"train.teacher: {path} takes {meta['input_size']} px faces, this run {input_size} px "
            "(augment.crop): they must match"
        )
    # The student's x = (p - mean) / std; the teacher wants (p - mean_t) / std_t of the same pixels p.
    scale = std / meta["std"]
    shift = (mean - meta["mean"]) / meta["std"]
    if math.isclose(scale, 1.0, abs_tol=1e-6) and abs(shift) < 1e-6:  # the same training split
        scale, shift = 1.0, 0.0
    return Teacher(model, scale, shift)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of their softmaxes at `temperature`, times its square (so that the gradient's
    scale does not depend on it), averaged over the batch."""
    t = temperature
    s_logp = F.log_softmax(student.float() / t, dim=1)
    t_logp = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * (t * t)
