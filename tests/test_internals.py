"""`fer_tune.search.internals`: each private name of Ray and Optuna fer-tune reaches, on real objects.

No Ray cluster: the searcher, studies, storages and trials are built directly. A failure names the installed
release (the one that changed the name): fix that function in internals.py, not its callers.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState, create_trial
from ray.tune import Checkpoint, CheckpointConfig, PlacementGroupFactory
from ray.tune.experiment import Trial as RayTrial
from ray.tune.search.optuna import OptunaSearch

from fer_tune.search import InSpaceSampler, internals
from fer_tune.search import sampler as sampler_module
from fer_tune.search.internals import (
    AUTH_TOKEN_LOGGER,
    OPTUNA_CHECKED,
    RAY_CHECKED,
    WORKER_NICENESS_ENV,
    completed_trials,
    default_placement_group_factory,
    optuna_study,
    optuna_trial_id,
    optuna_trials,
    rebind_trial,
    set_latest_checkpoint_result,
    set_optuna_study,
    set_trial_user_attr,
    storage_context,
    study_backend,
    study_storage,
    study_trials,
    training_result,
)

ROOT = Path(__file__).resolve().parents[1]


def ray_changed(what: str) -> str:
    return f"ray {ray.__version__}: {what} (fer_tune/search/internals.py was checked with ray {RAY_CHECKED})"


def optuna_changed(what: str) -> str:
    return (
        f"optuna {optuna.__version__}: {what} "
        f"(fer_tune/search/internals.py was checked with optuna {OPTUNA_CHECKED})"
    )


def reach(call: Callable[[], Any], message: str) -> Any:
    """`call()`, failing with `message` when the private name it reaches is gone."""
    try:
        return call()
    except (AttributeError, ImportError, TypeError, KeyError) as e:
        pytest.fail(f"{message} [{type(e).__name__}: {e}]")


def _searcher() -> OptunaSearch:
    return OptunaSearch(space={"x": FloatDistribution(0, 1)}, metric="m", mode="max", seed=0)


def _db_study(tmp_path: Path) -> tuple[optuna.Study, RDBStorage]:
    storage = RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return optuna.create_study(study_name="s", storage=storage, direction="maximize"), storage


# -- Ray Tune's OptunaSearch ------------------------------------------------------------------------------


def test_optuna_study_is_the_study_the_searcher_asks() -> None:
    searcher = _searcher()
    why = ray_changed("OptunaSearch keeps its study in _ot_study no more; resume, extend and runner need it")
    study = reach(lambda: optuna_study(searcher), why)
    assert isinstance(study, optuna.Study), why
    searcher.suggest("a")
    assert [t.params.keys() for t in study.trials] == [{"x"}], why


def test_set_optuna_study_makes_the_searcher_ask_that_study() -> None:
    searcher = _searcher()
    before, other = optuna_study(searcher), optuna.create_study(direction="maximize")
    set_optuna_study(searcher, other)
    searcher.suggest("a")
    why = ray_changed("OptunaSearch no longer asks the study in _ot_study; a resumed search reloads it there")
    assert optuna_study(searcher) is other and len(other.trials) == 1 and not before.trials, why


def test_optuna_trials_maps_ray_trial_ids_to_the_trials_asked() -> None:
    searcher = _searcher()
    searcher.suggest("a")
    searcher.suggest("b")
    why = ray_changed("OptunaSearch no longer maps Ray trial ids to Optuna trials in _ot_trials")
    asked = reach(lambda: optuna_trials(searcher), why)
    assert set(asked) == {"a", "b"} and all(isinstance(t, Trial) for t in asked.values()), why
    assert [asked["a"].number, asked["b"].number] == [0, 1], why
    asked["b"] = asked.pop("a")  # the searcher's own dict: Ray tells the trial it maps to
    searcher.on_trial_complete("b", {"m": 0.5})
    assert [t.value for t in optuna_study(searcher).trials] == [0.5, None], why


def test_completed_trials_are_the_ones_ray_does_not_tell_again() -> None:
    searcher = _searcher()
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", {"m": 0.5})
    why = ray_changed("OptunaSearch no longer records told trials in _completed_trials; resume needs it")
    told = reach(lambda: completed_trials(searcher), why)
    assert told == {"a"}, why
    told.add("b")  # as BestEpochOptunaSearch.restore marks a trial optuna.db already finished
    searcher.on_trial_complete("b", {"m": 0.7})
    assert [t.state for t in optuna_study(searcher).trials] == [TrialState.COMPLETE, TrialState.RUNNING], why


# -- Ray Train's checkpoint bookkeeping ----------------------------------------------------------------------


def test_a_checkpoint_result_set_as_latest_is_what_the_trial_resumes_from(tmp_path: Path) -> None:
    why = ray_changed("ray.train._internal's StorageContext or _TrainingResult moved; healing needs it")
    storage = reach(lambda: storage_context(str(tmp_path), "exp", "trial_t1"), why)
    trial = RayTrial(
        "fer_trial",
        stub=True,
        trial_id="t1",
        storage=storage,
        checkpoint_config=CheckpointConfig(num_to_keep=3),
        placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
    )
    pg_why = ray_changed("Trial._default_placement_group_factory is gone; test_faults builds trials with it")
    pgf = reach(lambda: default_placement_group_factory(trial), pg_why)
    assert pgf == PlacementGroupFactory([{"CPU": 1}]), pg_why
    assert trial.storage.trial_dir_name == "trial_t1" and trial.storage.experiment_dir_name == "exp", why
    folders = [tmp_path / "exp" / "trial_t1" / f"checkpoint_00000{k}" for k in range(3)]
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True)
        result = reach(lambda k=k, f=folder: training_result(Checkpoint(str(f)), {"step": k}), why)
        assert result.checkpoint.path == str(folder) and result.metrics == {"step": k}, why
        if k:
            trial.on_checkpoint(result)
    manager = trial.run_metadata.checkpoint_manager
    set_latest_checkpoint_result(manager, training_result(Checkpoint(str(folders[0])), {"step": 9}))
    why = ray_changed("_CheckpointManager no longer keeps _latest_checkpoint_result and _checkpoint_results")
    assert trial.checkpoint.path == str(folders[0]), why
    assert trial.latest_checkpoint_result.metrics == {"step": 9}, why
    assert manager.best_checkpoint_result is manager.latest_checkpoint_result, why  # the kept list is [it]


def test_the_token_notice_logger_is_named_as_fer_tune_filters_it() -> None:
    why = ray_changed(f"{AUTH_TOKEN_LOGGER} is gone; fer-tune's filter of the token notice would do nothing")
    module = reach(lambda: importlib.import_module(AUTH_TOKEN_LOGGER), why)
    assert reach(lambda: module.logger.name, why) == AUTH_TOKEN_LOGGER, why


# -- Optuna's study, storage and trials ----------------------------------------------------------------------


def test_study_backend_is_the_storage_the_study_was_created_on(tmp_path: Path) -> None:
    study, storage = _db_study(tmp_path)
    why = optuna_changed("Study._storage._backend is not the RDB storage any more; restore reloads the study")
    assert reach(lambda: study_backend(study), why) is storage, why
    memory = optuna.create_study()
    assert study_backend(memory) is study_storage(memory), why


def test_study_storage_is_the_one_the_studys_trials_write_through(tmp_path: Path) -> None:
    study, _ = _db_study(tmp_path)
    trial = study.ask()
    why = optuna_changed("Study._storage is not the storage its trials write through")
    assert reach(lambda: study_storage(study), why) is trial.storage, why
    assert study_storage(study).get_trial(optuna_trial_id(trial)).number == trial.number, why


def test_optuna_trial_id_is_the_storage_id_of_a_trial(tmp_path: Path) -> None:
    study, storage = _db_study(tmp_path)
    asked = [study.ask() for _ in range(3)]
    why = optuna_changed("FrozenTrial._trial_id or Trial._trial_id is gone; restore and extend need it")
    ids = [reach(lambda t=t: optuna_trial_id(t), why) for t in study.trials]
    assert len(set(ids)) == 3 and ids == [optuna_trial_id(t) for t in asked], why
    assert [storage.get_trial(i).number for i in ids] == [0, 1, 2], why


def test_set_trial_user_attr_marks_the_study_trial(tmp_path: Path) -> None:
    study, storage = _db_study(tmp_path)
    study.ask()
    study.ask()
    frozen = study.get_trials(deepcopy=False)[1]
    why = optuna_changed("Study._storage.set_trial_user_attr(FrozenTrial._trial_id) no longer marks a trial")
    reach(lambda: set_trial_user_attr(study, frozen, "fer_tune_lost", "why"), why)
    again = optuna.load_study(study_name="s", storage=storage)
    assert [t.user_attrs for t in again.trials] == [{}, {"fer_tune_lost": "why"}], why


def test_a_rebound_trial_reports_to_its_new_study(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path / name}" for name in ("old.db", "new.db")]
    old, new = (optuna.create_study(study_name="s", storage=url) for url in urls)
    trial, twin = old.ask(), new.ask()  # the same storage id, in two databases
    assert optuna_trial_id(trial) == optuna_trial_id(twin)
    rebind_trial(trial, new)
    trial.report(0.3, 1)
    why = optuna_changed("Trial no longer writes through Trial.storage; restore re-binds trials to the study")
    assert trial.study is new and trial.storage is study_storage(new), why
    reported = [optuna.load_study(study_name="s", storage=url).trials[0].intermediate_values for url in urls]
    assert reported == [{}, {1: 0.3}], why


def test_study_trials_are_the_trials_samplers_read(tmp_path: Path) -> None:
    study, _ = _db_study(tmp_path)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    study.ask()
    why = optuna_changed("Study._get_trials(deepcopy, states, use_cache) is gone; InSpaceSampler needs it")
    states = (TrialState.COMPLETE,)
    done = reach(lambda: study_trials(study, deepcopy=False, states=states, use_cache=True), why)
    assert [t.number for t in done] == [0, 1], why
    assert [t.number for t in study_trials(study, deepcopy=False)] == [0, 1, 2], why


def test_tpe_reads_trials_through_the_view_that_hides_them(monkeypatch: pytest.MonkeyPatch) -> None:
    why = optuna_changed(
        "TPESampler no longer reads trials through Study._get_trials; trials outside an extended search's "
        "space would steer it (fer_tune.search.sampler._StudyView)"
    )
    assert internals.missing_overrides() == [], why
    study = optuna.create_study(sampler=InSpaceSampler(seed=0, outside=[0]))
    dist = FloatDistribution(0, 1)
    for k in range(12):
        study.add_trial(create_trial(params={"x": k / 12}, distributions={"x": dist}, value=k))
    seen: list[int] = []
    view_get_trials = sampler_module._StudyView._get_trials

    def spy(view: Any, *args: Any, **kwargs: Any) -> list[Any]:
        trials = view_get_trials(view, *args, **kwargs)
        seen.extend(t.number for t in trials)
        return trials

    monkeypatch.setattr(sampler_module._StudyView, "_get_trials", spy)
    study.ask({"x": dist})
    assert seen and 0 not in seen and 11 in seen, why  # TPE asked the view, which hid trial 0


# -- nowhere else --------------------------------------------------------------------------------------------

PRIVATE = {
    "_ot_study", "_ot_trials", "_completed_trials", "_TrainingResult", "_latest_checkpoint_result",
    "_checkpoint_results", "_default_placement_group_factory", "_storage", "_backend", "_trial_id",
    "_get_trials", "_study_id", "_cached_frozen_trial",
}  # fmt: skip


def test_the_worker_niceness_variable_is_the_one_ray_reads() -> None:
    module = "ray._private.ray_constants"
    constants = reach(lambda: importlib.import_module(module), ray_changed(f"{module} is gone"))
    found = reach(lambda: constants.RAY_WORKER_NICENESS, ray_changed("ray_constants.RAY_WORKER_NICENESS"))
    assert found == WORKER_NICENESS_ENV, ray_changed(f"worker niceness is read from {found}")


def test_no_module_but_internals_reaches_a_private_ray_or_optuna_name() -> None:
    """Attributes of those names, imports of `_`-prefixed Ray or Optuna modules, and their dotted names."""
    allowed = {ROOT / "fer_tune" / "search" / "internals.py", Path(__file__).resolve()}
    found = []
    for path in sorted([*(ROOT / "fer_tune").rglob("*.py"), *(ROOT / "tests").glob("*.py")]):
        if path in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            hit = (
                (isinstance(node, ast.Attribute) and node.attr in PRIVATE)
                or (isinstance(node, ast.ImportFrom) and _private_module(node.module or ""))
                or (isinstance(node, ast.Import) and any(_private_module(a.name) for a in node.names))
                or (isinstance(node, ast.Constant) and _private_module(node.value))
            )
            if hit:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, f"private Ray/Optuna names outside fer_tune/search/internals.py: {found}"


def _private_module(name: Any) -> bool:
    if not isinstance(name, str):
        return False
    parts = name.split(".")
    return parts[0] in ("ray", "optuna") and len(parts) > 1 and any(p.startswith("_") for p in parts[1:])
