"""Fused trials: K members of one architecture trained as one model, each as if trained alone.

HFTA (Wang et al., MLSys 2021) fuses the models of several trials into one: where each member would run its
own small kernels, the fused model runs one kernel K times as wide. Here the members share the architecture
(every `model` key but `dropout`), the optimiser kind, the batch size and the precision, and differ in
anything else the step reads: learning rate, momentum, weight decay, gradient clipping, dropout, label
smoothing, loss, augmentation and seed.

How (grouped convolutions, not `torch.func.vmap`):
- Images of the K members are stacked along channels, (B, K*C, H, W). A member's conv is one group of a
  grouped conv (`groups *= K`), its batch-norm K*C channels of one `BatchNorm2d` (so the running statistics
  are per member for free, and update in place), ReLU and the pools act per channel. At the classifier's
  `Flatten` the layout turns member-major, (K, B, F), and a Linear is one `baddbmm` over the K members.
- `vmap(functional_call(...))` over `stack_module_state` computes the same (its conv batching rule is this
  grouped conv) and its stacked buffers take batch-norm's in-place updates, but it adds layout copies around
  every op: on 2 CPU cores it ran at 0.4-0.6x the grouped version with channels-last (one ad-hoc run,
  cpu_small's CNN, K = 4), and its dropout draws (`randomness="different"`) cannot equal a lone model's.
- Dropout: member k's mask is drawn by `F.dropout` on its own (B, F) slice from its own RNG stream
  (`MemberStreams`), the call a lone model makes, so fused and separate runs draw the same masks.
- The parameters are stacked, (K, *member shape), under the member's names: `member_state_dict(k)` loads into
  `build_model(cfg.model)`. `FusedOptimizer` is torch's SGD, Adam or AdamW over them with the per-member
  hyperparameters broadcast along the first axis; its result equals K torch optimisers within rounding.

The module types fused are those of the `cnn`, `vgg` and `resnet` families (convs, batch-norm, ReLU, pools,
the flatten-dropout-linear head, residual blocks); anything else is a ValueError naming the module.
`reference_step` is the step a lone member takes (as `train_one_epoch` does): what `fused_step` must equal.
Speed (`benchmarks/bench_fused.py`, docs/benchmarks.md): on 2 CPU cores fused ran at 0.55-0.97x of K separate
models (K = 2-8), slower as K grows; the GPU figure is pending.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.base import ConfigError
from fer_tune.models.layers import BasicBlock
from fer_tune.training.augment import augment_batch
from fer_tune.training.config import RunConfig
from fer_tune.training.device import Precision, channels_last
from fer_tune.training.fused_optim import FusedOptimizer
from fer_tune.training.losses import mixed_loss
from fer_tune.training.optim import no_weight_decay

# What members must share: the step runs them as one model, one batch, one optimiser kind, one precision.
SHARED_TRAIN_KEYS = ("optimizer", "nesterov", "batch_size", "precision", "class_weights", "sampler")


def check_fusable(cfgs: Sequence[RunConfig]) -> None:
    """Raise unless the run configs can train as one fused model.

    Args:
        cfgs: the members' run configs.

    Raises:
        ConfigError: no configs, a teacher, `train.ema`, `train.sam` or `train.snapshots`, or two members
            differ in a key they must share (the architecture, `SHARED_TRAIN_KEYS`, the input size,
            `augment.views`); the message names the dotted key.
    """
    if not cfgs:
        raise ConfigError("fused: no members")
    first = cfgs[0]
    arch = {k: v for k, v in dataclasses.asdict(first.model).items() if k != "dropout"}
    for i, cfg in enumerate(cfgs):
        if cfg.train.teacher is not None:
            raise ConfigError(f"train.teacher: member {i} distils; fused members cannot")
        for key in ("ema", "sam"):  # a second model to average, a second pass per step: not fused
            if getattr(cfg.train, key):
                raise ConfigError(f"train.{key}: member {i} uses it; fused members cannot")
        if cfg.train.snapshots:  # snapshot files and ensembles per member: not fused
            raise ConfigError(f"train.snapshots: member {i} keeps snapshots; fused members cannot")
        for key, value in dataclasses.asdict(cfg.model).items():
            if key != "dropout" and arch.get(key) != value:
                raise ConfigError(f"model.{key}: member {i} has {value!r}, member 0 {arch.get(key)!r}")
        for key in SHARED_TRAIN_KEYS:
            if getattr(cfg.train, key) != getattr(first.train, key):
                raise ConfigError(f"train.{key}: member {i} differs from member 0; fused members share it")
        if cfg.augment.input_size != first.augment.input_size:
            raise ConfigError(f"augment.crop: member {i} trains at another input size than member 0")
        if cfg.augment.views != first.augment.views:  # a step's images per member: one batch for all
            raise ConfigError(f"augment.views: member {i} differs from member 0; fused members share it")


class MemberStreams:
    """One RNG stream per member: `use(k)` swaps member k's state into torch's global generators.

    Inside `use(k)` everything drawn from the global RNG (augmentation, dropout, `torch.randperm`) is member
    k's, exactly as in a lone run seeded with `seeds[k]`; the caller's own stream is restored on exit.

    Args:
        seeds: one seed per member (`torch.manual_seed(seed)` of a lone run).
        device: the training device; a CUDA device's generator is swapped too.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._cpu = [torch.Generator().manual_seed(int(s)).get_state() for s in seeds]
        self._cuda: list[torch.Tensor] = []
        if self.device.type == "cuda":
            self._cuda = [torch.Generator(self.device).manual_seed(int(s)).get_state() for s in seeds]

    def __len__(self) -> int:
        return len(self._cpu)

    @contextlib.contextmanager
    def use(self, k: int) -> Iterator[None]:
        """Run the block on member k's stream.

        Args:
            k: the member's index.

        Yields:
            Nothing; torch's global RNG is member k's until the block ends.
        """
        saved = torch.get_rng_state()
        torch.set_rng_state(self._cpu[k])
        if self._cuda:
            saved_cuda = torch.cuda.get_rng_state(self.device)
            torch.cuda.set_rng_state(self._cuda[k], self.device)
        try:
            yield
        finally:
            self._cpu[k] = torch.get_rng_state()
            torch.set_rng_state(saved)
            if self._cuda:
                self._cuda[k] = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


