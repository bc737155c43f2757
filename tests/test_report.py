"""`fer-tune report`: diagnosis rules, importance, budget and the report, on hand-made and real searches."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from fer_tune.analysis import diagnose, param_importance, report, write_report
from fer_tune.analysis.report import budget
from fer_tune.base import DataError
from fer_tune.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(val: list[float], clean: list[float], train: list[float]) -> pd.DataFrame:
    n = len(val)
    return pd.DataFrame(
        {
            "epoch": range(1, n + 1),
            "val_acc": val,
            "clean_train_acc": clean,
            "train_acc": train,
            "train_loss": np.linspace(2.0, 1.0, n),
            "val_loss": np.linspace(2.0, 1.2, n),
        }
    )


CASES = {
    # val peaks at epoch 5 then falls 5 points while clean train keeps climbing: the gap grows 22 points
    "overfitting": _history(
        [0.40, 0.50, 0.55, 0.58, 0.60, 0.59, 0.58, 0.57, 0.56, 0.55],
        [0.45, 0.58, 0.66, 0.72, 0.78, 0.83, 0.87, 0.90, 0.93, 0.95],
        [0.43, 0.55, 0.63, 0.70, 0.75, 0.80, 0.84, 0.88, 0.91, 0.93],
    ),
    # both still climbing ~3 points per epoch and far from what FER2013 models reach
    "underfitting": _history(
        [0.25, 0.30, 0.34, 0.38, 0.41, 0.44],
        [0.26, 0.31, 0.35, 0.39, 0.43, 0.46],
        [0.25, 0.30, 0.34, 0.38, 0.42, 0.45],
    ),
    # heavy augmentation: augmented train accuracy below val, clean train accuracy above it, plateaued
    "regularisation inverts the gap": _history(
        [0.66, 0.69, 0.71, 0.72, 0.72, 0.72],
        [0.74, 0.79, 0.82, 0.84, 0.85, 0.85],
        [0.55, 0.59, 0.62, 0.63, 0.64, 0.64],
    ),
    "good fit": _history(
        [0.60, 0.66, 0.69, 0.71, 0.72, 0.72],
        [0.64, 0.71, 0.75, 0.77, 0.78, 0.78],
        [0.62, 0.69, 0.73, 0.75, 0.76, 0.76],
    ),
    "too short": _history([0.3], [0.3], [0.3]),
}


@pytest.mark.parametrize("label", CASES)
def test_diagnosis_labels_constructed_histories(label):
    d = diagnose(CASES[label])
    assert d.label == label
    if label == "overfitting":
        assert d.best_epoch == 5 and d.val_best == pytest.approx(0.60) and d.val_end == pytest.approx(0.55)
        assert d.gap_end - d.gap_best == pytest.approx(0.22)


def test_diagnosis_accepts_records_and_ignores_row_order():
    h = CASES["overfitting"]
    assert diagnose(h.sample(frac=1, random_state=0).to_dict("records")).label == "overfitting"


# ------------------------------------------------------------------------------ a hand-made search folder


def fake_search(n: int = 16, seed: int = 0, max_epochs: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and history as `load_results` returns them: two families, val_acc driven by lr alone."""
    rng = np.random.default_rng(seed)
    trials, history = [], []
    for i in range(n):
        arch = ("resnet", "vgg")[i % 2]
        lr = float(10 ** rng.uniform(-4, 0))
        best = 0.70 - 0.12 * abs(np.log10(lr) + 2) + rng.normal(0, 0.005)  # peak at lr = 1e-2
        completed = best > 0.60
        epochs = max_epochs if completed else 2 + i % 3
        tid = f"t{i:02d}"
        for e in range(1, epochs + 1):
            v = best * (1 - np.exp(-e / 2)) / (1 - np.exp(-max_epochs / 2))
            history.append(
                {
                    "trial_id": tid,
                    "epoch": e,
                    "train_loss": 2 - v,
                    "train_acc": v - 0.02,
                    "clean_train_acc": v + 0.05,
                    "val_loss": 2.1 - v,
                    "val_acc": v,
                    "lr": lr,
                    "epoch_seconds": 1.5,
                    "images_per_second": 1000.0,
                }
            )
        vals = [h["val_acc"] for h in history if h["trial_id"] == tid]
        trials.append(
            {
                "trial_id": tid,
                "status": "TERMINATED",
                "stop_reason": "completed" if completed else "stopped by ASHA",
                "arch": arch,
                "best_val_acc": max(vals),
                "best_epoch": int(np.argmax(vals)) + 1,
                "last_val_acc": vals[-1],
                "epochs": epochs,
                "max_epochs": max_epochs,
                "params": 1.2e6 if arch == "resnet" else 3.4e6,
                "macs": 5.6e7,
                "seconds": 1.5 * epochs,
                "config/model/arch": arch,
                "config/model/depth": (10 + 8 * (i % 4 // 2)) if arch == "resnet" else None,
                "config/model/kernels": [3, 3] if i % 3 else [5, 3],
                "config/model/dropout": float(rng.choice([0.0, 0.25, 0.5])),
                "config/train/lr": lr,
                "config/train/epochs": max_epochs,
                "config/seed": 0,
            }
        )
    return pd.DataFrame(trials), pd.DataFrame(history)


@pytest.fixture
def fake_results(monkeypatch, tmp_path):
    """Search folders under tmp_path whose results are hand-made frames (report logic without a search)."""
    searches = {}

    def make(name: str, **kwargs) -> Path:
        path = tmp_path / name
        path.mkdir()
        searches[path.resolve()] = fake_search(**kwargs)
        return path

    monkeypatch.setattr(report, "load_results", lambda d: searches[Path(d).resolve()])
    return make


def _assert_figures(md_path: Path) -> list[Path]:
    text = md_path.read_text()
    figures = [md_path.parent / f for f in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]
    assert figures
    for f in figures:
        assert f.read_bytes()[:8] == PNG_SIGNATURE, f
        with Image.open(f) as im:
            im.verify()
    return figures


def test_report_on_one_search(fake_results):
    search = fake_results("s1")
    path = write_report([search])
    assert path == search / "report" / "report.md"
    text = path.read_text()
    for heading in (
        "Leaderboard per architecture family",
        "learning curves",
        "Hyperparameter importance",
        "Budget",
    ):
        assert heading in text
    assert "**resnet**" in text and "**vgg**" in text and "train.lr" in text
    names = {f.name for f in _assert_figures(path)}
    assert names == {"s1_curves.png", "s1_importance.png", "s1_scatter.png"}
    assert "Not computed" not in text


def test_compare_two_searches(fake_results, tmp_path):
    a, b = fake_results("a", seed=1), fake_results("b", seed=2, n=6)  # b: too few for importance figures
    path = write_report([a, b], out_dir=tmp_path / "cmp")
    text = path.read_text()
    assert "## Comparison" in text and "## Search `a`" in text and "## Search `b`" in text
    assert {"a_curves.png", "b_curves.png"} <= {f.name for f in _assert_figures(path)}


def test_importance_ranks_the_parameter_that_drives_val_acc():
    trials, _ = fake_search(n=40)
    declared = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    imp, dists, note = param_importance(trials, declared=declared)
    assert next(iter(imp)) == "train.lr", imp
    assert sum(imp.values()) == pytest.approx(1.0)
    assert dists["train.lr"].log  # as the space declares it
    # Not declared (a space without it, or another kind): never guessed from the values' spread.
    assert not param_importance(trials)[1]["train.lr"].log
    assert "model.depth" in dists  # conditional on the family, still assessed
    assert "train.epochs" not in dists and "seed" not in dists  # constant columns are skipped


def test_importance_with_few_trials_says_so(fake_results):
    trials, _ = fake_search(n=3)
    imp, _, note = param_importance(trials)
    assert imp == {} and "needs at least" in note and "has 3" in note
    path = write_report([fake_results("few", n=3)])
    assert "Not computed: needs at least" in path.read_text()


def test_budget_counts_asha_savings():
    trials, _ = fake_search(n=12)
    b = budget(trials)
    assert b["epochs_spent"] == trials["epochs"].sum()
    assert b["epochs_without_early_stopping"] == 12 * 8
    assert 0 < b["fraction_saved_by_asha"] == pytest.approx(1 - b["epochs_spent"] / (12 * 8))


def test_running_search_with_partial_histories(fake_results, monkeypatch):
    """A running search: trials with no epoch yet and trials in progress are reported as they stand."""
    search = fake_results("live", n=6)
    trials, history = report.load_results(search)
    trials.loc[0, ["stop_reason", "best_val_acc", "epochs"]] = ["pending", np.nan, 0]
    trials.loc[1, "stop_reason"] = "running"
    history = history[history["trial_id"] != trials.loc[0, "trial_id"]]
    monkeypatch.setattr(report, "load_results", lambda d: (trials, history))
    text = write_report([search]).read_text()
    assert "1 running" in text and "1 pending" in text


def test_missing_search_folder_is_a_data_error(tmp_path, capsys):
    with pytest.raises(DataError, match="nope"):
        write_report([tmp_path / "nope"])
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-tune: error:") and "nope" in err and "\n" not in err


# ------------------------------------------------------------------------------------ a tiny real search

TINY_SPACE = """
model:
  arch: cnn
  kernels: {choice: [[8], [8, 16]]}
  head_width: 0
  dropout: {uniform: [0.0, 0.5]}
train:
  epochs: 3
  batch_size: 32
  lr: {loguniform: [0.001, 0.3]}
  warmup_epochs: 0.0
augment:
  rotation: 0.0
search:
  algorithm: optuna
  num_samples: 4
  scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
resources:
  cpus_per_trial: 1
"""
_SEARCHES: dict[str, Path] = {}  # test_retrain imports this fixture too: one tiny search per test session


@pytest.fixture(scope="session", name="tiny_search")
def tiny_search_fixture(ray_cluster, tmp_path_factory, tiny_data) -> Path:
    """results/tiny of a 4-trial, 3-epoch search on the CPU (ASHA and Optuna on)."""
    if "tiny" not in _SEARCHES:
        from fer_tune.data import save_csv

        root = tmp_path_factory.mktemp("tiny_search")
        csv = save_csv(tiny_data, root / "fer2013.csv")
        (root / "tiny.yaml").write_text(TINY_SPACE)
        argv = ["--space", str(root / "tiny.yaml"), "--data", str(csv), "--gpus", "0"]
        assert main([*argv, "--name", "tiny", "--results", str(root / "results")]) == 0
        _SEARCHES["tiny"] = root / "results" / "tiny"
    return _SEARCHES["tiny"]


@pytest.mark.ray
@pytest.mark.slow
def test_report_on_a_real_search(tiny_search, tmp_path, capsys):
    assert main(["report", str(tiny_search), "--out", str(tmp_path / "one")]) == 0
    path = tmp_path / "one" / "report.md"
    assert str(path) in capsys.readouterr().out
    text = path.read_text()
    assert (
        "**cnn**" in text
        and "model.kernels" in text
        and "train.lr" in text
        and "epochs run by 4 trials" in text
    )
    assert "Not computed: needs at least 8 finished trials" in text  # 4 trials: a message, not a crash
    assert {f.name for f in _assert_figures(path)} == {"tiny_curves.png"}

    both = write_report([tiny_search, tiny_search], out_dir=tmp_path / "two")  # same name twice: kept apart
    assert {"tiny_curves.png", "tiny_1_curves.png"} <= {f.name for f in _assert_figures(both)}


@pytest.mark.ray
@pytest.mark.slow
def test_missing_or_corrupt_result_files_name_the_file(tiny_search, tmp_path, capsys):
    import shutil

    broken = shutil.copytree(tiny_search, tmp_path / "broken")
    result = next(broken.glob("trial_*/result.json"))
    result.write_text("{not json\n" + result.read_text())  # a torn last line would be a write in progress
    with pytest.raises(DataError, match=re.escape(str(result))):
        write_report([broken])
    for state in broken.glob("experiment_state-*.json"):
        state.unlink()
    capsys.readouterr()
    assert main(["report", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fer-tune: error:") and "experiment_state" in err and "\n" not in err
