"""`BestEpochOptunaSearch`: Ray's `OptunaSearch`, telling the study each trial's best epoch.

Ray's `OptunaSearch` tells the study a trial's *last* result. A trial is selected by its best epoch, so the
study is told that; a trial that ended before its `train.epochs` without an error (stopped by ASHA or by the
time budget) is told as `TrialState.PRUNED` (its per-epoch values already reached the study through
`OptunaSearch.on_trial_result`).

It is pickled into Ray's `tuner.pkl` and searcher state: a search saved before a rename loads through
`fer_tune.search.legacy_names`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from fer_tune.search.internals import (
    completed_trials,
    optuna_study,
    optuna_trial_id,
    optuna_trials,
    rebind_trial,
    set_optuna_study,
    set_trial_user_attr,
    study_backend,
)
from fer_tune.search.recovery import raise_if_storage_fault

LOST = (
    "fer_tune_lost"  # user attr of a study trial whose Ray trial was never saved (asked just before a kill)
)


class BestEpochOptunaSearch(OptunaSearch):
    """OptunaSearch telling the study each trial's best value (per mode), early-stopped trials as pruned.

    Each study trial is tagged with its Ray trial id and phase (user attrs `ray_trial_id`, `phase`), which the
    dashboard shows and `fer-tune extend` reads. Restored from Ray's saved state, it reconciles the study
    (`optuna.db`, written at once) with that state (saved every few seconds): see `restore`.

    Args:
        *args: Ray's `OptunaSearch` arguments (`space`, `metric`, `mode`, `sampler`, ...).
        phase: the search phase the trials belong to (1, or an extension's number), tagged on each.
        **kwargs: Ray's `OptunaSearch` keyword arguments (`storage`, `study_name`, ...).
    """

    def __init__(self, *args: Any, phase: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fer_phase = phase

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """OptunaSearch's config, its study trial tagged with the Ray trial id and phase.

        Args:
            trial_id: Ray's trial id.

        Returns:
            The sampled config; None when there is none to give now.
        """
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = optuna_trials(self)[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("phase", getattr(self, "_fer_phase", 1))
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved state, then the study as `optuna.db` holds it now (the database of the folder being
        resumed: FolderStorage reopens it). The state may be up to one snapshot older than the database:
        - a study trial asked after the snapshot has no Ray trial (Ray starts a new one in its place): it is
          told FAIL and marked `fer_tune_lost`, so the study holds one live trial per Ray trial;
        - a trial the database already finished is not told again (Optuna refuses to update it).

        Args:
            checkpoint_path: Ray's saved searcher state.
        """
        super().restore(checkpoint_path)
        import optuna
        from optuna.trial import TrialState

        study = optuna_study(self)
        if study is None:
            return
        fresh = optuna.load_study(
            study_name=study.study_name, storage=study_backend(study), sampler=study.sampler
        )
        asked = optuna_trials(self)
        for ot_trial in asked.values():  # re-bound: the pickled study's trial cache may be stale
            rebind_trial(ot_trial, fresh)
        set_optuna_study(self, fresh)
        known = {optuna_trial_id(t) for t in asked.values()}
        for t in fresh.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if optuna_trial_id(t) not in known:
                set_trial_user_attr(fresh, t, LOST, "asked after Ray's last saved state")
                fresh.tell(t.number, state=TrialState.FAIL)
        finished = {optuna_trial_id(t) for t in fresh.get_trials(deepcopy=False) if t.state.is_finished()}
        for ray_id, ot_trial in asked.items():
            if optuna_trial_id(ot_trial) in finished:
                completed_trials(self).add(ray_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Report the epoch to the study (OptunaSearch) and track the trial's best value.

        Args:
            trial_id: Ray's trial id.
            result: the epoch's flattened result.
        """
        super().on_trial_result(trial_id, result)
        self._track(trial_id, result)
        self._state("_fer_step")[trial_id] = result.get("training_iteration")

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell the study the trial's best value, or PRUNED for one stopped before its `train.epochs`.

        Args:
            trial_id: Ray's trial id.
            result: its last result; None when Ray has none.
            error: whether the trial failed (told FAIL).

        Raises:
            StorageFault: the trial failed because the search folder's disk is full or read-only (the
                search ends, so that a resume continues the trial).
        """
        if error and optuna_study(self) is not None:
            # Ray tells the searcher before any callback: a trial that failed because the disk is full or
            # read-only must not be told FAIL (the resumed search continues it), so the search ends here.
            url = getattr(study_backend(optuna_study(self)), "url", "")  # optuna.db's, in the folder
            if url.startswith("sqlite:///"):
                raise_if_storage_fault(Path(url.removeprefix("sqlite:///")).parent)
        asked, told = optuna_trials(self), completed_trials(self)
        if result and not error and trial_id in asked and trial_id not in told:
            # Ray withholds the result on which the scheduler stopped a trial (ASHA at a rung, or at max_t)
            # from on_trial_result: it arrives only here.
            self._track(trial_id, result)
            best = self._state("_fer_best").pop(trial_id, None)
            if _epoch(result) < _planned_epochs(result):
                value, step = result.get(self.metric), result.get("training_iteration", 0)
                if _finite(value) and step != self._state("_fer_step").get(trial_id):
                    asked[trial_id].report(float(value), step)
                result = None  # OptunaSearch tells a trial without a result (and no error) as PRUNED
            elif best is not None:
                result = {**result, self.metric: best}
        self._state("_fer_best").pop(trial_id, None)
        self._state("_fer_step").pop(trial_id, None)
        super().on_trial_complete(trial_id, result=result, error=error)

    def _track(self, trial_id: str, result: dict[str, Any]) -> None:
        value = result.get(self.metric)
        if not _finite(value):
            return  # a NaN epoch is never the best one
        best = self._state("_fer_best").get(trial_id)
        if best is None or (value > best if self.mode == "max" else value < best):
            self._state("_fer_best")[trial_id] = float(value)

    def _state(self, name: str) -> dict[str, Any]:
        """Per-trial bookkeeping (`_fer_best`: best value so far; `_fer_step`: last step told to Optuna),
        saved with the searcher; set lazily, as a searcher restored from an older state file has none."""
        return self.__dict__.setdefault(name, {})


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _epoch(result: dict[str, Any]) -> float:
    epoch = result.get("epoch")
    return float(epoch) if isinstance(epoch, (int, float)) else math.inf


def _planned_epochs(result: dict[str, Any]) -> float:
    """The trial's `train.epochs` (the searcher gets flattened results: `config/train/epochs`)."""
    from fer_tune.training import TrainConfig

    epochs = result.get("config/train/epochs", (result.get("config") or {}).get("train", {}).get("epochs"))
    return float(epochs) if isinstance(epochs, (int, float)) else float(TrainConfig().epochs)
