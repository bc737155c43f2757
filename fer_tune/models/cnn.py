"""The plain CNN family (`arch: cnn`): from a 2-layer CNN to 6 conv layers with residual blocks."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fer_tune.base import config_field as _field
from fer_tune.models.layers import PlainTrunk, classifier, spread_pools
from fer_tune.models.registry import ARCH_DOC, DROPOUT_DOC, ModelConfig, register_model


@dataclass
class CNNConfig(ModelConfig):
    """Plain CNN: [3x3 conv, batch-norm?, ReLU] per width, up to four 2x2 max-pools spread over them, then
    optionally a few residual blocks (the student's "3 conv layers with batch-norm and a residual block")."""

    arch: str = _field("cnn", str, ARCH_DOC)
    kernels: list[int] = _field([64, 128, 256], list, "conv widths, one per conv layer (1 to 6 layers)")
    dropout: float = _field(0.3, float, DROPOUT_DOC)
    batchnorm: bool = _field(True, bool, "batch-norm after each conv")
    pool_size: int = _field(3, int, "side of the adaptive average pool before the head, 1..8 (1: global)")
    head_width: int = _field(
        256, int, "hidden FC layer width; 0: none (linear classifier on pooled features)"
    )
    res_blocks: int = _field(0, int, "basic residual blocks at the last width after the conv layers, 0..4")

    def _validate(self) -> None:
        self._in_range("pool_size", 1, 8)
        self._in_range("head_width", 0, 8192)
        self._in_range("res_blocks", 0, 4)


@register_model(CNNConfig)
def cnn(cfg: CNNConfig) -> nn.Module:
    """Build the `cnn` network (registered factory; `build_model` also initialises its convs).

    Args:
        cfg: the family's validated config.

    Returns:
        A model from (B, 1, S, S) images to (B, 7) logits.
    """
    trunk = PlainTrunk(cfg.kernels, cfg.batchnorm, spread_pools(len(cfg.kernels)), cfg.res_blocks)
    return classifier(trunk, cfg.pool_size, [cfg.head_width] if cfg.head_width else [], cfg.dropout)
