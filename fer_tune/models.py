"""Model families for FER2013: factories registered by name, each built from a typed, self-validating config.

`build_model({"arch": "resnet"})` builds the default ResNet. Every family takes (B, 1, S, S) float images for
any S in 32..64 and returns (B, 7) logits. `model_config(mapping)` turns a (sampled) mapping into the family's
config dataclass with defaults filled in, and raises `ConfigError("model.<key>: ...")` on the first bad key
before anything trains. `model_stats(cfg)` counts parameters and multiply-adds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import numbers
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fer_tune.errors import ConfigError, check

NUM_CLASSES = 7
INPUT_SIZES = (32, 64)  # smallest and largest supported image side, px
MAX_WIDTH = 4096  # a wider conv layer is a typo, not a design
LSTM_COLUMNS = (
    4  # cnn_lstm: feature-map columns kept per row (adaptive average pool), so any S gives one shape
)
FF_MULT = 2  # attention: feed-forward width per token width (small data: 2 rather than ViT's 4)

_REGISTRY: dict[str, tuple[type[ModelConfig], Callable[[Any], nn.Module]]] = {}


# ---------------------------------------------------------------------------------------------- configs


def coerce(key: str, value: Any, kind: type) -> Any:
    """Coerce sampler output (numpy scalars, 64.0, tuples) to the declared type, or fail naming the key."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy/torch scalars and arrays -> Python values
    if kind is list:  # a list of ints (channel widths)
        if isinstance(value, (list, tuple)):
            try:
                return [coerce(key, v, int) for v in value]
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected a list of ints, got {value!r}")
    if kind is bool:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
    elif kind is int:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")


