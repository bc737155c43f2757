"""The search folder module: its state record, phases, study storage, and the space translations it reads."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import optuna
import pytest

from fer_tune.base import DataError
from fer_tune.search import InSpaceSampler, Phase, SearchFolder, SearchState, parse_space
from fer_tune.search.conversion import config_distributions, outside
from fer_tune.search.internals import study_backend
from fer_tune.search.study import STUDY_DB_ENV, study_storage

SMOKE = Path(__file__).resolve().parents[1] / "results" / "smoke-cpu"


def test_state_round_trips_atomically_and_reads_the_old_format(tmp_path: Path) -> None:
    folder = SearchFolder(tmp_path / "s")
    folder.path.mkdir()
    with pytest.raises(DataError, match="not a fer-tune search folder"):
        folder.read_state()
    state = SearchState(
        "s", "a.yaml", "/d", "2026-01-01T00:00:00", study="s", phases=[Phase(1, "a.yaml", 8, "t")]
    )
    folder.write_state(state)
    assert folder.read_state() == state
    assert [p.name for p in folder.path.iterdir()] == ["fer_tune.json"]  # no temporary file left
    # The committed search predates phases and the study: it reads as one phase, with no study.
    old = SearchFolder(SMOKE).read_state()
    assert len(old.phases) == 1 and old.phases[0].number == 1 and old.study is None
    assert old.finished == json.loads((SMOKE / "fer_tune.json").read_text())["finished"]


def test_phases_are_ray_experiments_inside_the_search_folder(tmp_path: Path) -> None:
    folder = SearchFolder(tmp_path / "s")
    (folder.path / "phase2").mkdir(parents=True)
    (folder.path / "phase10").mkdir()
    (folder.path / "phaseX").mkdir()
    (folder.path / "fer_tune.json").write_text("{}")
    assert [n for n, _ in folder.experiment_dirs()] == [1, 2, 10]
    assert folder.experiment_dir(2) == folder.path / "phase2"
    assert SearchFolder.of_experiment(folder.path / "phase2").path == folder.path
    assert SearchFolder.of_experiment(folder.path).path == folder.path


def test_study_storage_reopens_the_database_of_the_folder_being_resumed(tmp_path: Path, monkeypatch) -> None:
    db = tmp_path / "a" / "optuna.db"
    db.parent.mkdir()
    study = optuna.create_study(study_name="s", storage=study_storage(db))
    study.enqueue_trial({"x": 1.0})
    study.optimize(lambda t: t.suggest_float("x", 0, 2), n_trials=1)
    blob = pickle.dumps(study)  # as Ray pickles the searcher, storage included
    shutil.move(tmp_path / "a", tmp_path / "b")  # the folder moved; its old path is gone
    monkeypatch.setenv(STUDY_DB_ENV, str(tmp_path / "b" / "optuna.db"))
    again = pickle.loads(blob)
    assert [t.params for t in optuna.load_study(study_name="s", storage=study_backend(again)).trials] == [
        {"x": 1.0}
    ]
    assert not (tmp_path / "a").exists()


SPACE = {
    "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "dropout": {"uniform": [0.0, 0.5]}},
    "train": {"epochs": 2, "lr": {"loguniform": [1e-3, 1e-1]}, "optimizer": "sgd"},
}


def test_a_trial_is_outside_a_narrower_space_by_its_first_differing_key() -> None:
    space = parse_space(SPACE)
    config = {"model": {"arch": "cnn", "kernels": [8, 8], "dropout": 0.1}, "train": {"epochs": 2, "lr": 0.01}}
    assert outside(space, config) is None
    assert (
        outside(space, {**config, "train": {"epochs": 2, "lr": 0.5}})
        == "train.lr 0.5 not in loguniform [0.001, 0.1]"
    )
    assert outside(space, {**config, "model": {**config["model"], "kernels": [16, 8]}}).startswith(
        "model.kernels.0"
    )
    assert outside(space, {**config, "train": {"epochs": 3, "lr": 0.01}}) == "train.epochs 3 is not 2"
    # A key the space fixes and the trial left at its default compares with that default.
    assert outside(space, {**config, "train": {"epochs": 2, "lr": 0.01, "optimizer": "adamw"}}).startswith(
        "train.optimizer"
    )


def test_the_space_declares_its_real_distributions() -> None:
    dists = config_distributions(parse_space(SPACE))
    assert dists["train.lr"].log and not dists["model.dropout"].log
    assert "model.kernels.0" not in dists  # per-layer items: tables show the whole list


def test_trials_outside_the_space_do_not_steer_the_sampler(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=study_storage(tmp_path / "optuna.db"))
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i in range(12):  # an earlier phase: 12 finished trials near 0.9
        study.add_trial(
            optuna.trial.create_trial(params={"x": 0.9 + i / 1000}, distributions={"x": dist}, value=i)
        )
    fresh = optuna.samplers.RandomSampler(seed=3).sample_independent(study, None, "x", dist)

    def first(sampler: optuna.samplers.BaseSampler) -> float:
        study.sampler = sampler
        trial = study.ask()
        value = trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return value

    # All earlier trials hidden: TPE has fewer than its 10 start-up trials and samples at random...
    assert first(InSpaceSampler(seed=3, outside=range(12))) == pytest.approx(fresh)
    # ...while shown them, it models them.
    assert first(InSpaceSampler(seed=3)) != pytest.approx(fresh)
