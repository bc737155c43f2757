"""A trial to be resumed, from its checkpoints: which one it continues from, and every epoch in its rows.

- `good_checkpoint`: Ray's latest checkpoint of a trial, or, when that one is truncated or corrupt (a crash
  while it was written), the newest readable one before it.
- `heal_stale_checkpoint`, `record_checkpoint_epochs`: a trial to be resumed continues from its newest whole
  checkpoint, and every epoch that checkpoint holds is in the trial's `result.json` in the search folder
  before Ray starts it (a SIGKILL can leave the checkpoints ahead of the rows: `record_checkpoint_epochs`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fer_tune.base import DataError, OutputError, atomic_write
from fer_tune.search.internals import set_latest_checkpoint_result, training_result


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
