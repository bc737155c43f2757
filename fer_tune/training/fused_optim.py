"""The optimiser of fused trials (`fer_tune.training.fused`): torch's SGD, Adam and AdamW over stacked
parameters, each member with its own hyperparameters.

torch's optimisers take hyperparameters per parameter group, and a member's weights are a slice of one
stacked tensor, not a parameter of their own: so the updates are written out here, the same arithmetic as
torch's single-tensor paths, broadcast along the members' axis (`tests/test_fused.py` checks them against
torch's own optimisers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fer_tune.training.config import TrainConfig

if TYPE_CHECKING:  # fused.py imports this module: the model's type only for the checker
    from fer_tune.training.fused import FusedModel

ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # as `build_optimizer` leaves them


class FusedOptimizer:
    """torch's SGD, Adam or AdamW (as `build_optimizer` makes them) over a fused model's stacked parameters,
    with each member's learning rate, momentum (Adam: beta1), weight decay and gradient clipping.

    `lr` is a (K,) float64 tensor: set it before a step to follow per-member schedules. The per-member
    hyperparameters broadcast along the first axis; an update is a few elementwise ops per stacked tensor,
    with no host-device synchronisation.

    Args:
        model: the fused model.
        cfgs: the members' `train:` keys; `optimizer` and `nesterov` are shared.
    """

    def __init__(self, model: FusedModel, cfgs: Sequence[TrainConfig]) -> None:
        dev = next(model.parameters()).device
        self.kind, self.nesterov = cfgs[0].optimizer, cfgs[0].nesterov
        self.params = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
        self.no_decay = model.no_decay
        # Known on the host, so a step never asks the device whether to decay or clip.
        self.decays = any(c.weight_decay != 0 for c in cfgs)
        self.clips = any(c.grad_clip > 0 for c in cfgs)

        def per_member(key: str) -> torch.Tensor:
            return torch.tensor([float(getattr(c, key)) for c in cfgs], dtype=torch.float64, device=dev)

        self.lr, self.momentum = per_member("lr"), per_member("momentum")
        self.weight_decay, self.grad_clip = per_member("weight_decay"), per_member("grad_clip")
        self.state: dict[str, dict[str, torch.Tensor]] = {n: {} for n, _ in self.params}
        self.steps = 0

    def zero_grad(self) -> None:
        """Drop every gradient (`set_to_none`, as the trainer does)."""
        for _, p in self.params:
            p.grad = None

    def clip_grad_norm_(self) -> torch.Tensor:
        """`clip_grad_norm_` per member: member k's gradients scaled to an L2 norm of at most its grad_clip
        (members with grad_clip 0 are left alone).

        Returns:
            (K,) total gradient norms before clipping.
        """
        grads = [p.grad for _, p in self.params if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # (n, K)
        total = torch.linalg.vector_norm(norms, dim=0)  # (K,)
        if self.clips:
            coef = (self.grad_clip.to(total.dtype) / (total + 1e-6)).clamp(max=1.0)
            coef = torch.where(self.grad_clip > 0, coef, torch.ones_like(coef))
            for g in grads:
                g.mul_(coef.to(g.dtype).view(-1, *[1] * (g.dim() - 1)))
        return total

    def _hyper(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """This step's (K,) per-member factors in `dtype`, combined in float64 as torch does its floats."""
        t = self.steps
        h = {"neg_lr": -self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}
        if self.kind != "sgd":
            h["one_minus_beta1"] = 1 - self.momentum
            h["neg_step_size"] = -self.lr / (1 - self.momentum**t)
            h["decoupled"] = 1 - self.lr * self.weight_decay  # AdamW's shrink factor
        return {k: v.to(dtype) for k, v in h.items()}

    @torch.no_grad()
    def step(self) -> None:
        """One update of every member's parameters with its own hyperparameters."""
        self.steps += 1
        hyper: dict[torch.dtype, dict[str, torch.Tensor]] = {}
        for name, p in self.params:
            if p.grad is None:
                continue
            if p.dtype not in hyper:
                hyper[p.dtype] = self._hyper(p.dtype)
            shape = (-1, *[1] * (p.dim() - 1))
            h = {k: v.view(shape) for k, v in hyper[p.dtype].items()}
            decay = self.decays and name not in self.no_decay
            if self.kind == "sgd":
                self._sgd(p, p.grad, self.state[name], h, decay)
            else:
                self._adam(p, p.grad, self.state[name], h, decay)

    def _sgd(self, p: torch.Tensor, g: torch.Tensor, state: dict, h: dict, decay: bool) -> None:
        """torch.optim.SGD's single-tensor update (dampening 0); momentum 0 reduces to plain SGD."""
        if decay:
            g = g.addcmul(p, h["weight_decay"])
        if "momentum_buffer" not in state:
            buf = state["momentum_buffer"] = g.clone()
        else:
            buf = state["momentum_buffer"].mul_(h["momentum"]).add_(g)
        g = g.addcmul(buf, h["momentum"]) if self.nesterov else buf
        p.addcmul_(g, h["neg_lr"])

    def _adam(self, p: torch.Tensor, g: torch.Tensor, state: dict, h: dict, decay: bool) -> None:
        """torch.optim.Adam's (coupled L2) or AdamW's (decoupled) single-tensor update."""
        if decay and self.kind == "adamw":
            p.mul_(h["decoupled"])
        elif decay:
            g = g.addcmul(p, h["weight_decay"])
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        state["exp_avg"].lerp_(g, h["one_minus_beta1"])
        state["exp_avg_sq"].mul_(ADAM_BETA2).addcmul_(g, g, value=1 - ADAM_BETA2)
        bias2_sqrt = (1 - ADAM_BETA2**self.steps) ** 0.5  # beta2 is shared: a host float
        denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(ADAM_EPS)
        p.addcdiv_(state["exp_avg"] * h["neg_step_size"], denom)
