"""The faults that end searches, turned into one line and a folder that can still be resumed.

- `check_target`: `--name` must be one folder name, and `--results` must not lie inside the installed
  package.
- `storage_fault` / `raise_if_storage_fault`: a results disk that is full or read-only. Ray's own writes to
  it fail in pieces (a trial's checkpoint upload raises in the worker, the experiment-state sync logs an
  error, Optuna's SQLite commit raises in the driver); fer-tune probes the folder when one of them fails
  and, if the disk is at fault, ends the search at once with one `StorageFault`, before Ray or Optuna record
  the trial as failed: the last experiment-state snapshot on disk still has it running, so a resume
  continues it.
- `good_checkpoint`: Ray's latest checkpoint of a trial, or, when that one is truncated or corrupt (a crash
  while it was written), the newest readable one before it.
- `heal_stale_checkpoint`, `record_checkpoint_epochs`: a trial to be resumed continues from its newest whole
  checkpoint, and every epoch that checkpoint holds is in the trial's `result.json` in the search folder
  before Ray starts it (a SIGKILL can leave the checkpoints ahead of the rows: `record_checkpoint_epochs`).
- `check_experiment_state`: the newest Ray experiment state of a search to be resumed is whole JSON; when a
  crash cut it short (Ray copies it into the search folder in place), the whole copy `keep_whole_state`
  made of the last snapshot is put back.
- `interrupts`: one Ctrl-C (or SIGTERM) stops a search as an interruption that resumes; a second while Ray
  saves its state is absorbed instead of cutting that save short; a third stops at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fer_tune
from fer_tune.base import ConfigError, DataError, OutputError, atomic_write, check_writable
from fer_tune.search.internals import set_latest_checkpoint_result, training_result


class StorageFault(OutputError):
    """The search folder's disk refuses writes: the search stopped; its last saved state is resumable."""


def check_target(results: str | Path, name: str | None) -> None:
    """Refuse a `--name` that is not one plain folder name and a `--results` inside the fer_tune package;
    then test-write `--results` (a folder, or a URI of an object store).

    Args:
        results: the `--results` folder or URI.
        name: the `--name` value; None when not given.

    Raises:
        ConfigError: a name with a path separator (or `.`, `..`, empty), or results inside the package.
        OutputError: `results` cannot be written.
    """
    from fer_tune.base.storage import check_writable_uri, is_uri

    if name is not None:
        seps = {os.sep, os.altsep or os.sep, "/", "\\"}
        if not name.strip() or any(s in name for s in seps) or name in (".", "..") or "\0" in name:
            raise ConfigError(
                f"--name {name!r}: must be one folder name (no path separators, not . or ..); "
                "choose the parent folder with --results"
            )
    if is_uri(results):
        check_writable_uri(str(results), "--results")
        return
    package = Path(fer_tune.__file__).resolve().parent
    out = Path(results).expanduser().resolve()
    if out == package or package in out.parents:
        raise ConfigError(
            f"--results {results}: inside the installed fer_tune package ({package}); results there are "
            "lost on reinstall and pollute the code: give a folder outside it (default ./results)"
        )
    check_writable(out, "--results")


def storage_fault(folder: str | Path) -> str | None:
    """Why `folder` refuses writes (`No space left on device`, `Read-only file system`), or None.

    Args:
        folder: the search folder; a small file is written and deleted there.

    Returns:
        The OS's reason, or None when the write succeeded.
    """
    try:
        check_writable(folder, "results")
    except OutputError as e:
        return str(e).rsplit(": ", 1)[-1]
    return None


def raise_if_storage_fault(folder: str | Path) -> None:
    """StorageFault when `folder` refuses writes: the one error a full or read-only results disk gives.

    Args:
        folder: the search folder.

    Raises:
        StorageFault: the folder refuses writes; the message says how to resume.
    """
    why = storage_fault(folder)
    if why is not None:
        raise StorageFault(
            f"{folder}: cannot write there: {why}; the search stopped and its last saved state is kept: "
            f"free space (or make it writable), then continue with: fer-tune --resume {folder}"
        )


# -- checkpoints ---------------------------------------------------------------------------------------------