def _stacked(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).contiguous())


class FusedConv2d(nn.Module):
    """K convs as one grouped conv over channel-stacked maps, (B, K*Cin, H, W) -> (B, K*Cout, H', W').

    Args:
        convs: the members' convs, all of one shape.
    """

    def __init__(self, convs: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        c = convs[0]
        if c.padding_mode != "zeros":
            raise ValueError(f"fused: Conv2d padding_mode {c.padding_mode!r} is not fused")
        self.k, self.stride, self.padding, self.dilation, self.groups = (
            len(convs),
            c.stride,
            c.padding,
            c.dilation,
            c.groups,
        )
        self.weight = _stacked([m.weight for m in convs])  # (K, Cout, Cin / groups, kh, kw)
        self.bias = _stacked([m.bias for m in convs]) if c.bias is not None else None  # (K, Cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The K convs on their channel groups."""
        bias = None if self.bias is None else self.bias.flatten()
        w = self.weight.flatten(0, 1)
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups * self.k)


class FusedBatchNorm2d(nn.Module):
    """K batch-norms as one over K*C channels; running statistics (K, C) update in place, per member.

    Args:
        norms: the members' batch-norms (affine, tracking running statistics, one momentum).
    """

    def __init__(self, norms: Sequence[nn.BatchNorm2d]) -> None:
        super().__init__()
        n = norms[0]
        if not (n.affine and n.track_running_stats and n.momentum is not None):
            raise ValueError("fused: BatchNorm2d without affine, running stats or a momentum is not fused")
        self.momentum, self.eps = n.momentum, n.eps
        self.weight = _stacked([m.weight for m in norms])  # (K, C)
        self.bias = _stacked([m.bias for m in norms])
        self.register_buffer("running_mean", torch.stack([m.running_mean for m in norms]).clone())
        self.register_buffer("running_var", torch.stack([m.running_var for m in norms]).clone())
        self.register_buffer(
            "num_batches_tracked", torch.stack([m.num_batches_tracked for m in norms]).clone()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each member's channels with its own batch statistics (training) or running ones."""
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            self.running_mean.view(-1),  # views: batch_norm's in-place update lands in the (K, C) buffers
            self.running_var.view(-1),
            self.weight.flatten(),
            self.bias.flatten(),
            self.training,
            self.momentum,
            self.eps,
        )


