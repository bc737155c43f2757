"""wandb logging of a search: one run per trial, written by a thread of the driver, finished when it
ends.

Two designs lost data here. Ray's `WandbLoggerCallback` logs through an actor into Ray's staging folder, and
Ray's final sync copies that folder into `results/` before the actor has finished the runs (runs were left
with their 7-byte header). A run owned by the trial's own process (`setup_wandb`) is no better: wandb-core
keeps a small run's records in memory until the run finishes, and Ray kills a worker's child processes
(wandb-core among them) as soon as it stops the trial (ASHA, the end of the search), so `finish()` in the
trial did not complete (3 of 8 runs kept their 7-byte header; seen with Ray 2.60 and wandb 0.31).

So the driver owns the runs: `WandbRuns`, a Tune callback, is told every result of every trial (also the one
on which ASHA stops it) and when each trial completes or errors; a thread of the driver (so a slow
`wandb.init` never holds up the search) creates each run (id `<search>-<trial id>`, `resume="allow"`: a trial
resumed after an interrupt continues its own run), logs each epoch at step `epoch`, and finishes it. At the
end of a search, interrupted or not, it finishes every run still open and waits for wandb to write them.
Offline runs are written straight into the trial's folder (`results/<name>/trial_<id>/wandb/`).

No API key is looked up for `offline`: wandb needs none, and Ray's `_set_api_key` (which raises without one
unless `WANDB_MODE` is set in the environment) is not called.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fer_tune.base import ConfigError
from fer_tune.training import METRIC_KEYS, OPTIONAL_METRIC_MODES

MODES = ("online", "offline", "disabled")
FINISH_TIMEOUT_S = 120  # the end of a search waits this long at most for wandb to write its runs


@dataclass(frozen=True)
class WandbTracking:
    """Where a search's trials log: project, mode (online | offline) and group (the search's name).

    Args:
        project: the wandb project.
        mode: `online` or `offline`.
        group: the search's name; each trial's run is in this group.
    """

    project: str
    mode: str
    group: str

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WandbTracking | None:
        """The tracking a search's state asks for (`wandb_project`, `wandb_mode`, `name`); None when off.

        Args:
            state: `SearchState.to_dict()`, or a mapping with those keys.

        Returns:
            The tracking, or None without a project or with mode `disabled`.

        Raises:
            ConfigError: an unknown mode.
        """
        project = state.get("wandb_project")
        mode = {"dryrun": "offline", "run": "online"}.get(state.get("wandb_mode"), state.get("wandb_mode"))
        mode = mode or "online"
        if not project or mode == "disabled":
            return None
        if mode not in MODES:
            raise ConfigError(f"--wandb-mode: {mode!r}, expected one of {', '.join(MODES)}")
        return cls(project=project, mode=mode, group=state["name"])

    def check(self) -> None:
        """Fail before Ray starts when `online` has no API key (trials would each fail at `wandb.init`).

        Raises:
            ConfigError: mode `online` and wandb finds no API key.
        """
        if self.mode != "online":
            return
        import wandb

        if not wandb.login(prompt=False, verify=False):
            raise ConfigError(
                "--wandb-mode online: no wandb API key (run `wandb login` or set WANDB_API_KEY); "
                "--wandb-mode offline logs without one"
            )

    def run_id(self, trial_id: str) -> str:
        """`<search name>-<trial id>`: unique in the project, and the same when the trial is resumed.

        Args:
            trial_id: Ray's trial id.

        Returns:
            The wandb run id (characters wandb refuses as `-`, at most 128).
        """
        return re.sub(r"[^\w.-]", "-", f"{self.group}-{trial_id}")[:128]


class WandbRuns(Callback):
    """Logs every trial of a search to its own wandb run (see the module docstring).

    Pickled into Ray's `tuner.pkl` (a resumed search gets it back): keep its name and module; only the
    tracking settings are pickled.

    Args:
        tracking: the project, mode and group the runs go to.
    """

    def __init__(self, tracking: WandbTracking) -> None:
        self.tracking = tracking
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"tracking": self.tracking}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["tracking"])

    def setup(self, **info: Any) -> None:
        """Start the driver's wandb thread.

        Args:
            **info: Ray's keyword arguments (unused).
        """
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=_write, args=(self.tracking, self._queue), daemon=True)
        self._thread.start()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Create the trial's run (also for a trial that fails before its first epoch).

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that started.
            **info: Ray's other keyword arguments (unused).
        """
        self._put("start", trial, None)  # a trial that fails before its first epoch still has its run

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Log the epoch's metrics to the trial's run, at step `epoch`.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that reported.
            result: its result; only the keys of `METRIC_KEYS` (and `OPTIONAL_METRIC_MODES`) are logged.
            **info: Ray's other keyword arguments (unused).
        """
        metrics = {
            k: result[k]
            for k in (*METRIC_KEYS, *OPTIONAL_METRIC_MODES)
            if isinstance(result.get(k), (int, float))
        }
        if "epoch" in metrics:
            self._put("log", trial, metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Finish the trial's run with exit code 0.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that completed.
            **info: Ray's other keyword arguments (unused).
        """
        self._put("finish", trial, 0)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Finish the trial's run with exit code 1.

        Args:
            iteration: Ray Tune's loop iteration.
            trials: every trial of the experiment.
            trial: the trial that failed.
            **info: Ray's other keyword arguments (unused).
        """
        self._put("finish", trial, 1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Finish the runs still open (trials the time budget stopped: 0; interrupted ones: 1), then wait.

        Args:
            trials: every trial of the experiment.
            **info: Ray's other keyword arguments (unused).
        """
        if self._thread is None:
            return
        for t in trials:
            self._put("finish", t, 0 if t.status == "TERMINATED" else 1)
        self._queue.put(None)
        self._thread.join(timeout=FINISH_TIMEOUT_S)

    def _put(self, kind: str, trial: Any, payload: Any) -> None:
        if self._queue is None:
            self.setup()
        folder = None if kind == "finish" else _run_dir(trial)
        self._queue.put((kind, trial.trial_id, folder, trial.config, payload))


