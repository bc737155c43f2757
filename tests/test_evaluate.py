"""Evaluation: metrics by hand, TTA views, one-split data, files written, the `fer-tune evaluate` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_fer

from fer_tune.base import DataError
from fer_tune.cli import main
from fer_tune.data import EMOTIONS, FER2013, save_image_folder
from fer_tune.training import (
    classification_metrics,
    evaluate_dir,
    evaluate_model,
    format_metrics,
    load_model,
    normalize,
    predict_logits,
    train,
    tta_views,
)
from fer_tune.training.evaluate import save_confusion_png

TINY_MODEL = {"arch": "cnn", "kernels": [8, 16], "head_width": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[40, 4], ids=["crop40", "shift4"])
def augmented_model_dir(
    request: pytest.FixtureRequest, tiny_data: FER2013, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model trained for one epoch on 40-px crops, or on 48-px images shifted by up to 4 px."""
    out = tmp_path_factory.mktemp(f"model-crop{request.param}")
    cfg = {"model": TINY_MODEL, "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0}}
    train({**cfg, "augment": {"crop": request.param}}, tiny_data, out_dir=out)
    return out


@pytest.fixture(scope="module")
def private_only() -> FER2013:
    return make_fer({"PrivateTest": 4}, seed=3)


def test_classification_metrics_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1, 3, 3])
    y_pred = np.array([0, 0, 3, 1, 3, 0])
    m = classification_metrics(y_true, y_pred)
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    # F1: class 0: p=r=2/3; class 1: 1; class 3: p=r=1/2. Classes neither seen nor predicted don't count.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["recall"]["angry"] == pytest.approx(2 / 3) and m["recall"]["happy"] == pytest.approx(0.5)
    assert np.isnan(m["recall"]["fear"]) and list(m["recall"]) == list(EMOTIONS)
    cm = np.array(m["confusion"])
    assert cm.shape == (7, 7) and cm[0, 3] == 1 and cm[3, 0] == 1 and cm.sum() == 6


