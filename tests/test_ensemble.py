"""Seed ensembles: a retrain's seeds as one model, scored per seed and as a whole, with and without TTA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import make_fer

from fer_tune.base import DataError
from fer_tune.cli import main
from fer_tune.training import (
    Ensemble,
    RunConfig,
    evaluate_ensemble,
    format_ensemble,
    load_model,
    load_models,
    model_files,
    train,
)
from fer_tune.training.ensemble import load

TINY = {
    "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0, "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.0},
    "augment": {"rotation": 0.0, "crop": 44},
    "seed": 0,
}


@pytest.fixture(scope="module")
def data():
    return make_fer({"Training": 10, "PublicTest": 4}, seed=2)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data, one_thread):
    """A TINY model trained on `data` (the ensembles here are copies of it)."""
    out = tmp_path_factory.mktemp("run")
    train(RunConfig.from_dict(TINY), data, out_dir=out, device="cpu")
    return out


def _seeds(root, trained_run, n=2):
    """A retrain-shaped folder whose seeds are copies of one model."""
    for s in range(n):
        (root / f"seed_{s}").mkdir(parents=True)
        shutil.copy(trained_run / "model.pt", root / f"seed_{s}" / "model.pt")
    return root


def test_ensemble_of_identical_models_equals_either(trained_run):
    model, _ = load_model(trained_run)
    x = torch.randn(5, 1, 44, 44)
    with torch.no_grad():
        single = model(x).softmax(-1)
        both = Ensemble([model, model])(x)
    assert torch.allclose(both.softmax(-1), single, atol=1e-6)
    assert torch.allclose(both.exp().sum(-1), torch.ones(5), atol=1e-5)  # log of a distribution


def test_ensemble_is_the_mean_of_probabilities():
    a, b = torch.nn.Linear(3, 7), torch.nn.Linear(3, 7)
    x = torch.randn(4, 3)
    with torch.no_grad():
        want = (a(x).softmax(-1) + b(x).softmax(-1)) / 2
        assert torch.allclose(Ensemble([a, b])(x).exp(), want, atol=1e-6)


def test_model_files_and_load(tmp_path, trained_run):
    assert model_files(trained_run) == [trained_run / "model.pt"]
    root = _seeds(tmp_path / "final", trained_run, 3)
    (root / "seed_x").mkdir()  # not a seed folder: ignored
    assert [p.parent.name for p in model_files(root)] == ["seed_0", "seed_1", "seed_2"]
    model, meta = load(root)
    assert isinstance(model, Ensemble) and len(model.members) == 3
    assert meta["members"] == ["seed_0", "seed_1", "seed_2"] and meta["input_size"] == 44
    single, meta1 = load(trained_run)
    assert not isinstance(single, Ensemble) and meta1["members"] == [trained_run.name]
    with pytest.raises(DataError, match="no model.pt, nor seed_<s>/model.pt"):
        model_files(tmp_path / "final" / "seed_x")
    with pytest.raises(DataError, match="no such model file or folder"):
        model_files(tmp_path / "missing")


def test_members_must_share_their_input_size(tmp_path, trained_run, data, one_thread):
    other = tmp_path / "other"
    train(RunConfig.from_dict({**TINY, "augment": {"rotation": 0.0, "crop": 40}}), data, out_dir=other)
    root = _seeds(tmp_path / "final", trained_run, 1)
    (root / "seed_1").mkdir()
    shutil.copy(other / "model.pt", root / "seed_1" / "model.pt")
    with pytest.raises(DataError, match=r"seed_1/model.pt has input_size 40, seed_0 has 44"):
        load_models(root)


def test_evaluate_ensemble_scores_each_seed_and_the_ensemble(tmp_path, trained_run, data):
    root = _seeds(tmp_path / "final", trained_run)
    # a retrain's report already there: evaluation is added to it, nothing of it is lost
    (root / "metrics.json").write_text(json.dumps({"per_seed": {"seed_0": {}}, "summary": {"x": 1}}))
    result = evaluate_ensemble(root, data, device="cpu")
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["summary"] == {"x": 1} and saved["evaluation"]["members"] == ["seed_0", "seed_1"]
    assert set(result["results"]) == {"seed_0", "seed_1", "ensemble"}
    for name in ("seed_0", "seed_1", "ensemble"):
        assert set(result["results"][name]) == {"none", "flip"}
        for tta in ("none", "flip"):
            assert set(result["results"][name][tta]) == {"Training", "PublicTest"}
    # identical members: the ensemble predicts what each does
    for tta in ("none", "flip"):
        for split in ("Training", "PublicTest"):
            e = result["results"]["ensemble"][tta][split]
            s = result["results"]["seed_0"][tta][split]
            assert e["accuracy"] == s["accuracy"] and e["confusion"] == s["confusion"]
    assert len(result["table"]) == 3 * 2 * 2
    assert {r["model"] for r in result["table"]} == {"seed_0", "seed_1", "ensemble"}


def test_evaluate_ensemble_scores_ten_crop_on_held_out_splits_only(tmp_path, trained_run, data):
    root = _seeds(tmp_path / "final", trained_run)
    result = evaluate_ensemble(root, data, ttas=("none", "tencrop"), device="cpu")
    for name in ("seed_0", "seed_1", "ensemble"):
        assert set(result["results"][name]["none"]) == {"Training", "PublicTest"}
        assert set(result["results"][name]["tencrop"]) == {"PublicTest"}  # 10 views of Training: skipped
    assert len(result["table"]) == 3 * (2 + 1)
    table = format_ensemble(result)
    assert "tencrop" in table and " - " in table  # the Training cells ten-crop left empty
    # Training alone: then it is scored with every TTA asked (nothing would be left)
    alone = evaluate_ensemble(root, data.split("Training"), ttas=("tencrop",), out_dir=tmp_path, device="cpu")
    assert set(alone["results"]["ensemble"]["tencrop"]) == {"Training"}


def test_cli_evaluate_of_a_retrain_folder(tmp_path, trained_run, data, capsys):
    from fer_tune.data import save_csv

    root = _seeds(tmp_path / "final", trained_run)
    csv = tmp_path / "fer.csv"
    save_csv(data, csv)
    assert main(["evaluate", str(root), "--data", str(csv), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 members and their ensemble" in out and "ensemble" in out and "PublicTest accuracy" in out
    saved = json.loads((root / "metrics.json").read_text())
    assert saved["ttas"] == ["none", "flip"] and "per_seed" not in saved
    # an empty folder: one line, exit 2
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), "--data", str(csv)]) == 2
    assert "no model.pt, nor seed_<s>/model.pt" in capsys.readouterr().err


def test_cli_evaluate_of_a_retrain_folder_of_one_seed(tmp_path, trained_run, data, capsys):
    """A one-seed retrain (e.g. a model distilled with `retrain --teacher`) is scored as its one model."""
    from fer_tune.data import save_csv

    root = _seeds(tmp_path / "distilled", trained_run, n=1)
    csv = tmp_path / "fer.csv"
    save_csv(data, csv)
    assert main(["evaluate", str(root), "--data", str(csv), "--out", str(tmp_path / "eval")]) == 0
    assert "seed_0/model.pt (cnn, epoch 1)" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["model"] == str(root / "seed_0" / "model.pt") and set(saved["splits"]) == {
        "Training",
        "PublicTest",
    }


def test_members_standardised_differently_each_get_their_own_input(tmp_path, trained_run, data, one_thread):
    """Seeds of a `train.subset` retrain each saw their own subset, so their mean and std differ: the
    ensemble is still the mean of each member's probabilities on the faces as that member was trained."""
    from fer_tune.data import FER2013

    brighter = FER2013(
        np.clip(data.images.astype(int) + 40, 0, 255).astype(np.uint8), data.labels, data.usage
    )
    other = tmp_path / "other"
    train(RunConfig.from_dict(TINY), brighter, out_dir=other)
    root = _seeds(tmp_path / "final", trained_run, 1)
    (root / "seed_1").mkdir()
    shutil.copy(other / "model.pt", root / "seed_1" / "model.pt")
    model, meta = load(root)
    pixels = torch.randint(0, 256, (6, 1, 44, 44)).float()
    want = []
    for f in (root / "seed_0", root / "seed_1"):
        member, m = load_model(f)
        assert m["mean"] != meta["mean"] or f.name == "seed_0"
        with torch.no_grad():
            want.append(member((pixels - m["mean"]) / m["std"]).softmax(-1))
    with torch.no_grad():
        got = model((pixels - meta["mean"]) / meta["std"]).exp()
    torch.testing.assert_close(got, torch.stack(want).mean(0), atol=1e-5, rtol=1e-5)


def test_a_subset_retrain_of_several_seeds_scores_their_ensemble(tmp_path, data, one_thread):
    from fer_tune.training import retrain

    cfg = tmp_path / "subset.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "subset": 35}}))
    report = retrain(cfg, data=data, out_dir=tmp_path / "final", seeds=2)
    assert set(report["evaluation"]["results"]) == {"seed_0", "seed_1", "ensemble"}
