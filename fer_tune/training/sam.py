"""Sharpness-aware minimisation (Foret et al., ICLR 2021): the step's gradient is taken at the worst nearby
weights, w + rho * g / ||g||, and applied at w (`train.sam` is rho).

`sam_second_pass` runs between the first backward and the optimiser step, so the base optimiser, gradient
clipping and the fp16 gradient scaler act on the second gradient exactly as they act on a plain one. It
costs a second forward and backward per step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

EPS = 1e-12  # keeps rho / ||g|| finite for an all-zero gradient (whose perturbation is then zero)


def sam_second_pass(
    model: nn.Module,
    rho: float,
    loss_fn: Callable[[], torch.Tensor],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Replace the gradients in `model` by those at w + rho * g / ||g|| (g: the gradients there now).

    The weights and buffers (batch-norm running statistics) are restored afterwards: the perturbed pass
    changes the gradients only. The direction g / ||g|| does not depend on the gradient scale, so fp16's
    scaled gradients need no unscaling here; when the first gradient is not finite (an fp16 overflow) there is
    no perturbation and the second gradient is made NaN, so the scaler skips the step as it would have.

    Args:
        model: the model, after the first backward; its `.grad`s are replaced.
        rho: the radius of the neighbourhood (`train.sam`), > 0.
        loss_fn: runs the forward pass on the step's batch (under the step's autocast) and returns the loss:
            the same images and (mixup) targets as the first pass; dropout draws new masks.
        scaler: the fp16 gradient scaler the first backward was scaled by; None otherwise.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return
    with torch.no_grad():
        norm = nn.utils.get_total_norm([p.grad for p in params])  # global L2 norm, no host sync
        finite = torch.isfinite(norm)
        step = torch.where(finite, rho / (norm + EPS), 0.0)  # rho / ||g||; 0: leave the weights be
        poison = torch.where(finite, 1.0, float("nan"))  # x * 1.0 is x, bit for bit
        saved_w = [p.detach().clone() for p in params]
        saved_b = [b.detach().clone() for b in model.buffers()]
        for p in params:
            p.add_(p.grad * step.to(p.grad.dtype))
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    (loss if scaler is None else scaler.scale(loss)).backward()
    with torch.no_grad():
        for p, w in zip(params, saved_w, strict=True):
            p.copy_(w)
            if p.grad is not None:
                p.grad.mul_(poison)
        for b, saved in zip(model.buffers(), saved_b, strict=True):
            b.copy_(saved)
