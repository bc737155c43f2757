"""Warm start: the finished trials of earlier searches, told to a new search's Optuna study before it asks.

`--warm-start DIR...` and a space's `search.warm_start` name earlier search folders. Each of their finished
trials whose run config the new space could have proposed (`conversion.trial_params`) goes into the new study
as `BestEpochOptunaSearch` tells its own trials: COMPLETE with its best epoch's metric, or PRUNED (stopped
before its `train.epochs` by ASHA, the time budget or the stuck stopper) with its last epoch's, each with its
per-epoch values. TPE then proposes from what was measured instead of at random (it samples at random until
the study holds 10 finished trials); GP (`search.algorithm: gp`) learns from the COMPLETE ones only (until 10
of them, it samples at random). The trials live only in the study (`optuna.db`): Ray never runs them, so
`trials.csv`, the leaderboard and the report hold the new search's own.

Folders are read as `fer_tune.search.results` reads any search (plain files, nothing unpickled), before Ray
starts. A folder a flag names is relative to the working directory; one a space names, to the space file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState, create_trial

from fer_tune.base import ConfigError, FerTuneError, cut
from fer_tune.search.conversion import trial_params
from fer_tune.search.dist import Dist
from fer_tune.search.folder import STATE_FILE, SearchFolder
from fer_tune.search.ray_trials import ray_trials
from fer_tune.search.results import _shown, load_results, selection
from fer_tune.search.space import Space, bundled_dir
from fer_tune.search.space_options import STUDY_ALGORITHMS_TEXT

# User attrs of a warm trial in the study: where it came from, and its run config (`fer-tune extend` checks
# it against a narrower space). The new search's own trials have `ray_trial_id` instead.
WARM_FOLDER, WARM_TRIAL, WARM_CONFIG = "warm_start", "warm_trial_id", "warm_config"


@dataclass
class WarmStart:
    """What one earlier search gives a new one.

    Args:
        folder: the earlier search's folder.
        trials: its trials as the new study gets them.
        outside: why each skipped trial is outside the new space (`train.lr 0.5 not in loguniform ...`).
        unfinished: its trials that errored, never reported the metric, or were running when it stopped.
        absent: why a folder a bundled space names was not read (it ships with the repository, not the
            package); None when it was.
    """

    folder: Path
    trials: list[FrozenTrial] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    unfinished: int = 0
    absent: str | None = None

    def note(self) -> str:
        """The line the search prints: trials used, trials skipped and why.

        Returns:
            `warm start: 17 trials from results/cpu-amx (3 complete, 14 stopped early); 4 skipped ...`.
        """
        if self.absent:
            return f"warm start: {_shown(self.folder)}: {self.absent}"
        done = sum(t.state == TrialState.COMPLETE for t in self.trials)
        line = (
            f"warm start: {len(self.trials)} trials from {_shown(self.folder)} ({done} complete, "
            f"{len(self.trials) - done} stopped early)"
        )
        if self.outside:
            keys = Counter(why.split(" ", 1)[0] for why in self.outside)
            by_key = ", ".join(f"{k} x{n}" for k, n in keys.most_common())
            line += f"; {len(self.outside)} skipped (outside this space: {by_key}; e.g. {self.outside[0]})"
        if self.unfinished:
            line += f"; {self.unfinished} unfinished or failed, not used"
        return cut(line, 400)

    def record(self) -> dict[str, Any]:
        """The search state's record of it (`SearchState.warm_start`).

        Returns:
            `{"folder", "trials", "skipped", "unfinished"}`; the folder as the note shows it.
        """
        return {
            "folder": _shown(self.folder),
            "trials": len(self.trials),
            "skipped": len(self.outside),
            "unfinished": self.unfinished,
        }


def read_warm_starts(space: Space, folders: Sequence[str | Path] = ()) -> list[WarmStart]:
    """The trials of each earlier search the space's `search.warm_start` names (relative to the space file),
    then `folders` (relative to the working directory); a folder named twice is read once.

    Args:
        space: the new search's space.
        folders: `--warm-start` folders.

    Returns:
        One `WarmStart` per folder, in order.

    Raises:
        ConfigError: `folders` for a space without an Optuna study (`search.algorithm` random or grid); a
            folder missing (but one a bundled space names: `absent`), not a search, or ranking its trials by
            another metric or mode.
        DataError: a folder's files are unreadable.
    """
    if folders and not space.search.uses_study:
        raise ConfigError(
            f"--warm-start: needs search.algorithm: {STUDY_ALGORITHMS_TEXT} ({space.source} has "
            f"{space.search.algorithm})"
        )
    base = Path(space.source).parent if space.source else Path()
    # A bundled space names the repository's results/, which a package installed from a wheel lacks.
    bundled = bool(space.source) and base.resolve() == bundled_dir().resolve()
    named = [(base / p, f"{space.source}: search.warm_start: {p}", bundled) for p in space.search.warm_start]
    named += [(Path(p), f"--warm-start {p}", False) for p in folders]
    out: list[WarmStart] = []
    seen: set[Path] = set()
    for path, where, optional in named:
        path = Path(path).expanduser()
        if path.resolve() not in seen:
            seen.add(path.resolve())
            out.append(_read(space, path, where, optional))
    return out


def start_from(
    space: Space, folders: Sequence[str | Path], search_dir: Path
) -> tuple[Space, list[WarmStart]]:
    """Read the warm-start folders of a new search, printing each one's note.

    Args:
        space: the new search's space.
        folders: `--warm-start` folders.
        search_dir: the new search's folder, where its `space.yaml` is written.

    Returns:
        The space as the search records it (its `search.warm_start`: the folders used, relative to
        `search_dir`, so that its space.yaml names them as a space file does) and the folders read.

    Raises:
        ConfigError: as `read_warm_starts`.
        DataError: as `read_warm_starts`.
    """
    warm = read_warm_starts(space, folders)
    for w in warm:
        print(f"fer-tune: {w.note()}")
    warm = [w for w in warm if not w.absent]
    used = [os.path.relpath(w.folder.resolve(), search_dir) for w in warm]
    return dataclasses.replace(space, search=dataclasses.replace(space.search, warm_start=used)), warm


def add_warm_trials(study: Any, warm: Sequence[WarmStart]) -> int:
    """Add the warm trials to a study that has asked for no trial yet.

    Args:
        study: the new search's `optuna.Study`.
        warm: what `read_warm_starts` returned.

    Returns:
        The trials added.
    """
    trials = [t for w in warm for t in w.trials]
    study.add_trials(trials)
    return len(trials)


def _read(space: Space, path: Path, where: str, optional: bool) -> WarmStart:
    """One folder's warm trials, checked to be a search that ranks as this one does."""
    if not path.is_dir():
        if optional:
            why = "not found (a bundled space names the fer-tune repository's results/, not the package's)"
            return WarmStart(path, absent=f"{why}; the search starts without it")
        raise ConfigError(f"{where}: no such search folder")
    folder = SearchFolder(path)
    if not folder.is_search():
        raise ConfigError(f"{where}: not a fer-tune search folder (no {STATE_FILE})")
    old, s = selection(folder.path), space.search
    if (old.metric, old.mode) != (s.metric, s.mode):
        raise ConfigError(
            f"{where}: its trials are ranked by {old.metric} ({old.mode}), this search's by {s.metric} "
            f"({s.mode}): their values cannot steer this search's sampler"
        )
    trials, history = load_results(folder.path)
    configs = {t["trial_id"]: t["config"] for t in ray_trials(folder)}
    seed = space.groups.get("seed")
    warm = WarmStart(folder.path)
    epochs = dict(tuple(history.groupby("trial_id", sort=False)))  # once, not a scan per trial
    for row in trials.to_dict("records"):
        hist = epochs.get(row["trial_id"])
        values = {} if hist is None else _values(hist, s.metric)
        if row["status"] != "TERMINATED" or not values:  # what the searcher told FAIL, or never told
            warm.unfinished += 1
            continue
        config = configs[row["trial_id"]]
        if not isinstance(seed, Dist):
            # Another training seed repeats a config, it does not make another: its score still measures
            # the same hyperparameters. Compared at this space's seed (or the default it leaves).
            config = {k: v for k, v in config.items() if k != "seed"}
            if seed is not None:
                config["seed"] = seed
        try:
            found = trial_params(space, config)
        except FerTuneError as e:  # a key fer-tune has since dropped or renamed
            found = f"config invalid now ({e})"
        if isinstance(found, str):
            warm.outside.append(found)
            continue
        complete = row["epochs"] >= row["max_epochs"]
        best = max(values.values()) if s.mode == "max" else min(values.values())
        try:
            trial = create_trial(
                # As BestEpochOptunaSearch tells: the best epoch's value, or PRUNED with the last one (what
                # Optuna's tell records for a pruned trial).
                state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                value=best if complete else values[max(values)],
                params=found[0],
                distributions=found[1],
                intermediate_values=values,
                user_attrs={
                    WARM_FOLDER: _shown(folder.path),
                    WARM_TRIAL: row["trial_id"],
                    WARM_CONFIG: config,
                },
            )
        except ValueError as e:  # a value off a stepped distribution's grid
            warm.outside.append(f"{row['trial_id']} {cut(str(e), 120)}")
            continue
        warm.trials.append(trial)
    return warm


def _values(history: Any, metric: str) -> dict[int, float]:
    """Epoch -> the metric's finite value, from a trial's history (Optuna's steps are its epochs)."""
    out = {}
    for epoch, value in zip(history["epoch"], history[metric], strict=True):
        if isinstance(value, (int, float)) and math.isfinite(value) and epoch == epoch:
            out[int(epoch)] = float(value)
    return out