def _write(tracking: WandbTracking, todo: queue.Queue) -> None:
    """The driver's wandb thread: creates, logs to and finishes the runs, in the order they were asked for."""
    import wandb

    runs: dict[str, Any] = {}
    last_step: dict[str, int] = {}
    while (item := todo.get()) is not None:
        kind, trial_id, folder, config, payload = item
        try:
            if kind == "finish":
                if trial_id in runs:
                    runs.pop(trial_id).finish(exit_code=payload)
                continue
            if trial_id not in runs:
                folder.mkdir(parents=True, exist_ok=True)
                runs[trial_id] = wandb.init(
                    project=tracking.project,
                    group=tracking.group,
                    name=f"trial_{trial_id}",
                    id=tracking.run_id(trial_id),
                    resume="allow",
                    reinit="create_new",  # one run per trial, several open at once
                    mode=tracking.mode,
                    dir=str(folder),
                    config={**config, "trial_id": trial_id, "search": tracking.group},
                    settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
                )
                # A trial resumed in a new driver: its epochs so far (result.json) go to the run first,
                # where it lacks them (online: from its last step; offline: a new file, so all of them).
                for epoch in _epochs_on_disk(folder):
                    _log(runs[trial_id], epoch, last_step, trial_id)
            if kind == "log":
                _log(runs[trial_id], payload, last_step, trial_id)
        except Exception as e:  # wandb failing must not end the search; the results folder has every epoch
            print(f"fer-tune: wandb: trial {trial_id}: {type(e).__name__}: {e}", file=sys.stderr)
    for run in runs.values():
        run.finish(exit_code=1)


def _log(run: Any, metrics: dict[str, Any], last_step: dict[str, int], trial_id: str) -> None:
    step = int(metrics["epoch"])
    if step > last_step.get(trial_id, 0) and step >= run.step:  # each epoch once, in order
        run.log(metrics, step=step)
        last_step[trial_id] = step


def _epochs_on_disk(folder: Path) -> list[dict[str, Any]]:
    """The per-epoch metrics in a trial folder's `result.json` (Ray's JSON lines), none when absent."""
    try:
        lines = (folder / "result.json").read_text().splitlines()
    except OSError:
        return []
    epochs = []
    for line in lines:
        with contextlib.suppress(ValueError):
            result = json.loads(line)
            epochs.append(
                {
                    k: result[k]
                    for k in (*METRIC_KEYS, *OPTIONAL_METRIC_MODES)
                    if isinstance(result.get(k), (int, float))
                }
            )
    return [e for e in epochs if "epoch" in e]


def _run_dir(trial: Any) -> Path:
    """The trial's folder in the search folder when that is a local or mounted path (wandb's files then land
    there directly, with no sync to race); Ray's driver-side staging folder of the trial otherwise."""
    import pyarrow.fs

    if isinstance(trial.storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(trial.path)
    return Path(trial.local_path)
