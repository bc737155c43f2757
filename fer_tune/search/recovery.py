"""The faults that end searches, turned into one line and a folder that can still be resumed.

- `check_target`: `--name` must be one folder name, and `--results` must not lie inside the installed
  package.
- `storage_fault` / `raise_if_storage_fault`: a results disk that is full or read-only. Ray's own writes to
  it fail in pieces (a trial's checkpoint upload raises in the worker, the experiment-state sync logs an
  error, Optuna's SQLite commit raises in the driver); fer-tune probes the folder when one of them fails
  and, if the disk is at fault, ends the search at once with one `StorageFault`, before Ray or Optuna record
  the trial as failed: the last experiment-state snapshot on disk still has it running, so a resume
  continues it.
- A trial's checkpoints and result rows on resume: `fer_tune.search.trial_checkpoints`.
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fer_tune
from fer_tune.base import ConfigError, DataError, OutputError, atomic_write, check_writable, descendants


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

        Ray's stopping and saving took 0.1-0.5 s on 2 cores; the watchdog guards against a Ray that hangs.
        """
        self.watchdog = threading.Timer(self.grace_s, self._give_up)
        self.watchdog.daemon = True
        self.watchdog.start()

    def loop_ended(self) -> None:
        """Tune's loop returned (stopped or finished): the watchdog has nothing left to guard."""
        if self.watchdog is not None:
            self.watchdog.cancel()

    def _give_up(self) -> None:
        """Print the resume line, kill the processes this one started (Ray's), and end with 130.

        Ray's processes would die with the driver (Ray ties the raylet's and the GCS's lives to it), but its
        dashboard and runtime-env agents outlived a driver that ended this way: they noticed their raylet's
        end, then waited on the GCS, gone too.
        """
        sys.stdout.flush()
        print(f"fer-tune: Ray did not stop within {self.grace_s:.0f} s; {self.resume_line}", file=sys.stderr)
        sys.stderr.flush()
        for pid in descendants(os.getpid()):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # SIGTERM is blocked in them: see shielded_from_sigterm
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

    A SIGTERM sent to the whole process group (`kill -TERM -PGID`, a batch scheduler, GNU `timeout`) reaches
    only the driver of a Ray that `fer_tune.search.cluster.ray_session` started: see `shielded_from_sigterm`.

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
