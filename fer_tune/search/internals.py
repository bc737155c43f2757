"""Every private name of Ray and Optuna that fer-tune reaches, behind one small function each.

No other module of fer-tune (tests included) touches a `_`-prefixed name of either library: it calls these.
Each was checked with ray 2.60.0 and optuna 5.0.0 (pyproject.toml bounds them below ray 3 and optuna 6), and
`tests/test_internals.py` checks each on real objects, failing with the installed release named.

private name                      library: class or module                                   checked
--------------------------------- ---------------------------------------------------------- ------------
_ot_study (read and set)          ray.tune.search.optuna.OptunaSearch                        ray 2.60.0
_ot_trials, _completed_trials     ray.tune.search.optuna.OptunaSearch                        ray 2.60.0
_TrainingResult                   ray.train._internal.session                                ray 2.60.0
_latest_checkpoint_result         ray.train._internal.checkpoint_manager._CheckpointManager  ray 2.60.0
_checkpoint_results               ray.train._internal.checkpoint_manager._CheckpointManager  ray 2.60.0
StorageContext (tests)            ray.train._internal.storage                                ray 2.60.0
_default_placement_group_factory  ray.tune.experiment.Trial (tests)                          ray 2.60.0
its logger's name                 ray._private.authentication.authentication_token_setup     ray 2.60.0
RAY_worker_niceness (environment) ray._private.ray_constants.RAY_WORKER_NICENESS             ray 2.60.0
_storage                          optuna.Study                                               optuna 5.0.0
_backend                          optuna.storages._cached_storage._CachedStorage             optuna 5.0.0
_trial_id                         optuna.trial.FrozenTrial, optuna.trial.Trial               optuna 5.0.0
_get_trials (_StudyView's too)    optuna.Study (TPE and GP samplers read trials through it)  optuna 5.0.0

Ray and Optuna are imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

from typing import Any

RAY_CHECKED = "2.60.0"
OPTUNA_CHECKED = "5.0.0"

# Ray's notice that it enabled token authentication is logged by this module's `logger` (`__name__`).
AUTH_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"

# Ray's `worker_niceness` (its C++ config, read from the environment when the raylet starts; default 15): how
# many steps nicer than the raylet its workers run (`ray._private.ray_constants.RAY_WORKER_NICENESS`).
WORKER_NICENESS_ENV = "RAY_worker_niceness"

# Private methods of a library class that a fer-tune class defines in its place (they cannot move here):
# fer-tune class.method -> (library module, class, method). See `missing_overrides`.
OVERRIDES = {
    # TPESampler and GPSampler read a study's trials through `Study._get_trials`; `_StudyView` filters them.
    "fer_tune.search.sampler._StudyView._get_trials": ("optuna.study", "Study", "_get_trials"),
}


# -- Ray Tune's OptunaSearch ------------------------------------------------------------------------------


def optuna_study(searcher: Any) -> Any:
    """The Optuna study an `OptunaSearch` asks and tells (`OptunaSearch._ot_study`; None before its space is
    set). Checked with ray 2.60.0."""
    return searcher._ot_study


def set_optuna_study(searcher: Any, study: Any) -> None:
    """Make `searcher` ask and tell `study` (sets `OptunaSearch._ot_study`). Checked with ray 2.60.0."""
    searcher._ot_study = study


def optuna_trials(searcher: Any) -> dict[str, Any]:
    """Ray trial id -> the `optuna.trial.Trial` the searcher asked for it (`OptunaSearch._ot_trials`, the
    searcher's own dict: changes reach it). Checked with ray 2.60.0."""
    return searcher._ot_trials


def completed_trials(searcher: Any) -> set[str]:
    """The Ray trial ids the searcher has told the study (`OptunaSearch._completed_trials`, its own set: an id
    added is not told again). Checked with ray 2.60.0."""
    return searcher._completed_trials


# -- Ray Train's checkpoint bookkeeping ----------------------------------------------------------------------


def training_result(checkpoint: Any, metrics: dict[str, Any]) -> Any:
    """A (checkpoint, metrics) pair as Ray's checkpoint manager keeps it (`_TrainingResult`, in
    `ray.train._internal.session`). Checked with ray 2.60.0."""
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint, metrics)


def set_latest_checkpoint_result(manager: Any, result: Any) -> None:
    """Make `result` a trial's latest and only kept checkpoint (`_CheckpointManager._latest_checkpoint_result`
    and `_checkpoint_results`, in `ray.train._internal.checkpoint_manager`; `manager` is a trial's
    `run_metadata.checkpoint_manager`). Checked with ray 2.60.0."""
    manager._latest_checkpoint_result = result
    manager._checkpoint_results = [result]


def storage_context(storage_path: str, experiment_dir_name: str, trial_dir_name: str) -> Any:
    """A trial's storage (`StorageContext`, in `ray.train._internal.storage`), for the tests that build a
    `Trial` as Ray's controller does. Checked with ray 2.60.0."""
    from ray.train._internal.storage import StorageContext

    return StorageContext(
        storage_path=storage_path, experiment_dir_name=experiment_dir_name, trial_dir_name=trial_dir_name
    )


def default_placement_group_factory(trial: Any) -> Any:
    """The placement group factory Ray's controller gives a trial it adds (`Trial._default_placement_group_
    factory`), for the tests that build a `Trial`. Checked with ray 2.60.0."""
    return trial._default_placement_group_factory


# -- Optuna's study, storage and trials ----------------------------------------------------------------------


def study_storage(study: Any) -> Any:
    """The storage a study and its trials write through (`Study._storage`: for an RDB storage, Optuna's
    `_CachedStorage` around it). Checked with optuna 5.0.0."""
    return study._storage


def study_backend(study: Any) -> Any:
    """The storage a study was created on: an RDB storage unwrapped from Optuna's cache
    (`_CachedStorage._backend`), any other the study's own. Checked with optuna 5.0.0."""
    storage = study._storage
    return getattr(storage, "_backend", storage)


def optuna_trial_id(trial: Any) -> int:
    """A trial's id in its storage (`FrozenTrial._trial_id`, `Trial._trial_id`; not its `number`). Checked
    with optuna 5.0.0."""
    return trial._trial_id


def set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attr of a study trial given as a `FrozenTrial` (Optuna sets them only through a `Trial`):
    `Study._storage.set_trial_user_attr(FrozenTrial._trial_id, ...)`. Checked with optuna 5.0.0."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def rebind_trial(trial: Any, study: Any) -> None:
    """Make an `optuna.trial.Trial` report to `study` (a reloaded copy of its own): `Trial.study` and
    `Trial.storage`, which Optuna sets to `Study._storage`. Checked with optuna 5.0.0."""
    trial.study, trial.storage = study, study._storage


def study_trials(study: Any, *args: Any, **kwargs: Any) -> list[Any]:
    """`Study._get_trials(deepcopy, states, use_cache)`: the study's trials as its samplers read them. Checked
    with optuna 5.0.0."""
    return study._get_trials(*args, **kwargs)


def missing_overrides() -> list[str]:
    """The entries of `OVERRIDES` whose library method is gone: each is a fer-tune method nothing calls any
    more (e.g. trials `_StudyView` hides would steer TPE)."""
    import importlib

    missing = []
    for ours, (module, cls, method) in OVERRIDES.items():
        if not hasattr(getattr(importlib.import_module(module), cls), method):
            missing.append(f"{ours}: {module}.{cls} has no {method}")
    return missing
