"""The CNN+attention family (`arch: attention`): a conv stem, then encoder blocks over positions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fer_tune.base import check, shown
from fer_tune.base import config_field as _field
from fer_tune.models.layers import extractor
from fer_tune.models.registry import ARCH_DOC, NUM_CLASSES, ModelConfig, register_model

FF_MULT = 2  # feed-forward width per token width (small data: 2 rather than ViT's 4)


@dataclass
class AttentionConfig(ModelConfig):
    """Conv stem, then pre-norm transformer-encoder blocks over feature-map positions (learned positions)."""

    DEPTH: ClassVar[tuple[int, int]] = (2, 5)  # one stage would leave 48x48 = 2304 tokens

    arch: str = _field("attention", str, ARCH_DOC)
    kernels: list[int] = _field([64, 128, 256], list, "stem widths (2 to 5); the last is the token width")
    dropout: float = _field(0.1, float, "dropout in the encoder blocks and before the classifier")
    residual: bool = _field(True, bool, "residual stem (stem + one basic block per width) or plain conv-BN")
    heads: int = _field(4, int, "attention heads; must divide the token width kernels[-1]")
    attn_layers: int = _field(2, int, "transformer-encoder blocks, 1..12")
    pool: str = _field("mean", str, "token pooling: mean | cls (a learned class token)")

    def _validate(self) -> None:
        width = self.kernels[-1]
        check(
            self.heads >= 1 and width % self.heads == 0,
            "model.heads",
            f"must be >= 1 and divide the token width kernels[-1]={width}, got {self.heads}",
        )
        self._in_range("attn_layers", 1, 12)
        check(self.pool in ("mean", "cls"), "model.pool", f"must be 'mean' or 'cls', got {shown(self.pool)}")


class ConvAttention(nn.Module):
    """Conv stem -> one token per feature-map position + learned positions -> pre-norm encoder.

    Args:
        cfg: the family's validated config.
    """

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.features = extractor(cfg.kernels, cfg.residual)
        width, grid = self.features.out_channels, self.features.out_size(48)
        # Positions are learned on the 48 px grid and resized (bicubic) for other input sizes.
        self.pos = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, width, grid, grid), std=0.02))
        self.cls = (
            nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1, width), std=0.02))
            if cfg.pool == "cls"
            else None
        )
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                cfg.heads,
                FF_MULT * width,
                cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(cfg.attn_layers)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(width, NUM_CLASSES))

    def no_weight_decay(self) -> set[str]:
        """The position embedding and class token: `build_optimizer` exempts them from weight decay.

        Returns:
            Parameter names relative to this module (`pos`, and `cls` with `pool: cls`).
        """
        return {"pos"} | ({"cls"} if self.cls is not None else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images.

        Args:
            x: (B, 1, S, S) float images, S in 32..64, standardised as the model was trained.

        Returns:
            (B, 7) logits, in `EMOTIONS` order.
        """
        x = self.features(x)  # (B, C, H, W)
        pos = self.pos
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos, size=x.shape[-2:], mode="bicubic", align_corners=False)
        x = (x + pos).flatten(2).transpose(1, 2)  # (B, H*W, C)
        if self.cls is not None:
            # x.shape[0], not len(x): len() is a Python int, which fixes an exported graph's batch size.
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.cls is not None else x.mean(dim=1))


@register_model(AttentionConfig)
def attention(cfg: AttentionConfig) -> nn.Module:
    """Build the `attention` network (registered factory; `build_model` also initialises its convs).

    Args:
        cfg: the family's validated config.

    Returns:
        A model from (B, 1, S, S) images to (B, 7) logits.
    """
    return ConvAttention(cfg)