class FusedFlatten(nn.Module):
    """Channel-stacked maps (B, K*C, H, W) -> member-major features (K, B, C*H*W), each in `Flatten` order.

    Args:
        k: the number of members.
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten each member's block of channels."""
        return x.reshape(x.shape[0], self.k, -1).transpose(0, 1)


class FusedLinear(nn.Module):
    """K Linears as one batched matmul over member-major features, (K, B, I) -> (K, B, O).

    Args:
        linears: the members' Linears, all of one shape, with biases.
    """

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        super().__init__()
        if linears[0].bias is None:
            raise ValueError("fused: Linear without a bias is not fused")
        self.weight = _stacked([m.weight for m in linears])  # (K, O, I)
        self.bias = _stacked([m.bias for m in linears])  # (K, O)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's features through its own Linear."""
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class FusedDropout(nn.Module):
    """Per-member dropout on member-major features: member k's mask comes from `F.dropout` on its own slice,
    drawn from its own stream, as a lone model draws it.

    Args:
        ps: each member's dropout probability.
        streams: the members' RNG streams.
    """

    def __init__(self, ps: Sequence[float], streams: MemberStreams) -> None:
        super().__init__()
        self.ps, self.streams = [float(p) for p in ps], streams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, F) features with each member's dropout; the input itself in eval mode."""
        if not self.training or not any(self.ps):
            return x
        if x.dim() != 3:
            raise ValueError("fused: dropout before the classifier's flatten is not fused")
        out = []
        for k, p in enumerate(self.ps):
            with self.streams.use(k):
                out.append(F.dropout(x[k], p, True))  # p == 0 draws nothing, as in a lone model
        return torch.stack(out)


_STATELESS = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)  # per channel or per element


def _fuse(modules: Sequence[nn.Module], streams: MemberStreams) -> nn.Module:
    """The fused counterpart of one module of every member (the members' modules are not changed)."""
    m = modules[0]
    if any(type(x) is not type(m) for x in modules):
        raise ValueError(f"fused: members differ in structure at {type(m).__name__}")
    if type(m) is nn.Conv2d:
        return FusedConv2d(modules)
    if type(m) is nn.BatchNorm2d:
        return FusedBatchNorm2d(modules)
    if type(m) is nn.Linear:
        return FusedLinear(modules)
    if type(m) is nn.Dropout:
        return FusedDropout([x.p for x in modules], streams)
    if type(m) is nn.Flatten and (m.start_dim, m.end_dim) == (1, -1):
        return FusedFlatten(len(modules))
    if type(m) in _STATELESS:
        return copy.deepcopy(m)
    container = isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward
    if (container or type(m) is BasicBlock) and not m._parameters and not m._buffers:
        fused = copy.copy(m)  # keeps the container's attributes (a trunk's out_channels, ...)
        fused._modules = {name: _fuse([x._modules[name] for x in modules], streams) for name in m._modules}
        return fused
    raise ValueError(f"fused: {type(m).__name__} is not fused (cnn, vgg and resnet families are)")


