"""The model registry: family names -> (config dataclass, factory), and what is built from it.

`build_model({"arch": "resnet"})` builds the default ResNet. Every family takes (B, 1, S, S) float images for
any S in 32..64 and returns (B, 7) logits. `model_config(mapping)` turns a (sampled) mapping into the family's
config dataclass with defaults filled in, and raises `ConfigError("model.<key>: ...")` on the first bad key
before anything trains. `model_stats(cfg)` counts parameters and multiply-adds. A family registers itself
with `@register_model(ItsConfig)` in its own module (`fer_tune/models/resnet.py`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fer_tune.base import check, coerce, shown
from fer_tune.base import config_field as _field

NUM_CLASSES = 7
INPUT_SIZES = (32, 64)  # smallest and largest supported image side, px
MAX_WIDTH = 4096  # a wider conv layer is a typo, not a design
ARCH_DOC = "family name: the registry key"
DROPOUT_DOC = "dropout probability before the classifier (and after each hidden FC layer)"

_REGISTRY: dict[str, tuple[type[ModelConfig], Callable[[Any], nn.Module]]] = {}


@dataclass
class ModelConfig:
    """Keys every family has. A family subclass redeclares them with its defaults and adds its own keys."""

    arch: str = _field("", str, ARCH_DOC)
    kernels: list[int] = _field([64], list, "channel widths, one per conv layer or stage")
    dropout: float = _field(0.0, float, DROPOUT_DOC)

    DEPTH: ClassVar[tuple[int, int]] = (1, 6)  # allowed len(kernels)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f"model.{f.name}", getattr(self, f.name), f.metadata["type"]))
        arch = type(self).__dataclass_fields__["arch"].default
        check(
            self.arch == arch,
            "model.arch",
            f"{type(self).__name__} is family {arch!r}, got {shown(self.arch)}",
        )
        lo, hi = self.DEPTH
        check(
            lo <= len(self.kernels) <= hi,
            "model.kernels",
            f"{arch} takes {lo} to {hi} widths, got {len(self.kernels)}: {shown(self.kernels)}",
        )
        check(
            all(1 <= w <= MAX_WIDTH for w in self.kernels),
            "model.kernels",
            f"widths must be in 1..{MAX_WIDTH}, got {shown(self.kernels)}",
        )
        check(0 <= self.dropout < 1, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        self._validate()

    def _validate(self) -> None:
        """Family-specific checks, after types were coerced."""

    def _in_range(self, key: str, lo: int, hi: int) -> None:
        value = getattr(self, key)
        check(lo <= value <= hi, f"model.{key}", f"must be in {lo}..{hi}, got {value}")


def register_model(config_cls: type[ModelConfig]) -> Callable[[Callable], Callable]:
    """Decorator: register `factory(cfg) -> nn.Module` as the family named by `config_cls.arch`.

    Args:
        config_cls: the family's config dataclass; the default of its `arch` field is the family name.

    Returns:
        The decorator, which registers the factory and returns it unchanged (a second family of the same
        name raises ValueError).
    """
    arch = config_cls.__dataclass_fields__["arch"].default

    def register(factory: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if arch in _REGISTRY:
            raise ValueError(f"model family {arch!r} is already registered")
        _REGISTRY[arch] = (config_cls, factory)
        return factory

    return register


def list_models() -> list[str]:
    """Registered family names, sorted.

    Returns:
        The names `model.arch` accepts.
    """
    return sorted(_REGISTRY)


def model_config(mapping: Mapping[str, Any] | ModelConfig) -> ModelConfig:
    """Validate a model mapping (e.g. a sampled config) into its family's dataclass, defaults filled in.

    Args:
        mapping: the `model:` keys, with `arch` naming a registered family; a config is validated again.

    Returns:
        The family's config, values coerced to their declared types.

    Raises:
        ConfigError: `arch` is missing or unknown, a key is unknown, or a value is out of range.
    """
    if isinstance(mapping, ModelConfig):
        mapping = dataclasses.asdict(mapping)
    check(
        isinstance(mapping, Mapping), "model", f"expected a mapping with an `arch` key, got {shown(mapping)}"
    )
    known = ", ".join(list_models())
    check("arch" in mapping, "model.arch", f"missing; known: {known}")
    arch = mapping["arch"]
    check(
        isinstance(arch, str) and arch in _REGISTRY,
        "model.arch",
        f"unknown family {shown(arch)}; known: {known}",
    )
    cls = _REGISTRY[arch][0]
    keys = [f.name for f in dataclasses.fields(cls)]
    for key in mapping:
        check(key in keys, f"model.{key}", f"unknown key for {arch}; known keys: {', '.join(keys)}")
    return cls(**mapping)


def build_model(cfg: Mapping[str, Any] | ModelConfig | str, **overrides: Any) -> nn.Module:
    """Build a freshly initialised model from a config (or a family name); `None` overrides are dropped.

    Args:
        cfg: a model mapping or config, or a family name for its defaults.
        **overrides: model keys to replace (`dropout=0.5`); a None value keeps the config's.

    Returns:
        The model, with Kaiming-initialised convs, mapping (B, 1, S, S) images to (B, 7) logits.

    Raises:
        ConfigError: the config, with the overrides, is not valid.
    """
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
    """Parameters and multiply-adds of one forward pass of one `input_size` image (cached per config).

    Args:
        cfg: a model mapping or config.
        input_size: the image side in px, in `INPUT_SIZES`.

    Returns:
        `{"params": ..., "macs": ...}`, counted on the meta device (nothing is allocated).

    Raises:
        ConfigError: the config is not valid or `input_size` is out of range.
    """
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
