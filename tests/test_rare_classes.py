"""Rare classes as search keys: class weights, focal loss, balanced sampling; macro-F1 and recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_fer

from fer_tune.base import ConfigError
from fer_tune.data import EMOTIONS, FER2013
from fer_tune.search import parse_space
from fer_tune.training import METRIC_KEYS, RunConfig, TrainConfig, class_weights, classification_loss, train
from fer_tune.training.trainer import epoch_order

# FER2013's Training counts (angry .. neutral): disgust is 1.5% of it.
COUNTS = np.array([3995, 436, 4097, 7214, 4830, 3170, 4965])
LABELS = np.repeat(np.arange(7), COUNTS)


def test_inverse_weights_give_every_class_the_same_total_and_average_one() -> None:
    w = class_weights(LABELS, "inverse")
    assert np.allclose(w * COUNTS, (w * COUNTS)[0])
    assert w[LABELS].mean() == pytest.approx(1.0)
    assert w[1] == pytest.approx(w.max()) and w[3] == pytest.approx(w.min())  # disgust most, happy least


def test_sqrt_weights_lie_between_none_and_inverse() -> None:
    inverse, sqrt = class_weights(LABELS, "inverse"), class_weights(LABELS, "sqrt")
    assert class_weights(LABELS, "none") is None
    assert sqrt[LABELS].mean() == pytest.approx(1.0)
    assert 1 < sqrt[1] / sqrt[3] < inverse[1] / inverse[3]
    assert np.isfinite(class_weights(np.array([0, 0, 2]), "inverse")).all()  # absent classes: no inf


def test_focal_loss_is_cross_entropy_at_gamma_0_and_discounts_easy_examples() -> None:
    torch.manual_seed(0)
    out, y = torch.randn(64, 7) * 3, torch.randint(0, 7, (64,))
    ce = TrainConfig(label_smoothing=0.1)
    focal0 = TrainConfig(loss="focal", focal_gamma=0.0, label_smoothing=0.1)
    focal2 = TrainConfig(loss="focal", focal_gamma=2.0, label_smoothing=0.1)
    assert classification_loss(out, y, focal0) == pytest.approx(
        float(classification_loss(out, y, ce)), rel=1e-5
    )
    assert classification_loss(out, y, focal2) < classification_loss(out, y, ce)
    ones = torch.ones(7)
    assert classification_loss(out, y, ce, ones) == pytest.approx(float(classification_loss(out, y, ce)))
    w = torch.tensor(class_weights(LABELS, "inverse"))
    plain = TrainConfig(loss="focal", focal_gamma=0.0)  # without smoothing: exactly torch's weighted mean
    assert classification_loss(out, y, plain, w) == pytest.approx(
        float(F.cross_entropy(out, y, weight=w)), rel=1e-5
    )


def test_balanced_sampler_draws_every_class_about_equally() -> None:
    torch.manual_seed(0)
    labels = torch.from_numpy(LABELS)
    drawn = torch.bincount(labels[epoch_order(labels, "balanced")], minlength=7).numpy() / len(LABELS)
    assert np.allclose(drawn, 1 / 7, atol=0.01)
    order = epoch_order(labels, "shuffle")
    assert torch.equal(order.sort().values, torch.arange(len(LABELS)))  # a permutation


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "recipe",
    [{}, {"class_weights": "inverse"}, {"class_weights": "sqrt", "loss": "focal"}, {"sampler": "balanced"}],
)
def test_every_epoch_reports_macro_f1_and_recall_per_class(recipe: dict) -> None:
    data = make_fer({"Training": 10, "PublicTest": 4})
    cfg = {
        "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0},
        "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0, **recipe},
        "augment": {"crop": 0, "rotation": 0},
    }
    history = train(cfg, data, device="cpu")["history"]
    for h in history:
        assert list(h) == list(METRIC_KEYS)
        assert 0 <= h["val_macro_f1"] <= 1
        assert all(0 <= h[f"val_recall_{c}"] <= 1 for c in EMOTIONS)
    # Recall of a class is its share of right answers: PublicTest has 4 images of each class.
    assert np.mean([history[-1][f"val_recall_{c}"] for c in EMOTIONS]) == pytest.approx(
        history[-1]["val_acc"]
    )


def test_without_publictest_the_scores_are_nan() -> None:
    data = make_fer({"Training": 4})
    cfg = {
        "model": {"arch": "cnn", "kernels": [4], "head_width": 0},
        "train": {"epochs": 1, "warmup_epochs": 0},
    }
    h = train(cfg, FER2013(data.images, data.labels, data.usage, "t"), device="cpu")["history"][-1]
    assert np.isnan(h["val_macro_f1"]) and np.isnan(h["val_recall_disgust"])


def test_keys_are_checked_and_macro_f1_is_a_search_metric() -> None:
    with pytest.raises(ConfigError, match="train.class_weights: must be one of"):
        RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {"class_weights": "balanced"}})
    with pytest.raises(ConfigError, match="train.focal_gamma"):
        RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {"loss": "focal", "focal_gamma": -1}})
    space = parse_space(
        {
            "model": {"arch": "cnn"},
            "train": {
                "class_weights": {"choice": ["none", "inverse", "sqrt"]},
                "sampler": {"choice": ["shuffle", "balanced"]},
            },
            "search": {"metric": "val_macro_f1"},
        }
    )
    assert space.search.mode == "max"