@contextmanager
def good_checkpoint(checkpoint: Any) -> Iterator[str]:
    """A local folder holding a readable `checkpoint.pt`: Ray's `checkpoint` (a `ray.tune.Checkpoint`), or the
    newest earlier `checkpoint_*` of the same trial when it is truncated or corrupt.

    Ray records a checkpoint once its upload finished, but a crash of the machine can still leave its file cut
    (written, not yet flushed). Raises the first DataError (naming the file) when none is readable.

    Args:
        checkpoint: Ray's latest checkpoint of the trial (`ray.tune.get_checkpoint()`).

    Yields:
        The local folder holding the readable `checkpoint.pt` (deleted on exit when it was downloaded).

    Raises:
        DataError: no checkpoint of the trial is readable.
    """
    from ray.tune import Checkpoint

    from fer_tune.training import CHECKPOINT_KEYS
    from fer_tune.training.checkpoint import read_torch_file

    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    candidates = [path, *(p for p in _checkpoint_dirs(fs, path) if p.rsplit("/", 1)[-1] < name)]
    first: DataError | None = None
    for candidate in candidates:
        with Checkpoint(candidate, filesystem=fs).as_directory() as folder:
            try:
                read_torch_file(Path(folder) / "checkpoint.pt", "fer-tune checkpoint", CHECKPOINT_KEYS)
            except DataError as e:
                first = first or DataError(f"{candidate}/checkpoint.pt: {str(e).split(': ', 1)[-1]}")
                continue
            if candidate != path:
                print(f"fer-tune: {first}; resuming from {candidate} instead", file=sys.stderr)
            yield folder
            return
    assert first is not None
    raise first


def _checkpoint_dirs(fs: Any, checkpoint_path: str) -> list[str]:
    """The `checkpoint_*` folders beside `checkpoint_path` (its trial's), newest first; [] when unlistable."""
    from pyarrow.fs import FileSelector, FileType

    parent = checkpoint_path.rsplit("/", 1)[0] if "/" in checkpoint_path else ""
    try:
        found = fs.get_file_info(FileSelector(parent or "/"))
    except OSError:
        return []
    dirs = (i.path for i in found if i.type == FileType.Directory and i.base_name.startswith("checkpoint_"))
    return sorted(dirs, reverse=True)


def heal_stale_checkpoint(trial: Any) -> str | None:
    """Point a trial being resumed at its newest checkpoint when the one its saved state names is gone.

    Ray saves the experiment state every few seconds, but deletes a trial's older checkpoints as soon as newer
    ones exist (`num_to_keep`). A search killed when a trial had saved two more checkpoints since the last
    snapshot resumes from a snapshot naming a deleted checkpoint, and Ray fails that trial ("Could not recover
    from checkpoint"). The newer checkpoints are whole: continue from the newest. Its Ray metrics are the
    snapshot's, moved on by as many reports as checkpoints (one per report), with the epoch's own metrics from
    the checkpoint. The epochs it holds beyond the trial's result rows are recorded by
    `record_checkpoint_epochs`, called after this. Returns what was done, or None when nothing needed doing.

    Args:
        trial: Ray's Trial, restored from the experiment state; changed in place.

    Returns:
        A line saying what was done, or None.
    """
    from pyarrow.fs import FileType
    from ray.tune import Checkpoint

    from fer_tune.training import CHECKPOINT_KEYS
    from fer_tune.training.checkpoint import read_torch_file

    manager = trial.run_metadata.checkpoint_manager
    stale = manager.latest_checkpoint_result if manager is not None else None
    if stale is None:
        return None
    fs, path = stale.checkpoint.filesystem, stale.checkpoint.path.rstrip("/")
    try:
        if fs.get_file_info(path).type != FileType.NotFound:
            return None
    except OSError:
        return None
    name = path.rsplit("/", 1)[-1]
    newer = [p for p in _checkpoint_dirs(fs, path) if p.rsplit("/", 1)[-1] > name]
    index = lambda p: int(p.rsplit("_", 1)[-1])  # noqa: E731
    for candidate in newer:
        with Checkpoint(candidate, filesystem=fs).as_directory() as folder:
            try:
                ckpt = read_torch_file(Path(folder) / "checkpoint.pt", "fer-tune checkpoint", CHECKPOINT_KEYS)
                history = ckpt["history"]
            except DataError:
                continue  # cut: an older one
        steps = index(candidate) - index(path)
        metrics = {**stale.metrics, **(history[-1] if history else {})}
        metrics["training_iteration"] = stale.metrics.get("training_iteration", 0) + steps
        metrics["time_total_s"] = stale.metrics.get("time_total_s", 0.0) + sum(
            h.get("epoch_seconds", 0.0) for h in history[-steps:]
        )
        set_latest_checkpoint_result(manager, training_result(Checkpoint(candidate, filesystem=fs), metrics))
        trial.storage.current_checkpoint_index = index(candidate)  # its next checkpoint is the one after
        trial.invalidate_json_state()
        trial.run_metadata.invalidate_cache()
        return (
            f"trial {trial.trial_id}: the saved search state names {name}, which Ray had already replaced; "
            f"resuming from {candidate.rsplit('/', 1)[-1]} (epoch {len(history)})"
        )
    return None


