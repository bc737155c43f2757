"""What fer-tune adds to Ray Tune's search loop: Optuna told each trial's best epoch, and a time budget whose
stops are recorded.

- `BestEpochOptunaSearch`: Ray's `OptunaSearch` tells the study a trial's *last* result. A trial is selected
  by its best epoch, so the study is told that; a trial that ended before its `train.epochs` without an error
  (stopped by ASHA or by the time budget) is told as `TrialState.PRUNED` (its per-epoch values already reached
  the study through `OptunaSearch.on_trial_result`).
- `BudgetStopper`: Ray's `TimeoutStopper` (it stops running trials too), remembering that it fired.
- `StuckStopper`: Ray's `TrialPlateauStopper` for a trial that collapsed to predicting one class: ASHA lets
  the first trial to reach each rung through, so one such trial could otherwise spend a CPU search's budget.
- `StopLog`: a driver-side callback that writes `stopped_by.json` in the search folder (trial id -> "time
  budget" or "timed out") so the results tables can tell a trial cut by the budget from one ASHA stopped. Ray
  stops those trials without telling the searcher either: StopLog tells it, so Optuna records them as pruned.
  It also stops a trial that has not reported for `--trial-timeout` (a hung trial: its actor is killed, so
  Ray ends it as failed, and retries it from its last checkpoint under `--max-failures`), and ends the search
  with one error when a trial failed because the results disk is full or read-only (`fer_tune.faults`).

These objects are pickled into Ray's `tuner.pkl` and searcher state: keep their names and modules.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optuna import Study
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import TimeoutStopper, TrialPlateauStopper

from fer_tune.faults import heal_stale_checkpoint, keep_whole_state, mark_loop_running, raise_if_storage_fault
from fer_tune.folder import FOLDER_ENV, STOPPED_BY_FILE, SearchFolder
from fer_tune.results import STUCK, TIME_BUDGET, TIMED_OUT

LOST = (
    "fer_tune_lost"  # user attr of a study trial whose Ray trial was never saved (asked just before a kill)
)


class BestEpochOptunaSearch(OptunaSearch):
    """OptunaSearch telling the study each trial's best value (per mode), early-stopped trials as pruned.

    Each study trial is tagged with its Ray trial id and phase (user attrs `ray_trial_id`, `phase`), which the
    dashboard shows and `fer-tune extend` reads. Restored from Ray's saved state, it reconciles the study
    (`optuna.db`, written at once) with that state (saved every few seconds): see `restore`.
    """

    def __init__(self, *args: Any, phase: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fer_phase = phase

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        if config is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            ot_trial.set_user_attr("phase", getattr(self, "_fer_phase", 1))
        return config

    def restore(self, checkpoint_path: str) -> None:
        """Ray's saved state, then the study as `optuna.db` holds it now (the database of the folder being
        resumed: FolderStorage reopens it). The state may be up to one snapshot older than the database:
        - a study trial asked after the snapshot has no Ray trial (Ray starts a new one in its place): it is
          told FAIL and marked `fer_tune_lost`, so the study holds one live trial per Ray trial;
        - a trial the database already finished is not told again (Optuna refuses to update it).
        """
        super().restore(checkpoint_path)
        import optuna
        from optuna.trial import TrialState

        study = self._ot_study
        if study is None:
            return
        fresh = optuna.load_study(
            study_name=study.study_name, storage=study._storage._backend, sampler=study.sampler
        )
        for ot_trial in self._ot_trials.values():  # re-bound: the pickled study's trial cache may be stale
            ot_trial.study, ot_trial.storage = fresh, fresh._storage
        self._ot_study = fresh
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in fresh.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t._trial_id not in known:
                fresh._storage.set_trial_user_attr(t._trial_id, LOST, "asked after Ray's last saved state")
                fresh.tell(t.number, state=TrialState.FAIL)
        finished = {t._trial_id for t in fresh.get_trials(deepcopy=False) if t.state.is_finished()}
        for ray_id, ot_trial in self._ot_trials.items():
            if ot_trial._trial_id in finished:
                self._completed_trials.add(ray_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        super().on_trial_result(trial_id, result)
        self._track(trial_id, result)
        self._state("_fer_step")[trial_id] = result.get("training_iteration")

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error and self._ot_study is not None:
            # Ray tells the searcher before any callback: a trial that failed because the disk is full or
            # read-only must not be told FAIL (the resumed search continues it), so the search ends here.
            storage = self._ot_study._storage
            url = getattr(getattr(storage, "_backend", storage), "url", "")  # optuna.db's, in the folder
            if url.startswith("sqlite:///"):
                raise_if_storage_fault(Path(url.removeprefix("sqlite:///")).parent)
        if result and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
            # Ray withholds the result on which the scheduler stopped a trial (ASHA at a rung, or at max_t)
            # from on_trial_result: it arrives only here.
            self._track(trial_id, result)
            best = self._state("_fer_best").pop(trial_id, None)
            if _epoch(result) < _planned_epochs(result):
                value, step = result.get(self.metric), result.get("training_iteration", 0)
                if _finite(value) and step != self._state("_fer_step").get(trial_id):
                    self._ot_trials[trial_id].report(float(value), step)
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
    from fer_tune.config import TrainConfig

    epochs = result.get("config/train/epochs", (result.get("config") or {}).get("train", {}).get("epochs"))
    return float(epochs) if isinstance(epochs, (int, float)) else float(TrainConfig().epochs)


class InSpaceSampler(BaseSampler):
    """Optuna's TPE learning only from the trials the current phase's space could have proposed.

    `fer-tune extend` with a narrower space keeps earlier trials outside it in the study (and the results),
    but they must not steer the sampler: TPE is shown the study without them (`outside`: trial numbers).
    """

    def __init__(self, seed: int | None, outside: Iterable[int] = ()) -> None:
        self._tpe = TPESampler(seed=seed)
        self._outside = frozenset(outside)

    def _view(self, study: Study) -> Any:
        return _StudyView(study, self._outside) if self._outside else study

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._tpe.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        return self._tpe.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        return self._tpe.sample_independent(self._view(study), trial, name, distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._tpe.before_trial(self._view(study), trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        self._tpe.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


class _StudyView:
    """A study whose trial lists leave out some trial numbers (everything else is the study's)."""

    def __init__(self, study: Study, hidden: frozenset[int]) -> None:
        self._study, self._hidden = study, hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in self._study._get_trials(*args, **kwargs) if t.number not in self._hidden]

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if t.number not in self._hidden]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class BudgetStopper(TimeoutStopper):
    """Ray's TimeoutStopper (stops every trial when the budget is spent) that remembers having fired."""

    fired: bool = False

    def stop_all(self) -> bool:
        self.fired = super().stop_all() or self.fired
        return self.fired


