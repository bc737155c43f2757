"""Honest selection: trials see Training and PublicTest only and are ranked by the configured metric's best
epoch; Optuna learns best values and pruned trials; the time budget stops running trials and says so."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_fer
from optuna.trial import TrialState

from fer_tune.analysis import write_report
from fer_tune.analysis.report import budget
from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.search import export_config, load_results, parse_space
from fer_tune.search import runner as search
from fer_tune.search.internals import optuna_study
from fer_tune.search.space import METRIC_MODES
from fer_tune.training import METRIC_KEYS

SMOKE = Path(__file__).resolve().parents[1] / "results" / "smoke-cpu"
TINY = {"model": {"arch": "cnn", "kernels": [4], "head_width": 0}, "train": {"epochs": 3, "warmup_epochs": 0}}


def test_every_reported_metric_has_a_known_direction_or_needs_a_mode() -> None:
    assert set(METRIC_MODES) == set(METRIC_KEYS)
    assert METRIC_MODES["val_acc"] == "max" and METRIC_MODES["val_loss"] == "min"
    assert parse_space({**TINY, "search": {"metric": "val_loss"}}).search.mode == "min"
    assert parse_space({**TINY, "search": {"metric": "lr", "mode": "min"}}).search.mode == "min"


def test_data_without_publictest_stops_the_search_before_ray(tmp_path: Path, monkeypatch, capsys) -> None:
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for data without PublicTest")

    monkeypatch.setattr(search, "ray_session", no_ray)
    csv = save_csv(make_fer({"Training": 2, "PrivateTest": 2}), tmp_path / "fer2013.csv")
    space = tmp_path / "s.yaml"
    space.write_text(yaml.safe_dump(TINY))
    argv = ["--space", str(space), "--data", str(csv), "--gpus", "0", "--results", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"fer-tune: error: {csv}: no PublicTest images"), err
    assert "selects on PublicTest" in err
    assert not any((tmp_path / "r").iterdir())  # test-written (writable), but no search folder in it


def _searcher(mode: str = "max", metric: str = "val_acc"):
    from fer_tune.search import BestEpochOptunaSearch

    space = parse_space(TINY | {"train": {**TINY["train"], "lr": {"loguniform": [1e-3, 0.1]}}})
    return BestEpochOptunaSearch(space=space.define_by_run(), metric=metric, mode=mode, seed=0)


def _result(epoch: int, value: float, metric: str = "val_acc", epochs: int = 3) -> dict:
    """A flattened result as Ray gives it to the searcher."""
    return {metric: value, "epoch": epoch, "training_iteration": epoch, "config/train/epochs": epochs}


def test_optuna_learns_the_best_epoch_and_early_stops_as_pruned() -> None:
    searcher = _searcher()
    for t in ("done", "late", "stopped", "failed"):
        searcher.suggest(t)
    # As Ray calls it: the result on which the scheduler stops a trial (ASHA at a rung or at max_t) reaches
    # on_trial_complete only, not on_trial_result.
    for epoch, v in enumerate([0.5, 0.7], 1):
        searcher.on_trial_result("done", _result(epoch, v))
        searcher.on_trial_result("late", _result(epoch, v - 0.2))
    searcher.on_trial_complete("done", _result(3, 0.6))
    searcher.on_trial_complete("late", _result(3, 0.65))
    searcher.on_trial_result("stopped", _result(1, 0.45))
    searcher.on_trial_complete("stopped", _result(2, 0.4))  # stopped after 2 of its 3 epochs
    searcher.on_trial_complete("failed", error=True)
    done, late, stopped, failed = optuna_study(searcher).get_trials(deepcopy=False)
    assert done.state == TrialState.COMPLETE and done.value == 0.7  # not the last epoch's 0.6
    assert late.state == TrialState.COMPLETE and late.value == 0.65
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 0.45, 2: 0.4}
    assert failed.state == TrialState.FAIL


def test_optuna_best_epoch_follows_the_mode() -> None:
    searcher = _searcher("min", "val_loss")
    searcher.suggest("t")
    for epoch, v in enumerate([1.5, 1.1], 1):
        searcher.on_trial_result("t", _result(epoch, v, "val_loss"))
    searcher.on_trial_complete("t", _result(3, 1.3, "val_loss"))
    assert optuna_study(searcher).get_trials()[0].value == 1.1


def test_budget_does_not_count_time_budget_cuts_as_savings_of_early_stopping() -> None:
    trials = pd.DataFrame(
        {
            "stop_reason": ["completed", "stopped by ASHA", "stopped by time budget"],
            "epochs": [10, 2, 4],
            "max_epochs": [10, 10, 10],
            "seconds": [10.0, 2.0, 4.0],
        }
    )
    b = budget(trials)
    assert b["epochs_saved_by_asha"] == 8 and b["epochs_without_early_stopping"] == 10 + 10 + 4
    assert b["trials_cut_by_time_budget"] == 1 and b["epochs_cut_by_time_budget"] == 6
    assert b["seconds_without_early_stopping"] == pytest.approx(24.0)


@pytest.fixture
def smoke_copy(tmp_path: Path) -> Path:
    """A copy of the committed smoke-cpu search (made before fer-tune wrote its own status files)."""
    return Path(shutil.copytree(SMOKE, tmp_path / "smoke-cpu"))


def test_results_export_and_report_rank_by_the_configured_metric(smoke_copy: Path, tmp_path: Path) -> None:
    space = yaml.safe_load((smoke_copy / "space.yaml").read_text())
    space["search"].update(metric="val_loss", mode="min")
    (smoke_copy / "space.yaml").write_text(yaml.safe_dump(space))
    trials, history = load_results(smoke_copy)
    best_loss = history.groupby("trial_id")["val_loss"].min().sort_values(kind="stable")
    assert trials["trial_id"].tolist() == best_loss.index.tolist()
    assert trials["best_val_loss"].tolist() == pytest.approx(best_loss.tolist())
    assert "best_val_acc" in trials and "last_val_loss" in trials
    exported = yaml.safe_load(export_config(smoke_copy, out=tmp_path / "best.yaml").read_text())
    assert exported["provenance"]["trial_id"] == best_loss.index[0]
    assert exported["provenance"]["val_loss"] == pytest.approx(best_loss.iloc[0])
    text = write_report([smoke_copy], out_dir=tmp_path / "report").read_text()
    assert "ranked by the best epoch's val_loss (min)" in text


def test_the_committed_search_still_reads_as_it_did(smoke_copy: Path) -> None:
    trials, _ = load_results(smoke_copy)
    before = pd.read_csv(SMOKE / "trials.csv")
    # Config keys added since (with their defaults), the phase and the nodes add columns; nothing else.
    added = {"precision", "class_weights", "loss", "focal_gamma", "sampler"}
    added |= {"teacher", "distill_alpha", "distill_temperature"}
    added |= {"plateau_metric"}
    added |= {"snapshots", "ema", "sam"}
    new = {f"config/train/{k}" for k in added} | {"config/model/res_blocks", "phase", "node_ids"}
    new |= {f"config/augment/{k}" for k in ("aspect", "shift", "views")}
    assert set(trials.columns) - set(before.columns) == new
    assert (trials["phase"] == 1).all()
    assert [c for c in trials.columns if c in set(before.columns)] == before.columns.tolist()
    for col in ("trial_id", "status", "stop_reason", "best_epoch", "epochs"):
        assert trials[col].tolist() == before[col].tolist(), col
    assert trials["best_val_acc"].tolist() == pytest.approx(before["best_val_acc"].tolist())


# ------------------------------------------------------------------------------------------ on a real Ray


@pytest.mark.ray
@pytest.mark.slow
def test_trials_are_given_no_privatetest(ray_cluster, monkeypatch) -> None:
    seen = {}

    def capture(config, data, resources):
        seen["splits"] = data.splits

    from fer_tune.search import trainable

    monkeypatch.setattr(trainable, "fer_trial", capture)
    space = parse_space({**TINY, "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0}})
    data = make_fer({"Training": 2, "PublicTest": 2, "PrivateTest": 2})
    trainable.make_trainable(space, data)({})  # what with_parameters fetches from the object store for one
    assert seen["splits"] == ["Training", "PublicTest"]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_time_budget_stops_running_trials_and_says_so(ray_cluster, tmp_path: Path, capsys) -> None:
    # 2,000 faces: 500 epochs of 20 (one step each) fit the 30 s on a fast CPU (seen in CI, 2026-12-02)
    data = make_fer({"Training": 2000, "PublicTest": 6, "PrivateTest": 6})
    csv = save_csv(data, tmp_path / "fer2013.csv")
    space = {
        **TINY,
        "train": {**TINY["train"], "epochs": 500, "batch_size": 32, "lr": {"loguniform": [1e-3, 0.1]}},
        "augment": {"crop": 0, "rotation": 0},
        # ASHA on, but it could only stop a trial after 500 epochs: whatever stops these is the budget.
        "search": {"num_samples": 2, "time_budget": 30, "scheduler": {"type": "asha", "grace_period": 500}},
        "resources": {"cpus_per_trial": 1},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    folder = tmp_path / "r" / "budget"
    argv = ["--space", str(tmp_path / "s.yaml"), "--data", str(csv), "--gpus", "0", "--results"]
    assert main([*argv, str(folder.parent), "--name", "budget"]) == 0  # finished, not interrupted (130)
    assert json.loads((folder / "fer_tune.json").read_text())["finished"] is True
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 2
    assert (trials["stop_reason"] == "stopped by time budget").all(), trials["stop_reason"].tolist()
    assert (trials["epochs"] < 500).all() and (trials["epochs"] >= 1).any()
    text = write_report([folder], out_dir=tmp_path / "report").read_text()
    ran = int((trials["epochs"] > 0).sum())  # under load a trial may not finish an epoch in the budget
    assert "ASHA stopped trials 0 epochs early" in text
    assert f"The time budget cut {ran} running trials" in text
    # Ray stops them without telling the searcher; StopLog tells Optuna they were pruned.
    with open(next(folder.glob("searcher-state-*.pkl")), "rb") as f:  # our own search: trusted
        study = pickle.load(f)["_ot_study"]
    assert [t.state for t in study.get_trials()] == [TrialState.PRUNED] * 2


def test_trials_the_search_never_started_are_not_blamed_on_asha() -> None:
    """The committed GPU search: 3 trials completed; Ray ended it before 4 others ran an epoch."""
    trials, _ = load_results(Path(__file__).resolve().parents[1] / "results" / "reference")
    assert sorted(trials["stop_reason"]) == ["completed"] * 3 + ["ended before its first epoch"] * 4
    assert (trials[trials["stop_reason"] == "completed"]["epochs"] == 30).all()


def test_stuck_stopper_stops_only_flat_trials_at_chance() -> None:
    from fer_tune.search import StuckStopper

    stuck = StuckStopper(3, chance=0.30)
    assert [stuck("a", {"val_acc": v}) for v in (0.26, 0.257, 0.254)] == [False, False, True]
    assert [stuck("b", {"val_acc": v}) for v in (0.20, 0.24, 0.28, 0.31)] == [False] * 4  # learning
    assert [stuck("c", {"val_acc": v}) for v in (0.55, 0.551, 0.552)] == [False] * 3  # flat, far above chance


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trials_stuck_at_chance_are_stopped_and_said_so(ray_cluster, tmp_path: Path) -> None:
    csv = save_csv(make_fer({"Training": 20, "PublicTest": 6}), tmp_path / "fer2013.csv")
    space = {
        "model": {"arch": "cnn", "kernels": [4], "head_width": 0, "batchnorm": False},
        # A learning rate that moves nothing: every epoch scores the same, near chance (1 in 7 here).
        "train": {"epochs": 6, "batch_size": 32, "warmup_epochs": 0, "lr": {"loguniform": [1e-12, 1e-11]}},
        "augment": {"crop": 0, "rotation": 0},
        "search": {"num_samples": 2, "scheduler": "none", "stuck_epochs": 3},
        "resources": {"cpus_per_trial": 1},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    folder = tmp_path / "r" / "stuck"
    argv = ["--space", str(tmp_path / "s.yaml"), "--data", str(csv), "--gpus", "0", "--results"]
    assert main([*argv, str(folder.parent), "--name", "stuck"]) == 0
    trials = pd.read_csv(folder / "trials.csv")
    assert (trials["stop_reason"] == "stuck at chance").all(), trials[["stop_reason", "best_val_acc"]]
    assert (trials["epochs"] == 3).all()