def record_checkpoint_epochs(trial: Any) -> str | None:
    """Record in a trial being resumed the result rows of the epochs its checkpoint holds beyond them.

    Ray's trial writes each checkpoint into the search folder at once, but the driver's result rows
    (`result.json`) reach it only with the next experiment-state sync, a background copy of the driver's
    staging folder. A SIGKILL between the two, or during that copy (which can take the state file and not
    the rows), leaves the checkpoint the resume continues from ahead of the rows, and the trial never
    reports those epochs again. The rows go into the search folder's `result.json`: when Ray starts the
    resumed trial, its `JsonLoggerCallback` copies that file over the staging one and appends to it (a
    staging copy written before would be overwritten; in a new Ray session it does not exist yet). Called
    once per trial being resumed, before Ray starts it, after `heal_stale_checkpoint`.

    Args:
        trial: Ray's Trial, restored from the experiment state.

    Returns:
        A line saying which epochs were recorded, or None when none were missing.

    Raises:
        OutputError: `result.json` cannot be read or written.
    """
    manager = trial.run_metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager is not None else None
    if latest is None:
        return None
    history = _readable_history(latest.checkpoint)
    if not history:
        return None  # none readable: the trial fails or restarts, and its trainable says why
    result_json = f"{trial.storage.trial_fs_path.rstrip('/')}/result.json"
    fs = trial.storage.storage_filesystem
    added = record_epochs(result_json, history, latest.metrics, trial.trial_id, fs)
    if not added:
        return None
    first, last = history[-added]["epoch"], history[-1]["epoch"]
    epochs = f"epochs {first}-{last}" if added > 1 else f"epoch {last}"
    return f"trial {trial.trial_id}: recorded {epochs}, in its checkpoint but not in result.json"


def _readable_history(checkpoint: Any) -> list[dict[str, Any]] | None:
    """The history in the checkpoint `good_checkpoint` gives the trial (read quietly); None when none is."""
    from ray.tune import Checkpoint

    from fer_tune.training import CHECKPOINT_KEYS
    from fer_tune.training.checkpoint import read_torch_file

    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    for candidate in [path, *(p for p in _checkpoint_dirs(fs, path) if p.rsplit("/", 1)[-1] < name)]:
        try:
            with Checkpoint(candidate, filesystem=fs).as_directory() as folder:
                ckpt = read_torch_file(Path(folder) / "checkpoint.pt", "fer-tune checkpoint", CHECKPOINT_KEYS)
        except (DataError, OSError):
            continue  # cut, or gone: the one before it
        history = ckpt["history"]
        return history if isinstance(history, list) else None
    return None


def record_epochs(
    result_json: str | Path,
    history: list[dict[str, Any]],
    stale: dict[str, Any],
    trial_id: str,
    filesystem: Any = None,
) -> int:
    """Append to a trial's `result.json` the epochs of `history` (a checkpoint's) after its last row.

    A trial resumed from a checkpoint newer than its last row would leave those epochs out of the results
    for good. Rows follow Ray's: the epoch's metrics, `training_iteration` and `time_total_s` counted from the
    `stale` record (the checkpoint's own, or an earlier result's). A torn last line (a write the crash cut
    short) is cut off first, also when no epoch is missing; a missing file is written whole. A local file is
    appended to in place; one in an object store is written whole.

    Args:
        result_json: the trial's `result.json`: a local path, or a path on `filesystem`.
        history: the checkpoint's history, one metrics dict per epoch.
        stale: Ray's metrics of one result of the trial (`epoch`, `training_iteration`, `time_total_s`).
        trial_id: Ray's trial id, written in each row.
        filesystem: the pyarrow filesystem `result_json` is on; None for the local one.

    Returns:
        How many epochs were appended.

    Raises:
        OutputError: the file cannot be read or written.
    """
    from pyarrow.fs import LocalFileSystem

    path = str(result_json)
    local = filesystem is None or isinstance(filesystem, LocalFileSystem)
    try:
        if local:
            text = Path(path).read_bytes()
        else:
            with filesystem.open_input_stream(path) as f:
                text = f.readall()
    except FileNotFoundError:
        text = b""
    except OSError as e:
        raise OutputError(f"{path}: cannot read: {e.strerror or e}") from None
    whole = text[: text.rfind(b"\n") + 1]  # a line without its newline is a write the crash cut short
    seen = 0
    for line in whole.splitlines():
        try:
            seen = max(seen, int(json.loads(line).get("epoch") or 0))
        except (ValueError, TypeError, AttributeError):
            continue
    missing = [h for h in history if h.get("epoch", 0) > seen]
    if not missing and whole == text:
        return 0
    it, epoch0 = stale.get("training_iteration", 0), stale.get("epoch", 0)
    seconds = {x.get("epoch", 0): x.get("epoch_seconds") or 0.0 for x in history}
    rows = []
    for h in missing:
        e = h["epoch"]
        # Seconds from the stale record to this epoch's end: forward, or back for an epoch before it.
        done = sum(s for x, s in seconds.items() if epoch0 < x <= e)
        done -= sum(s for x, s in seconds.items() if e < x <= epoch0)
        row = {**h, "trial_id": trial_id, "training_iteration": it + e - epoch0}
        row |= {
            "time_this_iter_s": h.get("epoch_seconds"),
            "time_total_s": stale.get("time_total_s", 0.0) + done,
        }
        rows.append(json.dumps(row, default=str) + "\n")
    added = "".join(rows).encode()
    try:
        if not local:  # an object store cannot append
            with filesystem.open_output_stream(path) as f:
                f.write(whole + added)
        elif text:
            with open(path, "r+b") as f:
                f.truncate(len(whole))
                f.seek(0, os.SEEK_END)
                f.write(added)
        else:
            atomic_write(Path(path), lambda f: f.write(added))  # an OutputError naming it
    except OSError as e:
        raise OutputError(f"{path}: cannot write there: {e.strerror or e}") from None
    return len(missing)


