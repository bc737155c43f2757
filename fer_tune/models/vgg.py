"""The VGG family (`arch: vgg`) of Khaireddin & Chen 2021: stages of 3x3 convs, then an FC head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fer_tune.base import config_field as _field
from fer_tune.models.layers import PlainTrunk, classifier
from fer_tune.models.registry import ARCH_DOC, DROPOUT_DOC, ModelConfig, register_model


@dataclass
class VGGConfig(ModelConfig):
    """VGG of Khaireddin & Chen 2021: stages of [3x3 conv, BN, ReLU] x n + 2x2 max-pool, FC head."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("vgg", str, ARCH_DOC)
    kernels: list[int] = _field([64, 128, 256, 512], list, "stage widths (1 to 5 stages)")
    dropout: float = _field(0.2, float, DROPOUT_DOC)
    convs_per_stage: int = _field(2, int, "conv layers per stage, 1..4")
    pool_size: int = _field(
        2, int, "side of the adaptive average pool before the head, 1..8 (paper: 2 at 40 px)"
    )
    head_width: int = _field(1024, int, "hidden FC width (paper: 4096, 30M params); 0: linear classifier")
    head_layers: int = _field(2, int, "hidden FC layers when head_width > 0, 1..3")

    def _validate(self) -> None:
        self._in_range("convs_per_stage", 1, 4)
        self._in_range("pool_size", 1, 8)
        self._in_range("head_width", 0, 8192)
        self._in_range("head_layers", 1, 3)


@register_model(VGGConfig)
def vgg(cfg: VGGConfig) -> nn.Module:
    """Build the `vgg` network (registered factory; `build_model` also initialises its convs).

    Args:
        cfg: the family's validated config.

    Returns:
        A model from (B, 1, S, S) images to (B, 7) logits.
    """
    n = cfg.convs_per_stage
    widths = [w for w in cfg.kernels for _ in range(n)]
    trunk = PlainTrunk(widths, True, pool_after={(i + 1) * n - 1 for i in range(len(cfg.kernels))})
    hidden = [cfg.head_width] * cfg.head_layers if cfg.head_width else []
    return classifier(trunk, cfg.pool_size, hidden, cfg.dropout)
