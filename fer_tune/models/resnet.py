"""The ResNet family (`arch: resnet`): basic blocks after a full-resolution 3x3 stem (ResNet-18 default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from fer_tune.base import config_field as _field
from fer_tune.models.layers import ResNetTrunk, classifier
from fer_tune.models.registry import ARCH_DOC, DROPOUT_DOC, ModelConfig, register_model


@dataclass
class ResNetConfig(ModelConfig):
    """ResNet for 48 px: 3x3 stem (stride 1), stages of basic blocks, stride 2 from the second stage on."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("resnet", str, ARCH_DOC)
    kernels: list[int] = _field(
        [64, 128, 256, 512], list, "stage widths (1 to 5 stages); kernels[0] is the stem's"
    )
    dropout: float = _field(0.2, float, DROPOUT_DOC)
    blocks_per_stage: int = _field(
        2, int, "basic residual blocks per stage, 1..4 (2 with 4 stages: ResNet-18)"
    )

    def _validate(self) -> None:
        self._in_range("blocks_per_stage", 1, 4)


@register_model(ResNetConfig)
def resnet(cfg: ResNetConfig) -> nn.Module:
    """Build the `resnet` network (registered factory; `build_model` also initialises its convs).

    Args:
        cfg: the family's validated config.

    Returns:
        A model from (B, 1, S, S) images to (B, 7) logits.
    """
    return classifier(ResNetTrunk(cfg.kernels, cfg.blocks_per_stage), 1, [], cfg.dropout)