def _field(default: Any, kind: type, doc: str) -> Any:
    meta = {"type": kind, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


_ARCH = "family name: the registry key"
_DROPOUT = "dropout probability before the classifier (and after each hidden FC layer)"


@dataclass
class ModelConfig:
    """Keys every family has. A family subclass redeclares them with its defaults and adds its own keys."""

    arch: str = _field("", str, _ARCH)
    kernels: list[int] = _field([64], list, "channel widths, one per conv layer or stage")
    dropout: float = _field(0.0, float, _DROPOUT)

    DEPTH: ClassVar[tuple[int, int]] = (1, 6)  # allowed len(kernels)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f"model.{f.name}", getattr(self, f.name), f.metadata["type"]))
        arch = type(self).__dataclass_fields__["arch"].default
        check(self.arch == arch, "model.arch", f"{type(self).__name__} is family {arch!r}, got {self.arch!r}")
        lo, hi = self.DEPTH
        check(
            lo <= len(self.kernels) <= hi,
            "model.kernels",
            f"{arch} takes {lo} to {hi} widths, got {len(self.kernels)}: {self.kernels}",
        )
        check(
            all(1 <= w <= MAX_WIDTH for w in self.kernels),
            "model.kernels",
            f"widths must be in 1..{MAX_WIDTH}, got {self.kernels}",
        )
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        self._validate()

    def _validate(self) -> None:
        """Family-specific checks, after types were coerced."""

    def _in_range(self, key: str, lo: int, hi: int) -> None:
        value = getattr(self, key)
        check(lo <= value <= hi, f"model.{key}", f"must be in {lo}..{hi}, got {value}")


@dataclass
class CNNConfig(ModelConfig):
    """Plain CNN: [3x3 conv, batch-norm?, ReLU] per width, up to four 2x2 max-pools spread over them, then
    optionally a few residual blocks (the student's "3 conv layers with batch-norm and a residual block")."""

    arch: str = _field("cnn", str, _ARCH)
    kernels: list[int] = _field([64, 128, 256], list, "conv widths, one per conv layer (1 to 6 layers)")
    dropout: float = _field(0.3, float, _DROPOUT)
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


@dataclass
class ResNetConfig(ModelConfig):
    """ResNet for 48 px: 3x3 stem (stride 1), stages of basic blocks, stride 2 from the second stage on."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("resnet", str, _ARCH)
    kernels: list[int] = _field(
        [64, 128, 256, 512], list, "stage widths (1 to 5 stages); kernels[0] is the stem's"
    )
    dropout: float = _field(0.2, float, _DROPOUT)
    blocks_per_stage: int = _field(
        2, int, "basic residual blocks per stage, 1..4 (2 with 4 stages: ResNet-18)"
    )

    def _validate(self) -> None:
        self._in_range("blocks_per_stage", 1, 4)


@dataclass
class CNNLSTMConfig(ModelConfig):
    """Conv feature extractor whose feature-map rows, top to bottom, are the steps of an LSTM."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("cnn_lstm", str, _ARCH)
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


@dataclass
class AttentionConfig(ModelConfig):
    """Conv stem, then pre-norm transformer-encoder blocks over feature-map positions (learned positions)."""

    DEPTH: ClassVar[tuple[int, int]] = (2, 5)  # one stage would leave 48x48 = 2304 tokens

    arch: str = _field("attention", str, _ARCH)
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
        check(self.pool in ("mean", "cls"), "model.pool", f"must be 'mean' or 'cls', got {self.pool!r}")


@dataclass
class VGGConfig(ModelConfig):
    """VGG of Khaireddin & Chen 2021: stages of [3x3 conv, BN, ReLU] x n + 2x2 max-pool, FC head."""

    DEPTH: ClassVar[tuple[int, int]] = (1, 5)

    arch: str = _field("vgg", str, _ARCH)
    kernels: list[int] = _field([64, 128, 256, 512], list, "stage widths (1 to 5 stages)")
    dropout: float = _field(0.2, float, _DROPOUT)
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


def register_model(config_cls: type[ModelConfig]) -> Callable[[Callable], Callable]:
    """Decorator: register `factory(cfg) -> nn.Module` as the family named by `config_cls.arch`."""
    arch = config_cls.__dataclass_fields__["arch"].default

    def register(factory: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if arch in _REGISTRY:
            raise ValueError(f"model family {arch!r} is already registered")
        _REGISTRY[arch] = (config_cls, factory)
        return factory

    return register


def list_models() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_REGISTRY)


def model_config(mapping: Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """Validate a model mapping (e.g. a sampled config) into its family's dataclass, defaults filled in."""
    if isinstance(mapping, ModelConfig):
        mapping = dataclasses.asdict(mapping)
    check(isinstance(mapping, Mapping), "model", f"expected a mapping with an `arch` key, got {mapping!r}")
    known = ", ".join(list_models())
    check("arch" in mapping, "model.arch", f"missing; known: {known}")
    arch = mapping["arch"]
    check(
        isinstance(arch, str) and arch in _REGISTRY, "model.arch", f"unknown family {arch!r}; known: {known}"
    )
    cls = _REGISTRY[arch][0]
    keys = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        check(key in keys, f"model.{key}", f"unknown key for {arch}; known keys: {', '.join(keys)}")
    return cls(**mapping)


def build_model(cfg: Mapping[str, Any] | ModelConfig | str, **overrides: Any) -> nn.Module:
    """Build a freshly initialised model from a config (or a family name); `None` overrides are dropped."""
    cfg = model_config({"arch": cfg} if isinstance(cfg, str) else cfg)
    overrides = {k: v for k, v in overrides.items() if v is not None}  # None: keep the config's value
    if overrides:
        cfg = model_config({**dataclasses.asdict(cfg), **overrides})
    model = _REGISTRY[cfg.arch][1](cfg)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def model_stats(cfg: Mapping[str, Any] | ModelConfig, input_size: int = 48) -> dict[str, int]:
    """Parameters and multiply-adds of one forward pass of one `input_size` image (cached per config)."""
    cfg = model_config(cfg)
    lo, hi = INPUT_SIZES
    check(lo <= input_size <= hi, "input_size", f"must be in {lo}..{hi}, got {input_size}")
    key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(cfg).items())
    return dict(_stats(key, input_size))


@functools.lru_cache(maxsize=512)
def _stats(key: tuple, input_size: int) -> tuple[tuple[str, int], ...]:
    # On the meta device nothing is allocated or computed, yet every op is dispatched, so FlopCounterMode sees
    # nn.LSTM as its per-step matmuls (the fused CPU kernel would count 0) and, in train mode, the attention
    # matmuls (the eval fast path of TransformerEncoderLayer would hide them).
    with torch.device("meta"):
        model = build_model({k: list(v) if isinstance(v, tuple) else v for k, v in key}).train()
        x = torch.zeros(1, 1, input_size, input_size)
    params = sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model(x)
    return (("params", params), ("macs", counter.get_total_flops() // 2))


# ---------------------------------------------------------------------------------------------- layers


def _conv_bn_relu(cin: int, cout: int, batchnorm: bool = True) -> list[nn.Module]:
    bn = [nn.BatchNorm2d(cout)] if batchnorm else []
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm), *bn, nn.ReLU(inplace=True)]


def _spread_pools(n: int, pools: int = 4) -> set[int]:
    """Indices of the conv layers followed by a 2x2 max-pool: `pools` of them, spread over `n` layers."""
    pools = min(n, pools)  # four halvings take 48 px to 3 px
    return {i for i in range(n) if (i + 1) * pools // n > i * pools // n}


class PlainTrunk(nn.Sequential):
    """[3x3 conv, batch-norm?, ReLU] per width, a 2x2 max-pool after the layers in `pool_after`, then
    `res_blocks` basic blocks at the last width."""

    def __init__(self, widths: list[int], batchnorm: bool, pool_after: set[int], res_blocks: int = 0) -> None:
        layers, cin = [], 1
        for i, width in enumerate(widths):
            layers += _conv_bn_relu(cin, width, batchnorm)
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            cin = width
        layers += [BasicBlock(cin, cin, stride=1) for _ in range(res_blocks)]
        super().__init__(*layers)
        self.out_channels, self.n_pools = cin, len(pool_after)

    def out_size(self, size: int) -> int:
        for _ in range(self.n_pools):
            size //= 2
        return size


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN, identity (or 1x1 conv-BN) shortcut; the last BN starts at zero (block = identity)."""

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
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class ResNetTrunk(nn.Sequential):
    """3x3 stem at full resolution, then `blocks` basic blocks per width (stride 2 from the second stage)."""

    def __init__(self, widths: list[int], blocks: int) -> None:
        layers, cin = [*_conv_bn_relu(1, widths[0])], widths[0]
        for i, width in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if i > 0 and j == 0 else 1))
                cin = width
        super().__init__(*layers)
        self.out_channels, self.n_strides = cin, len(widths) - 1

    def out_size(self, size: int) -> int:
        for _ in range(self.n_strides):
            size = (size + 1) // 2
        return size


def _extractor(widths: list[int], residual: bool) -> PlainTrunk | ResNetTrunk:
    return ResNetTrunk(widths, blocks=1) if residual else PlainTrunk(widths, True, _spread_pools(len(widths)))


def _classifier(features: nn.Module, pool_size: int, hidden: list[int], dropout: float) -> nn.Sequential:
    """features -> adaptive average pool (any input size) -> [Linear, ReLU, Dropout] x hidden -> Linear."""
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


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class CNNLSTM(nn.Module):
    """Conv features (B, C, H, W) -> H steps of C x LSTM_COLUMNS features -> LSTM -> final states."""

    def __init__(self, cfg: CNNLSTMConfig) -> None:
        super().__init__()
        self.features = _extractor(cfg.kernels, cfg.residual)
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
        x = self.columns(self.features(x))  # (B, C, H, LSTM_COLUMNS)
        steps = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C * LSTM_COLUMNS): one step per row
        # The LSTM runs in float32: oneDNN (CPU) and cuDNN < 9.13 have no bf16 LSTM, and it is a small part.
        with _autocast_off(steps.device.type):
            _, (h, _) = self.lstm(steps.float())  # h: (layers * directions, B, hidden)
        return self.head(torch.cat(list(h[-self.directions :]), dim=1))  # last layer, every direction


class ConvAttention(nn.Module):
    """Conv stem -> one token per feature-map position + learned positions -> pre-norm encoder."""

    def __init__(self, cfg: AttentionConfig) -> None:
        super().__init__()
        self.features = _extractor(cfg.kernels, cfg.residual)
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
        """The position embedding and class token: `build_optimizer` exempts them from weight decay."""
        return {"pos"} | ({"cls"} if self.cls is not None else set())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


# ---------------------------------------------------------------------------------------------- families


@register_model(CNNConfig)
def cnn(cfg: CNNConfig) -> nn.Module:
    trunk = PlainTrunk(cfg.kernels, cfg.batchnorm, _spread_pools(len(cfg.kernels)), cfg.res_blocks)
    return _classifier(trunk, cfg.pool_size, [cfg.head_width] if cfg.head_width else [], cfg.dropout)


@register_model(ResNetConfig)
def resnet(cfg: ResNetConfig) -> nn.Module:
    return _classifier(ResNetTrunk(cfg.kernels, cfg.blocks_per_stage), 1, [], cfg.dropout)


@register_model(CNNLSTMConfig)
def cnn_lstm(cfg: CNNLSTMConfig) -> nn.Module:
    return CNNLSTM(cfg)


@register_model(AttentionConfig)
def attention(cfg: AttentionConfig) -> nn.Module:
    return ConvAttention(cfg)


@register_model(VGGConfig)
def vgg(cfg: VGGConfig) -> nn.Module:
    n = cfg.convs_per_stage
    widths = [w for w in cfg.kernels for _ in range(n)]
    trunk = PlainTrunk(widths, True, pool_after={(i + 1) * n - 1 for i in range(len(cfg.kernels))})
    hidden = [cfg.head_width] * cfg.head_layers if cfg.head_width else []
    return _classifier(trunk, cfg.pool_size, hidden, cfg.dropout)
