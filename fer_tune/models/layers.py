"""Building blocks the families share: conv-BN-ReLU, plain and residual trunks, the pooled classifier head."""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.models.registry import NUM_CLASSES


def conv_bn_relu(cin: int, cout: int, batchnorm: bool = True) -> list[nn.Module]:
    """A 3x3 conv (padding 1), an optional batch-norm and a ReLU.

    Args:
        cin: input channels.
        cout: output channels.
        batchnorm: add a batch-norm (and drop the conv's bias).

    Returns:
        The layers, in order, to splice into an `nn.Sequential`.
    """
    bn = [nn.BatchNorm2d(cout)] if batchnorm else []
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm), *bn, nn.ReLU(inplace=True)]


def spread_pools(n: int, pools: int = 4) -> set[int]:
    """Indices of the conv layers followed by a 2x2 max-pool: `pools` of them, spread over `n` layers.

    Args:
        n: the number of conv layers.
        pools: how many max-pools at most (fewer when `n` is smaller).

    Returns:
        The 0-based indices of the layers to pool after; the last layer is always one.
    """
    pools = min(n, pools)  # four halvings take 48 px to 3 px
    return {i for i in range(n) if (i + 1) * pools // n > i * pools // n}


class PlainTrunk(nn.Sequential):
    """[3x3 conv, batch-norm?, ReLU] per width, a 2x2 max-pool after the layers in `pool_after`, then
    `res_blocks` basic blocks at the last width.

    Args:
        widths: output channels of each conv layer, in order (the input has 1 channel).
        batchnorm: a batch-norm after each conv.
        pool_after: 0-based indices of the conv layers followed by a 2x2 max-pool.
        res_blocks: basic residual blocks at the last width, after the conv layers.
    """

    def __init__(self, widths: list[int], batchnorm: bool, pool_after: set[int], res_blocks: int = 0) -> None:
        layers, cin = [], 1
        for i, width in enumerate(widths):
            layers += conv_bn_relu(cin, width, batchnorm)
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            cin = width
        layers += [BasicBlock(cin, cin, stride=1) for _ in range(res_blocks)]
        super().__init__(*layers)
        self.out_channels, self.n_pools = cin, len(pool_after)

    def out_size(self, size: int) -> int:
        """The side of the feature map for an input of side `size`.

        Args:
            size: the input image side, px.

        Returns:
            The feature-map side after every max-pool (each floors).
        """
        for _ in range(self.n_pools):
            size //= 2
        return size


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, identity (or 1x1 conv-BN) shortcut; the last BN starts at zero (block = identity).

    Args:
        cin: input channels.
        cout: output channels; the shortcut is a 1x1 conv-BN when it differs from `cin`.
        stride: the first conv's (and the shortcut's) stride; 2 halves the feature map.
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # zero-init residual (Goyal et al. 2017): trains deeper nets faster
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block on a batch of feature maps.

        Args:
            x: (B, cin, H, W) features.

        Returns:
            (B, cout, H / stride, W / stride) features (sides rounded up).
        """
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class ResNetTrunk(nn.Sequential):
    """3x3 stem at full resolution, then `blocks` basic blocks per width (stride 2 from the second stage).

    Args:
        widths: channels of each stage; `widths[0]` is also the stem's.
        blocks: basic blocks per stage.
    """

    def __init__(self, widths: list[int], blocks: int) -> None:
        layers, cin = [*conv_bn_relu(1, widths[0])], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width
        super().__init__(*layers)
        self.out_channels, self.n_strides = cin, len(widths) - 1

    def out_size(self, size: int) -> int:
        """The side of the feature map for an input of side `size`.

        Args:
            size: the input image side, px.

        Returns:
            The feature-map side after every stride-2 stage (each rounds up).
        """
        for _ in range(self.n_strides):
            size = (size + 1) // 2
        return size


def extractor(widths: list[int], residual: bool) -> PlainTrunk | ResNetTrunk:
    """The conv feature extractor of the cnn_lstm and attention families.

    Args:
        widths: channels per conv layer (plain) or per stage (residual).
        residual: a ResNet trunk with one block per stage, else plain conv-BN with spread max-pools.

    Returns:
        The trunk; its `out_channels` and `out_size` describe its output.
    """
    return ResNetTrunk(widths, blocks=1) if residual else PlainTrunk(widths, True, spread_pools(len(widths)))


def classifier(features: nn.Module, pool_size: int, hidden: list[int], dropout: float) -> nn.Sequential:
    """features -> adaptive average pool (any input size) -> [Linear, ReLU, Dropout] x hidden -> Linear.

    Args:
        features: the trunk; it must have an `out_channels` attribute.
        pool_size: side of the adaptive average pool (1: global).
        hidden: widths of the hidden FC layers; empty for a linear classifier.
        dropout: the probability of each dropout (one before the last Linear when `hidden` is empty).

    Returns:
        `Sequential(features, pool, head)` from images to (B, 7) logits.
    """
    head, n_in = [nn.Flatten()], features.out_channels * pool_size**2
    for width in hidden:
        head += [nn.Linear(n_in, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        n_in = width
    if not hidden:
        head.append(nn.Dropout(dropout))
    head.append(nn.Linear(n_in, NUM_CLASSES))
    parts = [
        ("features", features),
        ("pool", nn.AdaptiveAvgPool2d(pool_size)),
        ("head", nn.Sequential(*head)),
    ]
    return nn.Sequential(OrderedDict(parts))


def autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context that runs its code in full precision when autocast is on, else does nothing.

    Args:
        device_type: `cuda`, `cpu`, ... (a tensor's `device.type`).

    Returns:
        The context manager to enter.
    """
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