# -- Ray's experiment state ----------------------------------------------------------------------------------


def whole_copy(state: Path) -> Path:
    """Where `keep_whole_state` keeps the last whole version of an experiment-state file (hidden from Ray).

    Args:
        state: an `experiment_state-*.json`.

    Returns:
        `.<name>.whole` beside it.
    """
    return state.with_name(f".{state.name}.whole")


def _check_whole(text: bytes | str) -> None:
    """ValueError unless `text` is a whole experiment state (JSON with its `trial_data` list)."""
    raw = json.loads(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("trial_data"), list):
        raise ValueError("no trial_data list")


def keep_whole_state(experiment: Path, seen: dict[str, Any], every_s: float = 1.0) -> None:
    """Copy the newest `experiment_state-*.json` beside itself, atomically, each time it changes and is whole.

    Ray writes the snapshot in a staging folder and then copies it over the one in the search folder in place,
    so a SIGKILL (or power cut) during that copy leaves it cut short, and with it the only record of which
    trials finished. Called by the driver at every step of Ray's loop, it looks at most every `every_s`
    seconds; `seen` remembers when, and the version copied.

    Args:
        experiment: the phase's Ray experiment folder.
        seen: the caller's memory between calls (empty at first); updated in place.
        every_s: the least time between two looks, in seconds.
    """
    now = time.monotonic()
    if now - seen.get("at", -math.inf) < every_s:
        return
    seen["at"] = now
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return
    newest = states[-1]
    try:
        st = newest.stat()
        key = (newest.name, st.st_mtime_ns, st.st_size)
        if seen.get("state") == key:
            return
        text = newest.read_bytes()
        _check_whole(text)
    except (OSError, ValueError):
        return  # being copied right now: the next step sees it whole

    try:
        atomic_write(whole_copy(newest), lambda f: f.write(text))
        seen["state"] = key
    except OutputError:  # a full or read-only disk: Ray's own writes report it (StorageFault)
        pass


def check_experiment_state(experiment: Path) -> None:
    """The newest `experiment_state-*.json` must be whole JSON before Ray reads it (Ray would fail with a JSON
    traceback). Cut short by a crash while Ray copied it: the whole copy of the last snapshot replaces it (a
    note on stderr); without one, one line naming it and what to do.

    Args:
        experiment: the phase's Ray experiment folder.

    Raises:
        DataError: the newest state is cut and no whole copy of it exists.
        OutputError: the whole copy cannot be written back.
    """
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return
    newest = states[-1]
    try:
        _check_whole(newest.read_text())
    except (OSError, ValueError) as e:
        copy = whole_copy(newest)
        try:
            text = copy.read_bytes()
            _check_whole(text)
        except (OSError, ValueError):
            pass
        else:

            atomic_write(newest, lambda f: f.write(text))  # a disk that refuses it: one OutputError line
            print(
                f"fer-tune: {newest}: cut short by a crash ({e}); resuming from its last whole snapshot",
                file=sys.stderr,
            )
            return
        todo = (
            f"move it aside to resume from the older snapshot {states[-2].name}"
            if len(states) > 1
            else "it is the only snapshot, so the search cannot continue; its trials' results are still "
            "read by fer-tune report and export: start a new search to run more"
        )
        raise DataError(f"{newest}: truncated or corrupt Ray Tune experiment state ({e}); {todo}") from None


