"""Fused trials (`fer_tune.training.fused`): K members trained as one model end where K lone runs end.

Three members of a tiny model differ in learning rate, momentum, weight decay, gradient clipping, dropout,
label smoothing, augmentation and seed; a few steps fused and a few steps alone (the trainer's step, torch's
optimisers from `build_optimizer`) from the same seeds give the same weights, batch-norm running statistics
and losses: to 1e-9 in float64, to 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch

from fer_tune.base import ConfigError
from fer_tune.models import build_model
from fer_tune.training import RunConfig, build_optimizer, normalize
from fer_tune.training.fused import (
    FusedModel,
    FusedOptimizer,
    MemberStreams,
    check_fusable,
    fused_step,
    reference_step,
)

TINY = {
    "cnn": {"arch": "cnn", "kernels": [4, 8], "pool_size": 2, "head_width": 16, "res_blocks": 1},
    "vgg": {"arch": "vgg", "kernels": [4, 8], "convs_per_stage": 2, "head_width": 16, "head_layers": 2},
    "resnet": {"arch": "resnet", "kernels": [4, 8], "blocks_per_stage": 1},
}
# Per member: what a search would vary within one architecture.
MEMBERS = [
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "label_smoothing": 0.0, "dropout": 0.0, "seed": 0},
    {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.0, "label_smoothing": 0.1, "dropout": 0.3, "seed": 1},
    {"lr": 0.2, "momentum": 0.0, "weight_decay": 1e-3, "label_smoothing": 0.2, "dropout": 0.5, "seed": 2},
]
AUGMENT = [
    {"hflip": True, "rotation": 10, "crop": 40, "scale": 0.1},
    {"hflip": False, "rotation": 0, "crop": 40, "erasing": 0.5},
    {"hflip": True, "rotation": 5, "crop": 40, "mixup": 0.4},
]


def member_configs(arch: str, optimizer: str) -> list[RunConfig]:
    cfgs = []
    for m, aug in zip(MEMBERS, AUGMENT, strict=True):
        train = {k: m[k] for k in ("lr", "momentum", "weight_decay", "label_smoothing")}
        train.update(optimizer=optimizer, batch_size=16, schedule="constant", precision="fp32")
        train["grad_clip"] = 1.0 if m["seed"] == 1 else 0.0
        model = {**TINY[arch], "dropout": m["dropout"]}
        cfgs.append(RunConfig.from_dict({"model": model, "train": train, "augment": aug, "seed": m["seed"]}))
    return cfgs


def run_both(cfgs: list[RunConfig], dtype: torch.dtype, steps: int = 3):
    """Train the members alone and fused from the same seeds; (lone models, fused model, losses of both)."""
    streams = MemberStreams([c.seed for c in cfgs])
    models = []
    for k, cfg in enumerate(cfgs):
        with streams.use(k):  # each member's init, then its augmentation and dropout, on its own stream
            models.append(build_model(cfg.model).to(dtype).to(memory_format=torch.channels_last).train())
    fused_streams = MemberStreams([c.seed for c in cfgs])
    for k in range(len(cfgs)):
        with fused_streams.use(k):  # advance past the init draws, as the lone members' streams did
            build_model(cfgs[k].model)
    fused = FusedModel(models, fused_streams).train()
    fopt = FusedOptimizer(fused, [c.train for c in cfgs])
    opts = [build_optimizer(m, c.train) for m, c in zip(models, cfgs, strict=True)]
    gen = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (64, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (64,), generator=gen)
    lone, together = [], []
    for step in range(steps):
        idx = torch.arange(step * 16, (step + 1) * 16)
        x, y = normalize(images[idx], 128.0, 64.0).to(dtype), labels[idx]
        lone.append(
            torch.stack(
                [
                    reference_step(m, o, x, y, c, streams, k)
                    for k, (m, o, c) in enumerate(zip(models, opts, cfgs, strict=True))
                ]
            )
        )
        together.append(fused_step(fused, fopt, x, y, cfgs, fused_streams))
    return models, fused, torch.stack(lone), torch.stack(together)


def assert_same_members(models, fused, tol: float) -> None:
    for k, model in enumerate(models):
        mine = fused.member_state_dict(k)
        theirs = model.state_dict()
        assert mine.keys() == theirs.keys()
        for name, t in theirs.items():
            assert mine[name].shape == t.shape, name
            if t.is_floating_point():
                torch.testing.assert_close(mine[name], t, rtol=tol, atol=tol, msg=f"member {k} {name}")
            else:
                assert torch.equal(mine[name], t), f"member {k} {name}"  # num_batches_tracked


@pytest.mark.parametrize(("arch", "optimizer"), [("cnn", "sgd"), ("vgg", "adamw"), ("resnet", "adam")])
def test_fused_members_end_where_lone_members_end_in_float64(arch, optimizer):
    cfgs = member_configs(arch, optimizer)
    models, fused, lone, together = run_both(cfgs, torch.float64)
    torch.testing.assert_close(together, lone, rtol=1e-9, atol=1e-9)
    assert_same_members(models, fused, 1e-9)
    # The members did differ: their losses and weights are not one member's three times.
    assert len({round(float(v), 6) for v in lone[-1]}) == 3
    x = normalize(torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8), 128.0, 64.0).double()
    fused.eval()
    with torch.no_grad():  # eval mode: running statistics per member, no dropout
        out = fused(x.expand(3, *x.shape))
        for k, model in enumerate(models):
            torch.testing.assert_close(out[k], model.eval()(x), rtol=1e-9, atol=1e-9)


def test_fused_members_match_in_float32_channels_last():
    models, fused, lone, together = run_both(member_configs("cnn", "sgd"), torch.float32)
    torch.testing.assert_close(together, lone, rtol=1e-4, atol=1e-5)
    assert_same_members(models, fused, 1e-4)


def test_dropout_draws_each_members_own_masks():
    cfgs = member_configs("cnn", "sgd")
    streams = MemberStreams([0, 1, 2])
    fused = FusedModel([build_model(c.model) for c in cfgs], streams).train()
    x = torch.randn(3, 4, 1, 40, 40)
    a, b = fused(x), fused(x)
    assert torch.equal(a[0], b[0])  # dropout 0: the same logits twice
    assert not torch.equal(a[2], b[2])  # dropout 0.5: new masks each call


def test_members_must_share_the_architecture():
    cfgs = member_configs("cnn", "sgd")
    check_fusable(cfgs)
    wider = RunConfig.from_dict({**cfgs[1].to_dict(), "model": {**TINY["cnn"], "kernels": [4, 16]}})
    with pytest.raises(ConfigError, match=r"model\.kernels"):
        check_fusable([cfgs[0], wider])
    adam = cfgs[1].override(optimizer="adam")
    with pytest.raises(ConfigError, match=r"train\.optimizer"):
        check_fusable([cfgs[0], adam])
    d = cfgs[1].to_dict()
    views = RunConfig.from_dict({**d, "augment": {**d["augment"], "views": 2}})
    with pytest.raises(ConfigError, match=r"augment\.views"):
        check_fusable([cfgs[0], views])


def test_unfused_families_name_the_module():
    model = build_model({"arch": "attention"})
    with pytest.raises(ValueError, match="is not fused"):
        FusedModel([model, model], MemberStreams([0, 1]))
