"""`StopLog`: a driver-side callback that records why fer-tune stopped a trial, in `stopped_by.json`.

It writes trial id -> "time budget", "timed out" or "stuck at chance" in the search folder, so the results
tables can tell a trial cut by the budget from one ASHA stopped. Ray stops those trials without telling the
searcher: StopLog tells it, so Optuna records them as pruned. It also stops a trial that has not reported for
`--trial-timeout` (a hung trial: its actor is killed, so Ray ends it as failed, and retries it from its last
checkpoint under `--max-failures`), and ends the search with one error when a trial failed because the
results disk is full or read-only (`fer_tune.search.recovery`)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fer_tune.base import atomic_write_text
from fer_tune.search.budget_stopper import BudgetStopper, budget_fired
from fer_tune.search.folder import FOLDER_ENV, STOPPED_BY_FILE, SearchFolder
from fer_tune.search.recovery import keep_whole_state, mark_loop_running, raise_if_storage_fault
from fer_tune.search.trial_checkpoints import heal_stale_checkpoint, record_checkpoint_epochs

TIME_BUDGET = "time budget"

STUCK = "stuck at chance"  # val_acc flat near chance for search.stuck_epochs: fer-tune stopped it

TIMED_OUT = "timed out"  # no report for --trial-timeout: fer-tune stopped the trial (Ray saw it fail)


class StopLog(Callback):
    """Records the trials fer-tune stopped in `<search>/stopped_by.json` and tells the searcher; stops hung
    trials; ends the search when the results disk refuses writes.

    The time budget: Ray stops those trials without `on_trial_complete` (for callbacks and searchers alike),
    so the trials that had not ended at the start of the step in which the budget ran out are the ones it
    stopped. This runs at the end of that step, before Ray's final save of the searcher state.

    `trial_timeout_s`: a running trial with no report for that long (counted from its start or last report) is
    stopped by killing its actor, which Ray handles as a failed trial; it is recorded as timed out.

    Args:
        stopper: the search's time-budget stopper; None without a budget.
        searcher: the search algorithm, told the trials the budget stopped (OptunaSearch records them as
            pruned); None for random and grid searches.
        trial_timeout_s: seconds without a report after which a running trial is stopped; None for never.
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
        """Heal stale checkpoints of trials about to resume and record the epochs their checkpoints hold
        beyond their rows, note which trials ended, stop hung ones.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            **info: Ray's other keyword arguments (unused).
        """
        mark_loop_running()  # Tune's loop runs, its SIGUSR1 handler too: see recovery.interrupts
        checked = self.__dict__.setdefault("_fer_checked", set())  # once per trial and process
        for t in trials:
            if t.trial_id not in checked and t.status in ("PENDING", "PAUSED", "ERROR"):
                checked.add(t.trial_id)
                # In this order: the checkpoint it continues from, then the rows of the epochs it holds.
                for note in (heal_stale_checkpoint(t), record_checkpoint_epochs(t)):
                    if note:
                        print(f"fer-tune: {note}", file=sys.stderr)
        if self.stopper is not None and not budget_fired():
            self.ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        if getattr(self, "trial_timeout_s", None):  # absent in a StopLog pickled by an older fer-tune
            self._stop_hung(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Keep a whole copy of the experiment state; once the budget fired, record the trials it stopped.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            **info: Ray's other keyword arguments (unused).
        """
        if trials and _local(trials[0]):
            keep_whole_state(Path(trials[0].path).parent, self.__dict__.setdefault("_fer_state", {}))
        if self.stopper is None or not budget_fired() or self.logged:
            return
        self.logged = True
        cut = [t for t in trials if t.trial_id not in self.ended and t.status == "TERMINATED"]
        if not cut:
            return
        if self.searcher is not None:
            from ray.tune.utils import flatten_dict

            for t in cut:
                self.searcher.on_trial_complete(t.trial_id, result=flatten_dict(t.last_result or {}))
        record(cut, TIME_BUDGET)

    # -- hung trials --------------------------------------------------------------------------------------

    def _seen(self) -> dict[str, float]:
        """Trial id -> monotonic time of its start or last report (this process's clock: not pickled)."""
        return self.__dict__.setdefault("_fer_seen", {})

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_fer_")}  # this process's

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Start the trial's no-report clock.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that started.
            **info: Ray's other keyword arguments (unused).
        """
        self._seen()[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Restart the trial's no-report clock.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that reported.
            result: its result.
            **info: Ray's other keyword arguments (unused).
        """
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
                record([t], TIMED_OUT)
                seen.pop(t.trial_id)
                # Ray has no per-trial stopper that runs without a result; a killed actor is a failed trial.
                ray.kill(actor, no_restart=True)

    # -- a full or read-only results disk -----------------------------------------------------------------

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """End the search when the trial failed because the results disk refuses writes.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that failed.
            **info: Ray's other keyword arguments (unused).

        Raises:
            StorageFault: the trial's local results disk is full or read-only.
        """
        _check_storage(trial)  # random and grid searches (OptunaSearch raised before this)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """As `on_trial_error`, for a trial Ray is about to retry (`--max-failures`).

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that failed.
            **info: Ray's other keyword arguments (unused).

        Raises:
            StorageFault: the trial's local results disk is full or read-only.
        """
        _check_storage(trial)  # --max-failures: a retry would fail the same way


def _local(trial: Any) -> bool:
    """Whether the trial's experiment folder is on a local disk (not in an object store)."""
    from pyarrow.fs import LocalFileSystem

    return isinstance(trial.storage.storage_filesystem, LocalFileSystem)


def _check_storage(trial: Any) -> None:
    """StorageFault when the trial's experiment folder is on a local disk that refuses writes."""
    if _local(trial):  # an object store: no disk to probe
        raise_if_storage_fault(Path(trial.path).parent)


def record(trials: list, cause: str) -> None:
    """Add `trial id -> cause` to the search's `stopped_by.json` (atomically).

    Args:
        trials: Ray's Trials, at least one; the search folder is found from the first.
        cause: `TIME_BUDGET`, `TIMED_OUT` or `STUCK`.
    """
    record_ids([t.trial_id for t in trials], cause, Path(trials[0].path).parent)


def record_ids(ids: list[str], cause: str, experiment: Path | None) -> None:
    """Add `trial id -> cause` for each of `ids` to the search's `stopped_by.json` (atomically).

    Args:
        ids: Ray's trial ids.
        cause: `TIME_BUDGET`, `TIMED_OUT` or `STUCK`.
        experiment: the trials' Ray experiment folder, used when `$FER_TUNE_SEARCH_FOLDER` is unset; None
            to record nothing then.

    Raises:
        OutputError: the file cannot be written.
    """
    # The search folder the driver works in (a remote search's mirror), else found from the trial: wherever
    # it was resumed from (a phase's trials sit in phase<N>/ below it).
    here = os.environ.get(FOLDER_ENV)
    if not here and experiment is None:
        return
    folder = SearchFolder(here) if here else SearchFolder.of_experiment(experiment)
    stopped = folder.stopped_by() | dict.fromkeys(ids, cause)
    path = folder / STOPPED_BY_FILE
    atomic_write_text(path, json.dumps(stopped, indent=1) + "\n")