# -- signals -------------------------------------------------------------------------------------------------

# Ray Tune's loop has started (set by StopLog): a signal now stops it through Tune, which saves its state.
_LOOP_RUNNING = False
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"  # "1": Ray Tune installs no SIGINT handler of its own
STOP_GRACE_S = 15.0  # after a stop signal, Ray's stopping and saving took 0.1-0.5 s on 2 cores


def mark_loop_running(running: bool = True) -> None:
    """Called from the driver's Tune callback: Tune's loop runs, and a signal now stops it through Tune.

    Args:
        running: whether Tune's loop (and its SIGINT handler) is running.
    """
    global _LOOP_RUNNING
    _LOOP_RUNNING = running


@dataclass
class Interruption:
    """The stop signals a search received, and the watchdog that ends the driver if Ray cannot stop.

    Args:
        resume_line: printed by the watchdog before it ends the process.
        grace_s: how long after the first signal Ray Tune may take to stop the trials and save.
    """

    resume_line: str
    grace_s: float = STOP_GRACE_S
    signals: list[int] = field(default_factory=list)
    watchdog: threading.Timer | None = None

    def arm(self) -> None:
        """Start the watchdog: once `grace_s` has passed, print the resume line and exit with 130.

        A SIGTERM sent to the whole process group (a scheduler ending a job) also ends Ray's own processes,
        and the driver then waited 60 s for the dead GCS before Ray ended it with status 1. What the search
        had saved by then is what it resumes from either way (snapshots every 2 s, kept whole).
        """
        self.watchdog = threading.Timer(self.grace_s, self._give_up)
        self.watchdog.daemon = True
        self.watchdog.start()

    def loop_ended(self) -> None:
        """Tune's loop returned (stopped or finished): the watchdog has nothing left to guard."""
        if self.watchdog is not None:
            self.watchdog.cancel()

    def _give_up(self) -> None:
        print(f"fer-tune: Ray did not stop within {self.grace_s:.0f} s; {self.resume_line}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)


@contextmanager
def interrupts(resume_line: str, grace_s: float = STOP_GRACE_S) -> Iterator[Interruption]:
    """Ctrl-C and SIGTERM stop a running search as an interruption: trials stop, Ray saves its state.

    Ray Tune's own SIGINT handler stops its loop without telling its caller, so a search stopped by one
    Ctrl-C looked finished (exit 0, `"finished": true`, no resume line). Its SIGINT handler is therefore
    switched off (`TUNE_DISABLE_SIGINT_HANDLER`), and the handler installed here records the signal and
    asks Tune to stop through SIGUSR1, which Tune always listens to. A second signal while Ray stops the
    trials and saves is reported and absorbed (it would cut the save short); a third stops at once. Before
    Tune's loop runs there is nothing to save, and the first signal stops at once (KeyboardInterrupt). If
    Ray has not stopped `grace_s` after the first signal, the watchdog ends the process (see `arm`).

    Args:
        resume_line: what to run to continue the search, printed if the watchdog ends the process.
        grace_s: seconds Ray Tune gets to stop the trials and save its state after the first signal.

    Yields:
        The `Interruption`: its `signals` are empty when the search was not interrupted.
    """
    stop = Interruption(resume_line, grace_s)
    mark_loop_running(False)

    def on_signal(signum: int, frame: Any) -> None:
        if not _LOOP_RUNNING:
            raise KeyboardInterrupt  # before Tune's loop: nothing to save yet
        stop.signals.append(signum)
        if len(stop.signals) == 1:
            print(
                "fer-tune: stopping; saving the search state so it can be resumed (a moment)",
                file=sys.stderr,
            )
            stop.arm()
            signal.raise_signal(signal.SIGUSR1)  # Tune's handler: stop the trials, save the experiment state
        elif len(stop.signals) == 2:
            print(
                "fer-tune: still saving the search state; a third Ctrl-C stops at once (the resume may then "
                "redo the last seconds)",
                file=sys.stderr,
            )
        else:
            raise KeyboardInterrupt

    tune_handler = os.environ.get(TUNE_SIGINT_ENV)
    os.environ[TUNE_SIGINT_ENV] = "1"  # read when Tune's loop starts: fer-tune's handler below stays
    previous = signal.signal(signal.SIGTERM, on_signal), signal.signal(signal.SIGINT, on_signal)
    try:
        yield stop
    finally:
        stop.loop_ended()
        mark_loop_running(False)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        if tune_handler is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = tune_handler
