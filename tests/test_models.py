"""Every registered model family: forward/backward, sizes, stats, config round trip and config errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from fer_tune.base import ConfigError
from fer_tune.models import (
    NUM_CLASSES,
    CNNConfig,
    build_model,
    list_models,
    model_config,
    model_stats,
    register_model,
)
from fer_tune.models.attention import FF_MULT
from fer_tune.models.cnn_lstm import LSTM_COLUMNS
from fer_tune.models.layers import BasicBlock

# Structural extremes of every family (fewest / most layers, blocks, heads...), with small widths so they run
# on CPU in milliseconds. A family registered without an entry here fails test_every_family_has_extremes.
EXTREMES = {
    "cnn": {
        "small": {"kernels": [4], "batchnorm": False, "pool_size": 1, "head_width": 0, "dropout": 0.0},
        "large": {
            "kernels": [4, 4, 8, 8, 16, 16],
            "pool_size": 8,
            "head_width": 32,
            "dropout": 0.9,
            "res_blocks": 4,
        },
    },
    "resnet": {
        "small": {"kernels": [8], "blocks_per_stage": 1, "dropout": 0.0},
        "large": {"kernels": [4, 4, 8, 8, 16], "blocks_per_stage": 4, "dropout": 0.5},
    },
    "cnn_lstm": {
        "small": {
            "kernels": [4],
            "residual": False,
            "lstm_hidden": 1,
            "bidirectional": False,
            "dropout": 0.0,
        },
        "large": {"kernels": [4, 4, 8, 8, 16], "lstm_hidden": 8, "lstm_layers": 4, "dropout": 0.5},
    },
    "attention": {
        "small": {"kernels": [4, 4], "residual": False, "heads": 1, "attn_layers": 1, "dropout": 0.0},
        "large": {"kernels": [4, 4, 8, 8, 16], "heads": 16, "attn_layers": 12, "pool": "cls", "dropout": 0.5},
    },
    "vgg": {
        "small": {"kernels": [4], "convs_per_stage": 1, "pool_size": 1, "head_width": 0, "dropout": 0.0},
        "large": {
            "kernels": [4, 4, 8, 8, 16],
            "convs_per_stage": 4,
            "pool_size": 8,
            "head_width": 16,
            "head_layers": 3,
        },
    },
}

CASES = [(arch, variant) for arch in list_models() for variant in ("default", "small", "large")]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest's: the module's tests on one thread


def config_of(arch: str, variant: str) -> dict:
    return {"arch": arch, **({} if variant == "default" else EXTREMES[arch][variant])}


def test_every_family_has_extremes():
    assert sorted(EXTREMES) == list_models()
    assert {"cnn", "resnet", "cnn_lstm", "attention", "vgg"} <= set(list_models())


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_forward_backward(arch, variant):
    torch.manual_seed(0)
    cfg = config_of(arch, variant)
    model = build_model(cfg).train()
    assert sum(p.numel() for p in model.parameters()) == model_stats(cfg)["params"]
    sizes = (32, 40, 48, 64) if variant == "default" else (40, 48)
    for size in sizes:
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(2, 1, size, size))
        assert out.shape == (2, NUM_CLASSES), size
        assert torch.isfinite(out).all(), size
        out.logsumexp(1).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{name} got no gradient at {size} px"
            assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient at {size} px"


@pytest.mark.parametrize(("arch", "variant"), [c for c in CASES if c[1] != "default"])
def test_channels_last_bf16_autocast(arch, variant):
    model = build_model(config_of(arch, variant)).to(memory_format=torch.channels_last)
    x = torch.randn(2, 1, 44, 44).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("arch", "variant"), CASES)
def test_config_round_trip(arch, variant):
    cfg = model_config(config_of(arch, variant))
    assert cfg.arch == arch
    assert model_config(dataclasses.asdict(cfg)) == cfg
    assert model_config(cfg) == cfg
    for key, value in config_of(arch, variant).items():
        assert getattr(cfg, key) == value


def test_defaults_are_strong_but_small():
    for arch in ("resnet", "vgg"):
        stats = model_stats({"arch": arch})
        assert 3_000_000 < stats["params"] < 15_000_000, (arch, stats)
    assert model_config({"arch": "resnet"}).kernels == [64, 128, 256, 512]


def test_sampler_values_are_coerced():
    cfg = model_config(
        {
            "arch": "cnn_lstm",
            "kernels": (np.int64(16), 32.0),
            "dropout": np.float32(0.25),
            "lstm_hidden": np.int64(8),
            "lstm_layers": 2.0,
            "bidirectional": np.bool_(False),
        }
    )
    assert cfg.kernels == [16, 32] and all(type(w) is int for w in cfg.kernels)
    assert type(cfg.dropout) is float and cfg.dropout == 0.25
    assert type(cfg.lstm_hidden) is int and type(cfg.lstm_layers) is int and cfg.bidirectional is False
    assert model_config({"arch": "cnn", "kernels": np.array([8, 16])}).kernels == [8, 16]


def test_build_model_overrides_and_names():
    model = build_model("resnet", kernels=[8, 16], blocks_per_stage=1, dropout=None)
    assert model(torch.randn(1, 1, 48, 48)).shape == (1, NUM_CLASSES)
    assert model_stats({"arch": "resnet", "kernels": [8, 16], "blocks_per_stage": 1})["params"] == sum(
        p.numel() for p in model.parameters()
    )


def test_cnn_residual_blocks_follow_the_conv_layers():
    """The student's recipe: 3 conv layers with batch-norm, then one residual block at the last width."""
    plain = build_model({"arch": "cnn", "kernels": [32, 64, 128]})
    res = build_model({"arch": "cnn", "kernels": [32, 64, 128], "res_blocks": 1})
    blocks = [m for m in res.features if isinstance(m, BasicBlock)]
    assert len(blocks) == 1 and blocks[0].conv1.in_channels == blocks[0].conv2.out_channels == 128
    extra = sum(p.numel() for p in blocks[0].parameters())
    assert sum(p.numel() for p in res.parameters()) == sum(p.numel() for p in plain.parameters()) + extra
    assert res(torch.randn(2, 1, 40, 40)).shape == (2, NUM_CLASSES)


