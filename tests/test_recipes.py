"""Published recipes in `configs/`: their keys hold the published values, `fer-tune train` runs them, and the
`gpu` search space starts from the field's recipe."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from conftest import make_fer

from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.search import load_space
from fer_tune.training import RunConfig, load_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
KHAIREDDIN = CONFIGS / "khaireddin2021.yaml"

# Khaireddin & Chen (2021), arXiv:2105.03588, as their code (github.com/usef-kh/fer) sets it.
PUBLISHED = {
    "model": {
        "arch": "vgg",
        "kernels": [64, 128, 256, 512],  # conv1a/b .. conv4a/b
        "convs_per_stage": 2,
        "head_width": 4096,  # lin1, lin2
        "head_layers": 2,
        "dropout": 0.2,  # Vgg(drop=0.2)
    },
    "train": {
        "epochs": 300,
        "batch_size": 64,
        "optimizer": "sgd",
        "lr": 0.01,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1e-4,
        "schedule": "plateau",
        "gamma": 0.75,  # ReduceLROnPlateau(mode="max", factor=0.75, patience=5) on validation accuracy
        "patience": 5,
        "plateau_metric": "val_acc",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
    },
    "augment": {
        "hflip": True,
        "rotation": 10.0,  # RandomRotation(10)
        "shift": 0.2,  # RandomAffine(translate=(0.2, 0.2))
        "crop": 40,  # TenCrop(40) ...
        "views": 10,  # ... each of the ten crops a training example
        "erasing": 0.5,  # RandomErasing(p=0.5)
        "mixup": 0.0,
        "cutmix": 0.0,
    },
}


@pytest.fixture(scope="module")
def recipe() -> RunConfig:
    return RunConfig.from_yaml(KHAIREDDIN)


def test_khaireddin2021_holds_the_published_recipe(recipe: RunConfig) -> None:
    config = recipe.to_dict()
    for group, values in PUBLISHED.items():
        for key, value in values.items():
            assert config[group][key] == value, f"{group}.{key}: {config[group][key]!r}, published {value!r}"
    # RandomResizedCrop(48, scale=(0.8, 1.2), ratio=(3/4, 4/3)): scale is an area fraction, `augment.scale` a
    # zoom of the side, so the side's range squared is the area's.
    assert (1 - recipe.augment.scale) ** 2 == pytest.approx(0.8, abs=0.02)
    assert (1 + recipe.augment.scale) ** 2 == pytest.approx(1.2, abs=0.02)
    assert recipe.augment.aspect == pytest.approx(4 / 3, rel=1e-6)
    # four 2x2 max-pools take their 40-px crops to the 2 x 2 x 512 features their first FC layer reads
    assert recipe.augment.input_size // 16 == recipe.model.pool_size == 2


def test_khaireddin2021_trains_with_fer_tune_train(recipe: RunConfig, tmp_path: Path, one_thread) -> None:
    """One epoch of the recipe itself (its 30M-parameter VGG, 10 views) on 7 synthetic faces: seconds."""
    data = save_csv(make_fer({"Training": 1, "PublicTest": 1}), tmp_path / "fer2013.csv")
    out = tmp_path / "run"
    argv = ["train", str(KHAIREDDIN), "--data", str(data), "--out", str(out), "--epochs", "1"]
    assert main([*argv, "--device", "cpu"]) == 0
    _, meta = load_model(out / "model.pt")
    assert meta["epoch"] == 1 and meta["input_size"] == 40 and meta["arch"] == "vgg"
    written = yaml.safe_load((out / "config.yaml").read_text())
    expected = recipe.override(epochs=1).to_dict()
    assert written == expected  # nothing else was changed on the way
    (metrics,) = meta["history"]
    assert math.isfinite(metrics["train_loss"]) and metrics["lr"] == 0.01  # no warm-up


def test_gpu_space_starts_from_the_recipe(recipe: RunConfig) -> None:
    """The `gpu` space's first trial is configs/khaireddin2021.yaml, every key of it."""
    from optuna.trial import FixedTrial

    from fer_tune.search.conversion import point_params

    space = load_space("gpu")
    (first, *_) = space.search.points_to_evaluate
    params = point_params(space, first)
    config = space.define_by_run()(FixedTrial(params))  # raises if the point leaves a sampled key out
    assert RunConfig.from_dict(config).to_dict() == recipe.to_dict()


def test_gpu_space_is_a_long_packed_search() -> None:
    space = load_space("gpu")
    assert space.max_epochs() == 300 and space.search.scheduler == "asha"
    assert space.search.grace_period >= 20  # plateau trials are not judged in their first epochs
    assert 0 < space.resources.gpus_per_trial < 1  # several trials share the GPU
    sampled = {d.path for d in space.dists()}
    assert {"train.gamma", "train.patience", "augment.shift", "augment.views"} <= sampled
    for config in space.sample(n=5, seed=3):
        cfg = RunConfig.from_dict(config)
        assert cfg.train.schedule == "plateau" and 150 <= cfg.train.epochs <= 300
        assert 64 <= cfg.train.batch_size <= 256