def test_tta_views_are_the_documented_crops() -> None:
    x = torch.randn(3, 1, 48, 48)
    crops = tta_views(x, 40, "tencrop")
    assert len(crops) == 10 and all(v.shape == (3, 1, 40, 40) for v in crops)
    assert torch.equal(crops[0], x[..., 4:44, 4:44])  # center
    assert torch.equal(crops[1], x[..., :40, :40]) and torch.equal(crops[4], x[..., 8:, 8:])  # corners
    assert torch.equal(crops[5], crops[0].flip(-1))
    shifts = tta_views(x, 48, "tencrop", shift=2)
    assert len(shifts) == 10 and all(v.shape == x.shape for v in shifts)
    assert torch.equal(shifts[0], x) and torch.equal(shifts[4][..., :46, :46], x[..., 2:, 2:])
    flip = tta_views(x, 48, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    with pytest.raises(ValueError, match="tta"):
        tta_views(x, 48, "fivecrop")


def test_flip_tta_averages_the_logits_of_image_and_mirror(augmented_model_dir: Path) -> None:
    model, meta = load_model(augmented_model_dir)
    images = torch.from_numpy(make_fer({"PublicTest": 1}).images)
    x = normalize(images, meta["mean"], meta["std"])
    s = meta["input_size"]
    x = x[..., (48 - s) // 2 : (48 - s) // 2 + s, (48 - s) // 2 : (48 - s) // 2 + s]
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2
    assert torch.allclose(predict_logits(model, meta, images, "flip"), expected, atol=1e-5)


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_evaluate_dir_on_a_private_test_only_folder(
    augmented_model_dir: Path, private_only: FER2013, tmp_path: Path, tta: str
) -> None:
    result = evaluate_dir(augmented_model_dir, private_only, tta=tta, out_dir=tmp_path)
    assert list(result["splits"]) == ["PrivateTest"] and result["tta"] == tta
    m = result["splits"]["PrivateTest"]
    assert m["n"] == 28 and 0 <= m["accuracy"] <= 1 and set(m["recall"]) == set(EMOTIONS)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["splits"]["PrivateTest"]["n"] == 28 and saved["epoch"] == 1
    assert (tmp_path / "confusion_PrivateTest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PrivateTest" in format_metrics(result) and "macro_f1" in format_metrics(result["splits"])


def test_evaluate_model_scores_every_split(augmented_model_dir: Path, tiny_data: FER2013) -> None:
    model, meta = load_model(augmented_model_dir)
    result = evaluate_model(model, meta, tiny_data)
    assert list(result) == ["Training", "PublicTest"]
    assert result["PublicTest"]["n"] == 42 and result["Training"]["n"] == 140


def test_unlabelled_data_and_missing_model_are_user_errors(augmented_model_dir: Path, tmp_path: Path) -> None:
    model, meta = load_model(augmented_model_dir)
    images = np.zeros((2, 48, 48), np.uint8)
    with pytest.raises(DataError, match="without labels"):
        evaluate_model(
            model, meta, FER2013(images, np.array([-1, -1]), np.array(["PrivateTest"] * 2), "x.csv")
        )
    with pytest.raises(DataError, match="no such model file"):
        load_model(tmp_path / "nothing")


def test_save_confusion_png(tmp_path: Path) -> None:
    save_confusion_png(np.arange(49).reshape(7, 7), tmp_path / "cm.png", "title")
    assert (tmp_path / "cm.png").stat().st_size > 5000


def test_cli_evaluate_writes_metrics_beside_the_model(
    augmented_model_dir: Path, private_only: FER2013, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data_dir = save_image_folder(private_only, tmp_path / "private")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(augmented_model_dir / "model.pt"),
                "--data",
                str(data_dir),
                "--tta",
                "tencrop",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "PrivateTest" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["splits"]["PrivateTest"]["n"] == 28
    assert main(["evaluate", str(tmp_path / "absent"), "--data", str(data_dir)]) == 2
    assert "no such model file" in capsys.readouterr().err


class Foreign:
    """A class torch.load(weights_only=True) refuses to unpickle."""


def _bad_model(good: Path, case: str, path: Path) -> Path:
    obj = torch.load(good / "model.pt", weights_only=True)
    if case == "bare state_dict":
        torch.save(obj["state_dict"], path)
    elif case == "no config":
        torch.save({k: v for k, v in obj.items() if k != "config"}, path)
    elif case == "foreign class":
        torch.save({**obj, "note": Foreign()}, path)
    elif case == "weights do not fit":
        obj["config"]["model"]["kernels"] = [4, 16]
        torch.save(obj, path)
    elif case == "truncated":
        data = (good / "model.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    return path


@pytest.fixture(scope="module")
def model_and_data(tiny_data: FER2013, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate-bad")
    cfg = {"model": TINY_MODEL, "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0}}
    train(cfg, tiny_data, out_dir=root / "model")
    return root / "model", save_image_folder(make_fer({"PrivateTest": 1}), root / "data")


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("bare state_dict", "no `state_dict`, `config` (a bare state_dict?)"),
        ("no config", "no `config`"),
        ("foreign class", "Foreign"),
        ("weights do not fit", "size mismatch for features.0.weight"),
        ("truncated", "truncated or corrupt"),
        ("empty", "truncated or corrupt"),
    ],
)
def test_cli_evaluate_bad_model_file_is_one_line_naming_it(
    model_and_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture, case: str, says: str
) -> None:
    model_dir, data_dir = model_and_data
    bad = _bad_model(model_dir, case, tmp_path / "model.pt")
    assert main(["evaluate", str(bad), "--data", str(data_dir), "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"fer-tune: error: {bad}: "), err
    assert says in err
    assert not (tmp_path / "eval" / "metrics.json").exists()