def test_resnet_blocks_start_as_identity():
    model = build_model({"arch": "resnet", "kernels": [8, 16], "blocks_per_stage": 2})
    gammas = [m.bn2.weight for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert len(gammas) == 4 and all((g == 0).all() for g in gammas)


def _macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


def test_stats_count_lstm_steps():
    cfg = {"arch": "cnn_lstm", "kernels": [8, 16], "lstm_hidden": 12, "lstm_layers": 2, "bidirectional": True}
    model = build_model(cfg).train()
    x = torch.zeros(1, 1, 48, 48)
    steps, hidden, dirs = 24, 12, 2  # two stages: one stride 2, 48 -> 24 rows
    lstm = sum(dirs * steps * 4 * hidden * (n_in + hidden) for n_in in (16 * LSTM_COLUMNS, dirs * hidden))
    expected = _macs(model.features, x) + lstm + dirs * hidden * NUM_CLASSES
    assert model_stats(cfg)["macs"] == expected


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_stats_count_attention(pool):
    cfg = {"arch": "attention", "kernels": [8, 16, 16], "heads": 2, "attn_layers": 3, "pool": pool}
    model = build_model(cfg).train()
    x = torch.zeros(1, 1, 40, 40)
    tokens, width = 10 * 10 + (pool == "cls"), 16  # two stride-2 stages: 40 -> 10
    block = (
        4 * tokens * width**2 + 2 * tokens**2 * width + 2 * tokens * width * FF_MULT * width
    )  # qkv+out, attn, MLP
    expected = _macs(model.features, x) + 3 * block + width * NUM_CLASSES
    assert model_stats(cfg, input_size=40)["macs"] == expected


def test_stats_scale_with_input_and_are_cached():
    small, large = model_stats({"arch": "vgg"}, 32), model_stats({"arch": "vgg"}, 64)
    assert small["params"] == large["params"] and 3 * small["macs"] < large["macs"]
    stats = model_stats({"arch": "cnn"})
    stats["params"] = -1  # callers get a copy, not the cached value
    assert model_stats(CNNConfig())["params"] > 0
    with pytest.raises(ConfigError, match=r"^input_size:"):
        model_stats({"arch": "cnn"}, 100)


INVALID = [
    (["resnet"], "model"),
    ({}, "model.arch"),
    ({"arch": "foo"}, "model.arch"),
    ({"arch": 3}, "model.arch"),
    ({"arch": "cnn", "depth": 3}, "model.depth"),
    ({"arch": "resnet", "batchnorm": True}, "model.batchnorm"),
    ({"arch": "cnn", "kernels": [8] * 7}, "model.kernels"),
    ({"arch": "cnn", "kernels": []}, "model.kernels"),
    ({"arch": "resnet", "kernels": [8] * 6}, "model.kernels"),
    ({"arch": "attention", "kernels": [8]}, "model.kernels"),
    ({"arch": "resnet", "kernels": [64, 0]}, "model.kernels"),
    ({"arch": "vgg", "kernels": [64, -3]}, "model.kernels"),
    ({"arch": "cnn", "kernels": [32.5]}, "model.kernels"),
    ({"arch": "cnn", "kernels": [True]}, "model.kernels"),
    ({"arch": "cnn", "kernels": "64"}, "model.kernels"),
    ({"arch": "cnn", "kernels": 64}, "model.kernels"),
    ({"arch": "cnn", "dropout": -0.1}, "model.dropout"),
    ({"arch": "cnn", "dropout": 1.0}, "model.dropout"),
    ({"arch": "cnn", "dropout": "0.5"}, "model.dropout"),
    ({"arch": "cnn", "batchnorm": "yes"}, "model.batchnorm"),
    ({"arch": "cnn", "head_width": -1}, "model.head_width"),
    ({"arch": "cnn", "pool_size": 0}, "model.pool_size"),
    ({"arch": "cnn", "res_blocks": 5}, "model.res_blocks"),
    ({"arch": "resnet", "blocks_per_stage": 0}, "model.blocks_per_stage"),
    ({"arch": "cnn_lstm", "lstm_hidden": 0}, "model.lstm_hidden"),
    ({"arch": "cnn_lstm", "lstm_layers": 5}, "model.lstm_layers"),
    ({"arch": "cnn_lstm", "bidirectional": 2}, "model.bidirectional"),
    ({"arch": "attention", "kernels": [64, 100], "heads": 8}, "model.heads"),
    ({"arch": "attention", "heads": 0}, "model.heads"),
    ({"arch": "attention", "attn_layers": 0}, "model.attn_layers"),
    ({"arch": "attention", "pool": "max"}, "model.pool"),
    ({"arch": "vgg", "convs_per_stage": 2.5}, "model.convs_per_stage"),
    ({"arch": "vgg", "head_layers": 0}, "model.head_layers"),
]


@pytest.mark.parametrize(("cfg", "key"), INVALID, ids=[f"{i}-{key}" for i, (_, key) in enumerate(INVALID)])
def test_invalid_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        model_config(cfg)
    assert str(err.value).startswith(f"{key}: ")
    with pytest.raises(ConfigError):
        build_model(cfg)


def test_unknown_family_lists_the_known_ones():
    with pytest.raises(
        ConfigError, match=r"^model\.arch: unknown family 'foo'; known: attention, cnn, cnn_lstm"
    ):
        model_config({"arch": "foo"})


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match=r"^model\.kernels: cnn takes 1 to 6 widths, got 7"):
        CNNConfig(kernels=[8] * 7)
    with pytest.raises(ConfigError, match=r"^model\.arch:"):
        CNNConfig(arch="resnet")


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model(CNNConfig)(lambda cfg: None)
