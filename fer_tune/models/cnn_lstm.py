"""The CNN+LSTM family (`arch: cnn_lstm`): feature-map rows, top to bottom, are an LSTM's steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from fer_tune.base import config_field as _field
from fer_tune.models.layers import autocast_off, extractor
from fer_tune.models.registry import ARCH_DOC, NUM_CLASSES, ModelConfig, register_model

LSTM_COLUMNS = 4  # feature-map columns kept per row (adaptive average pool), so any S gives one shape


@dataclass
class CNNLSTMConfig(ModelConfig):
    """Conv feature extractor whose feature-map rows, top to bottom, are the steps of an LSTM."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("cnn_lstm", str, ARCH_DOC)
    kernels: list[int] = _field(
        [64, 128, 256], list, "extractor widths: conv layers, or residual stages (1 to 5)"
    )
    dropout: float = _field(0.3, float, "dropout before the classifier and between LSTM layers")
    residual: bool = _field(
        True, bool, "residual extractor (stem + one basic block per width) or plain conv-BN"
    )
    lstm_hidden: int = _field(128, int, "LSTM hidden size per direction, 1..2048")
    lstm_layers: int = _field(1, int, "stacked LSTM layers, 1..4")
    bidirectional: bool = _field(True, bool, "read the rows both ways")

    def _validate(self) -> None:
        self._in_range("lstm_hidden", 1, 2048)
        self._in_range("lstm_layers", 1, 4)


class CNNLSTM(nn.Module):
    """Conv features (B, C, H, W) -> H steps of C x LSTM_COLUMNS features -> LSTM -> final states.

    Args:
        cfg: the family's validated config.
    """

    def __init__(self, cfg: CNNLSTMConfig) -> None:
        super().__init__()
        self.features = extractor(cfg.kernels, cfg.residual)
        self.columns = nn.AdaptiveAvgPool2d((None, LSTM_COLUMNS))  # keep the rows, fix the step size
        self.directions = 2 if cfg.bidirectional else 1
        self.lstm = nn.LSTM(
            self.features.out_channels * LSTM_COLUMNS,
            cfg.lstm_hidden,
            cfg.lstm_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
            bidirectional=cfg.bidirectional,
        )
        self.head = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(cfg.lstm_hidden * self.directions, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images (the LSTM runs in float32 under autocast).

        Args:
            x: (B, 1, S, S) float images, S in 32..64, standardised as the model was trained.

        Returns:
            (B, 7) logits, in `EMOTIONS` order.
        """
        x = self.columns(self.features(x))  # (B, C, H, LSTM_COLUMNS)
        steps = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C * LSTM_COLUMNS): one step per row
        # The LSTM runs in float32: oneDNN (CPU) and cuDNN < 9.13 have no bf16 LSTM, and it is a small part.
        with autocast_off(steps.device.type):
            _, (h, _) = self.lstm(steps.float())  # h: (layers * directions, B, hidden)
        return self.head(torch.cat(list(h[-self.directions :]), dim=1))  # last layer, every direction


@register_model(CNNLSTMConfig)
def cnn_lstm(cfg: CNNLSTMConfig) -> nn.Module:
    """Build the `cnn_lstm` network (registered factory; `build_model` also initialises its convs).

    Args:
        cfg: the family's validated config.

    Returns:
        A model from (B, 1, S, S) images to (B, 7) logits.
    """
    return CNNLSTM(cfg)