class FusedModel(nn.Module):
    """K models of one architecture as one: (K, B, C, H, W) images -> (K, B, 7) logits.

    Args:
        models: the members, built from configs that `check_fusable` accepts; copied, not changed.
        streams: the members' RNG streams, which dropout draws from.
        memory_format: of the channel-stacked maps; channels-last is what the trainer uses.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        streams: MemberStreams,
        memory_format: torch.memory_format = torch.channels_last,
    ) -> None:
        super().__init__()
        if len(models) != len(streams):
            raise ValueError(f"fused: {len(models)} models but {len(streams)} streams")
        self.k, self.memory_format = len(models), memory_format
        self.net = _fuse(models, streams)
        self.no_decay = no_weight_decay(models[0])  # member parameter names without weight decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's logits for its own images.

        Args:
            x: (K, B, C, H, W) images, member k's at `x[k]`.

        Returns:
            (K, B, 7) logits.
        """
        k, b, c = x.shape[:3]
        x = x.transpose(0, 1).reshape(b, k * c, *x.shape[3:])  # (B, K*C, H, W): member-major channels
        return self.net(x.contiguous(memory_format=self.memory_format))

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's weights and buffers, under the names (and shapes) of a lone model's state dict.

        Args:
            k: the member's index.

        Returns:
            Copies of the tensors, for `load_state_dict` of the member's `build_model`.
        """
        return {name: t[k].detach().clone() for name, t in self.net.state_dict().items()}


def fused_step(
    model: FusedModel,
    opt: FusedOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfgs: Sequence[RunConfig],
    streams: MemberStreams,
    amp: Precision | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """One training step of every member on the same images, each augmented on its own stream.

    Args:
        model: the fused model, in training mode.
        opt: its optimiser.
        x: (B, 1, 48, 48) normalised images, the batch every member starts from.
        y: (B,) their class indices.
        cfgs: the members' run configs.
        streams: the members' RNG streams.
        amp: the precision of the forward pass; None for fp32.
        weight: (7,) per-class loss weights; None for unweighted.

    Returns:
        (K,) the members' losses, detached.
    """
    views, targets = [], []
    for k, cfg in enumerate(cfgs):
        with streams.use(k):
            xk, y_a, y_b, lam = augment_batch(x, y, cfg.augment)
        views.append(xk)
        targets.append((y_a, y_b, lam))
    with amp.autocast() if amp is not None else contextlib.nullcontext():
        out = model(torch.stack(views))  # (K, B, 7)
        losses = torch.stack(
            [mixed_loss(out[k], *targets[k], cfg.train, weight) for k, cfg in enumerate(cfgs)]
        )
    opt.zero_grad()
    losses.sum().backward()  # the members share no parameter: each gets exactly its own gradient
    if opt.clips:
        opt.clip_grad_norm_()
    opt.step()
    return losses.detach()


def reference_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: RunConfig,
    streams: MemberStreams,
    k: int,
    amp: Precision | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The step member k takes alone (`train_one_epoch`'s, fp32 or bf16): what `fused_step` must equal.

    Args:
        model: the member's own model, in training mode.
        opt: its own optimiser (`build_optimizer`).
        x: (B, 1, 48, 48) normalised images.
        y: (B,) their class indices.
        cfg: the member's run config.
        streams: the members' RNG streams (member k's is used).
        k: the member's index.
        amp: the precision of the forward pass; None for fp32.
        weight: (7,) per-class loss weights; None for unweighted.

    Returns:
        The member's loss, detached.
    """
    with streams.use(k):
        xk, y_a, y_b, lam = augment_batch(x, y, cfg.augment)
        with amp.autocast() if amp is not None else contextlib.nullcontext():
            loss = mixed_loss(model(channels_last(xk)), y_a, y_b, lam, cfg.train, weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()
    return loss.detach()