class StuckStopper(TrialPlateauStopper):
    """Stops a trial whose val_acc stayed flat (std < 0.01) for `epochs` epochs at or below `chance`.

    `chance`: the majority class's share plus 5 points, the accuracy of a model that answers one class.
    """

    def __init__(self, epochs: int, chance: float) -> None:
        # Ray's threshold is one the metric must have *reached* to be stopped: for "at or below chance" it is
        # given as a minimised one (a val_acc above `chance` is never stopped).
        super().__init__(
            "val_acc", std=0.01, num_results=epochs, grace_period=epochs, metric_threshold=chance, mode="min"
        )

    def __call__(self, trial_id: str, result: dict) -> bool:
        stop = super().__call__(trial_id, result)
        if stop:
            print(f"fer-tune: trial {trial_id}: val_acc stuck at chance level; stopping it")
            _record_ids([trial_id], STUCK, None)
        return stop


class StopLog(Callback):
    """Records the trials fer-tune stopped in `<search>/stopped_by.json` and tells the searcher; stops hung
    trials; ends the search when the results disk refuses writes.

    The time budget: Ray stops those trials without `on_trial_complete` (for callbacks and searchers alike),
    so the trials that had not ended at the start of the step in which the budget ran out are the ones it
    stopped. This runs at the end of that step, before Ray's final save of the searcher state.

    `trial_timeout_s`: a running trial with no report for that long (counted from its start or last report) is
    stopped by killing its actor, which Ray handles as a failed trial; it is recorded as timed out.
    """

    def __init__(
        self, stopper: BudgetStopper | None, searcher: Any = None, trial_timeout_s: float | None = None
    ):
        self.stopper = stopper
        self.searcher = searcher  # told the stopped trials as OptunaSearch is told ASHA's (pruned)
        self.trial_timeout_s = trial_timeout_s
        self.ended: set[str] = set()
        self.logged = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        mark_loop_running()  # Ray Tune's SIGINT handler is installed: see fer_tune.faults.interrupts
        checked = self.__dict__.setdefault("_fer_checked", set())  # once per trial and process
        for t in trials:
            if t.trial_id not in checked and t.status in ("PENDING", "PAUSED", "ERROR"):
                checked.add(t.trial_id)
                healed = heal_stale_checkpoint(t)
                if healed:
                    print(f"fer-tune: {healed}", file=sys.stderr)
        if self.stopper is not None and not self.stopper.fired:
            self.ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        if getattr(self, "trial_timeout_s", None):  # absent in a StopLog pickled by an older fer-tune
            self._stop_hung(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if trials and _local(trials[0]):
            keep_whole_state(Path(trials[0].path).parent, self.__dict__.setdefault("_fer_state", {}))
        if self.stopper is None or not self.stopper.fired or self.logged:
            return
        self.logged = True
        cut = [t for t in trials if t.trial_id not in self.ended and t.status == "TERMINATED"]
        if not cut:
            return
        if self.searcher is not None:
            from ray.tune.utils import flatten_dict

            for t in cut:
                self.searcher.on_trial_complete(t.trial_id, result=flatten_dict(t.last_result or {}))
        _record(cut, TIME_BUDGET)

    # -- hung trials --------------------------------------------------------------------------------------

    def _seen(self) -> dict[str, float]:
        """Trial id -> monotonic time of its start or last report (this process's clock: not pickled)."""
        return self.__dict__.setdefault("_fer_seen", {})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_fer_")}  # this process's

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._seen()[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._seen()[trial.trial_id] = time.monotonic()

    def _stop_hung(self, trials: list) -> None:
        import ray

        now, seen = time.monotonic(), self._seen()
        for t in trials:
            if t.status != "RUNNING":
                seen.pop(t.trial_id, None)
                continue
            since = seen.setdefault(t.trial_id, now)
            actor = t.temporary_state.ray_actor
            if now - since > self.trial_timeout_s and actor is not None:
                print(f"fer-tune: trial {t.trial_id}: no report for {self.trial_timeout_s:g} s; stopping it")
                _record([t], TIMED_OUT)
                seen.pop(t.trial_id)
                # Ray has no per-trial stopper that runs without a result; a killed actor is a failed trial.
                ray.kill(actor, no_restart=True)

    # -- a full or read-only results disk -----------------------------------------------------------------

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _check_storage(trial)  # random and grid searches (OptunaSearch raised before this)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _check_storage(trial)  # --max-failures: a retry would fail the same way


def _local(trial: Any) -> bool:
    """Whether the trial's experiment folder is on a local disk (not in an object store)."""
    from pyarrow.fs import LocalFileSystem

    return isinstance(trial.storage.storage_filesystem, LocalFileSystem)


def _check_storage(trial: Any) -> None:
    """StorageFault when the trial's experiment folder is on a local disk that refuses writes."""
    if _local(trial):  # an object store: no disk to probe
        raise_if_storage_fault(Path(trial.path).parent)


def _record(trials: list, cause: str) -> None:
    """Add `trial id -> cause` to the search's `stopped_by.json` (atomically)."""
    _record_ids([t.trial_id for t in trials], cause, Path(trials[0].path).parent)


def _record_ids(ids: list[str], cause: str, experiment: Path | None) -> None:
    # The search folder the driver works in (a remote search's mirror), else found from the trial: wherever
    # it was resumed from (a phase's trials sit in phase<N>/ below it).
    here = os.environ.get(FOLDER_ENV)
    if not here and experiment is None:
        return
    folder = SearchFolder(here) if here else SearchFolder.of_experiment(experiment)
    stopped = folder.stopped_by() | dict.fromkeys(ids, cause)
    path = folder / STOPPED_BY_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(stopped, indent=1) + "\n")
    os.replace(tmp, path)
