"""The trials of a search as Ray saved them, read from its experiment-state snapshots as plain JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fer_tune.base import DataError
from fer_tune.search.folder import SearchFolder


def ray_trials(folder: SearchFolder) -> list[dict[str, Any]]:
    """Trial id, phase, status, config and folder of every trial of every phase, from Ray's newest
    experiment-state snapshot of each phase, read as plain JSON (its cloudpickled fields are never
    decoded; the config comes from the trial's own `params.json`).

    Args:
        folder: the search folder (a search in an object store: its local mirror).

    Returns:
        One `{"trial_id", "phase", "status", "config", "path"}` per trial, phase by phase.

    Raises:
        DataError: no such folder, phase 1 has no experiment state, or a state or `params.json` is
            unreadable.
    """
    if not folder.path.is_dir():
        raise DataError(f"{folder.path}: no such search folder")
    out: list[dict[str, Any]] = []
    for phase, exp in folder.experiment_dirs():
        states = sorted(exp.glob("experiment_state-*.json"))
        if not states:
            if phase == 1:
                raise DataError(
                    f"{folder.path}: no experiment_state-*.json; not a Ray Tune search folder (yet)"
                )
            continue  # an extension that has not saved its first snapshot yet
        path = states[-1]  # Ray names each by its session's start time, and picks the greatest name
        try:
            entries = [json.loads(meta) for meta, _ in json.loads(path.read_text())["trial_data"]]
            trials = [(str(e["trial_id"]), str(e["status"]), e) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: unreadable Ray Tune experiment state: {e}") from None
        for trial_id, status, entry in trials:
            logdir = entry.get("relative_logdir")
            trial_dir = exp / (Path(logdir).name if isinstance(logdir, str) else f"trial_{trial_id}")
            config = _trial_params(trial_dir, entry)
            out.append(
                {
                    "trial_id": trial_id,
                    "phase": phase,
                    "status": status,
                    "config": config,
                    "path": trial_dir,
                }
            )
    return out


def _trial_params(trial_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The trial's config from its `params.json`; a trial not started yet has none but the snapshot's."""
    path = trial_dir / "params.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        config = entry.get("config")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable trial config: {e}") from None
    return config if isinstance(config, dict) else {}
