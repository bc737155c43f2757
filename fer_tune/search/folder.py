"""The search folder `results/<name>/`: the contract between a search and every later command.

Search, resume, extend, export, retrain and report find everything through this module: the file names, the
typed state record (`fer_tune.json`, written atomically), the resolved space of each phase with its real
distributions, the Optuna study (`optuna.db`) and Ray's list of trials of each phase.

A search grows in phases. Phase 1 is Ray's experiment folder `results/<name>/` itself; `fer-tune extend`
adds phase N as the Ray experiment `results/<name>/phase<N>/` (Ray's `Tuner.restore` cannot change a
finished experiment's space or sample count). All phases share one Optuna study in `optuna.db`.

Reading never unpickles anything: Ray's experiment state is read as plain JSON (its trial ids, statuses and
folder names), configs come from each trial's `params.json`.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fer_tune.base import (
    ConfigError,
    DataError,
    atomic_write_text,
    check_output,
    check_writable,
    folder_kind,
    lock_folder,
    read_yaml,
)
from fer_tune.base.locks import LOCK_FILE
from fer_tune.base.outputs import SEARCH_STATE
from fer_tune.base.storage import check_writable_uri, filesystem, is_uri, join, mirror_of, pull, push
from fer_tune.search.state import SearchState
from fer_tune.search.study import study_storage

STATE_FILE = SEARCH_STATE  # fer_tune.json: the SearchState (base.outputs tells a search folder by it)
SPACE_FILE = "space.yaml"  # the resolved space of a phase, in its experiment folder
STOPPED_BY_FILE = "stopped_by.json"  # trial id -> "time budget", written by fer_tune.search.searcher.StopLog
OPTUNA_DB = "optuna.db"  # the Optuna study of every phase (SQLite)
TRIALS_CSV, TRIALS_PARQUET = "trials.csv", "trials.parquet"
LEADERBOARD = "leaderboard.md"
BEST_CONFIG = "best_config.yaml"
# --retrain N under a time budget: the job's budget and split, the retrain's plan (search.job_budget)
BUDGET_FILE = "budget.json"
REPORT_DIR = "report"
# The search folder the driver works in now (a remote search's local mirror): where StopLog records its stops.
FOLDER_ENV = "FER_TUNE_SEARCH_FOLDER"


class SearchFolder:
    """`results/<name>/`: its paths, state, spaces, study and Ray trials.

    Args:
        path: the local search folder (for a remote search, its mirror on this machine); `~` is expanded
            and the path made absolute.
        remote: the URI of a search in an object store; None for a local search.
    """

    def __init__(self, path: str | Path, remote: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        # A search in an object store (fer_tune.base.storage): `path` is this machine's mirror of it.
        self.remote = remote

    @classmethod
    def open(cls, path: str | Path, *, download: bool = True) -> SearchFolder:
        """An existing search: a local folder, or a URI downloaded into its local mirror.

        Args:
            path: the search folder or its URI.
            download: download a remote search into its mirror now; False to do it later (`download`),
                once its lock is held.

        Returns:
            The folder (not checked to be a search: see `is_search`).

        Raises:
            DataError: a remote folder cannot be listed or holds no `fer_tune.json`.
        """
        if is_uri(path):
            uri = str(path).rstrip("/")
            folder = cls(mirror_of(uri), remote=uri)
            if download:
                folder.download()
            return folder
        return cls(path)

    def download(self) -> None:
        """A remote search: download it into the mirror (not its checkpoints); nothing for a local one.

        Raises:
            DataError: the remote folder cannot be listed or holds no `fer_tune.json`.
        """
        if self.remote is not None:
            pull(self.remote, self.path)

    @contextmanager
    def lock(self, *, new: bool = False, hint: str = "") -> Iterator[SearchFolder]:
        """Hold the search's lock for the `with` block: one live writer per search folder (a remote search:
        its local mirror), or FolderBusy at once naming the holder.

        The lock is the kernel's (`fcntl.flock` on `.fer-tune.lock`), so a crashed or killed command never
        leaves it held. Search, resume, extend and `--retrain` hold it for their whole run; `report` and
        `export` only read and take none. A local folder that does not exist is not created (the command
        reports it missing) unless `new`; a remote search's mirror is.

        Args:
            new: a new search: create its folder to lock it (removed again if the search writes nothing).
            hint: what to do instead, for the refusal (`choose another --name`).

        Yields:
            This folder.

        Raises:
            FolderBusy: another command holds the lock.
            OutputError: the lock file cannot be created or locked.
        """
        with lock_folder(self.path, command_line(), create=new or self.remote is not None, hint=hint):
            yield self

    def clear_mirror(self) -> None:
        """A new remote search: remove what an earlier search of its URI left in the mirror, but the lock."""
        import shutil

        if self.remote is None or not self.path.is_dir():
            return
        for p in self.path.iterdir():
            if p.name != LOCK_FILE:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()

    @classmethod
    def create(cls, results: str | Path, name: str) -> SearchFolder:
        """A new search `name` under `results` (a folder or a URI), test-written first.

        Args:
            results: the folder (or URI) that holds searches (`--results`).
            name: the new search's name (`--name`).

        Returns:
            The new search's folder (not created yet for a local one).

        Raises:
            OutputError: `results` cannot be written, or lies in a search folder.
            ConfigError: the URI holds a search of that name already, or the folder is a run or retrain
                folder.
        """
        if is_uri(results):
            uri = join(check_writable_uri(str(results), "--results"), name)
            fs, path = filesystem(uri)
            if fs.get_file_info(join(path, STATE_FILE)).is_file:
                raise ConfigError(
                    f"--name: {uri} holds a search already; continue it with fer-tune --resume {uri}"
                )
            # What an earlier search of that name left in the mirror goes under the lock (clear_mirror).
            return cls(mirror_of(uri), remote=uri)
        root = check_output(Path(results), "--results")  # not inside a search folder
        path = check_writable(root, "--results") / name
        found = folder_kind(path)
        if found is not None and found[0] != "search":
            raise ConfigError(
                f"--name {name}: {path} is a {found[0]} folder ({found[1]}); a search would mix its files "
                "with Ray's: choose another --name or --results"
            )
        return cls(path)

    def ray_storage(self, phase: int = 1) -> tuple[str, str]:
        """(storage_path, name) of a phase's Ray experiment: local, or in the object store.

        Args:
            phase: the phase number, from 1.

        Returns:
            What `tune.RunConfig` takes as `storage_path` and `name`.
        """

        if self.remote is None:
            exp = self.experiment_dir(phase)
            return str(exp.parent), exp.name  # absolute: a relative one fails in pyarrow (ray#42968)
        if phase == 1:
            return self.remote.rsplit("/", 1)[0], self.remote.rsplit("/", 1)[1]
        return self.remote, self.phase_name(phase)

    def experiment_location(self, phase: int = 1) -> str:
        """What `Tuner.restore` takes for a phase: its folder or its URI.

        Args:
            phase: the phase number, from 1.

        Returns:
            `<storage_path>/<name>`.
        """
        storage, name = self.ray_storage(phase)
        return f"{storage}/{name}"

    def sync_down(self) -> None:
        """A remote search: download Ray's files (not checkpoints) into the mirror, for the tables."""
        if self.remote is not None:
            pull(self.remote, self.path, require=None)

    def sync_up(self) -> None:
        """A remote search: upload fer-tune's own files from the mirror to the store."""
        if self.remote is not None:
            push(self.path, self.remote)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:  # what messages show: the URI of a search in an object store
        return self.remote or str(self.path)

    def __fspath__(self) -> str:  # a SearchFolder goes wherever a path does
        return str(self.path)

    @classmethod
    def of_experiment(cls, experiment: str | Path) -> SearchFolder:
        """The search folder of a phase's Ray experiment folder (itself for phase 1).

        Args:
            experiment: a Ray experiment folder: the search folder or its `phase<N>` subfolder.

        Returns:
            The search folder.
        """
        path = Path(experiment)
        return cls(
            path if (path / STATE_FILE).exists() or not (path.parent / STATE_FILE).exists() else path.parent
        )

    # -- paths --------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The search's name: its folder's."""
        return self.path.name

    @property
    def state_path(self) -> Path:
        """`fer_tune.json`."""
        return self.path / STATE_FILE

    @property
    def db_path(self) -> Path:
        """`optuna.db`, the Optuna study of every phase."""
        return self.path / OPTUNA_DB

    @property
    def storage_url(self) -> str:
        """What `optuna-dashboard` and `optuna.load_study` take."""
        return f"sqlite:///{self.db_path}"

    def is_search(self) -> bool:
        """Whether the folder holds a search (its `fer_tune.json`).

        Returns:
            True when `fer_tune.json` exists.
        """
        return self.state_path.is_file()

    @staticmethod
    def phase_name(number: int) -> str:
        """The folder name of an extension's Ray experiment.

        Args:
            number: the phase number, 2 or more.

        Returns:
            `phase<number>`.
        """
        return f"phase{number}"

    def experiment_dir(self, phase: int = 1) -> Path:
        """Ray's experiment folder of a phase.

        Args:
            phase: the phase number, from 1.

        Returns:
            The search folder for phase 1, else its `phase<N>` subfolder.
        """
        return self.path if phase == 1 else self.path / self.phase_name(phase)

    def experiment_dirs(self) -> list[tuple[int, Path]]:
        """(phase, Ray experiment folder) of every phase on disk, in order.

        Returns:
            Phase 1 (the search folder) always, then each `phase<N>` folder found.
        """
        found = [(1, self.path)]
        for p in self.path.glob("phase*"):
            if p.is_dir() and p.name[5:].isdigit() and int(p.name[5:]) > 1:
                found.append((int(p.name[5:]), p))
        return sorted(found)

    def space_path(self, phase: int = 1) -> Path:
        """The resolved `space.yaml` of a phase.

        Args:
            phase: the phase number, from 1.

        Returns:
            The file, in the phase's experiment folder.
        """
        return self.experiment_dir(phase) / SPACE_FILE

    # -- state ----------------------------------------------------------------------------------------------

    def read_state(self) -> SearchState:
        """The search's `fer_tune.json`.

        Returns:
            The state.

        Raises:
            DataError: the file is missing (not a search folder) or unreadable.
        """
        path = self.state_path
        try:
            raw = json.loads(path.read_text())
            return SearchState.from_dict(raw)
        except FileNotFoundError:
            raise DataError(f"{path}: no such file; {self.path} is not a fer-tune search folder") from None
        except (OSError, ValueError, TypeError) as e:
            # fer-tune writes it atomically: a damaged file was cut or edited by something else.
            raise DataError(
                f"{path}: unreadable search state ({e}); restore it from a backup, or move it aside: "
                "report and export read the folder without it"
            ) from None

    def write_state(self, state: SearchState) -> None:
        """Write `fer_tune.json` atomically: a reader sees the old record or the new one, never half of one.

        Args:
            state: the new record.

        Raises:
            OutputError: the file cannot be written.
        """
        atomic_write_text(self.state_path, json.dumps(state.to_dict(), indent=2) + "\n")

    # -- spaces ---------------------------------------------------------------------------------------------

    def write_space(self, space: Any, phase: int = 1) -> Path:
        """Write a phase's resolved space, with a comment naming the file it came from.

        Args:
            space: the parsed `Space`, flags applied.
            phase: the phase number, from 1; its folder is created.

        Returns:
            The `space.yaml` written.
        """
        import yaml

        path = self.space_path(phase)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# resolved search space of phase {phase} (from {space.source}, flags applied)\n"
        path.write_text(header + yaml.safe_dump(space.to_dict(), sort_keys=False))
        return path

    def read_space(self, phase: int | None = None) -> Any:
        """The parsed `Space` of a phase (default: the latest on disk).

        Args:
            phase: the phase number, from 1; None for the latest.

        Returns:
            The space.

        Raises:
            DataError: the file is missing, unreadable or no longer a valid space.
        """
        from fer_tune.search.space import parse_space

        phase = phase or self.experiment_dirs()[-1][0]
        path = self.space_path(phase)
        try:
            raw = read_yaml(path)  # a missing, binary or damaged file: ConfigError naming it
            return parse_space(raw, name=self.name, source=str(path))
        except ConfigError as e:
            msg = " ".join(str(e).split())
            raise DataError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None

    def raw_space(self) -> dict[str, Any]:
        """Phase 1's `space.yaml` as a plain mapping ({} when absent): for readers that need one key.

        Returns:
            The YAML mapping, unvalidated.

        Raises:
            DataError: the file is unreadable or not a mapping.
        """
        path = self.space_path(1)
        if not path.exists():
            return {}
        try:
            raw = read_yaml(path) or {}
        except ConfigError as e:
            msg = str(e).removeprefix(f"{path}: ")
            raise DataError(f"{path}: unreadable search space: {msg}") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: unreadable search space: not a mapping")
        return raw

    def distributions(self) -> dict[str, Any]:
        """Config key (`train.lr`) -> the Optuna distribution the spaces declare for it, over every phase
        (the first phase that declares a key wins: later phases only narrow it).

        Returns:
            `{config key: optuna BaseDistribution}`.

        Raises:
            DataError: a phase's space is unreadable.
        """
        from fer_tune.search.conversion import config_distributions

        out: dict[str, Any] = {}
        for phase, _ in self.experiment_dirs():
            if self.space_path(phase).is_file():
                for key, dist in config_distributions(self.read_space(phase)).items():
                    out.setdefault(key, dist)
        return out

    # -- the Optuna study -----------------------------------------------------------------------------------

    def storage(self) -> Any:
        """The study's RDB storage (SQLite in `optuna.db`; created when absent).

        Returns:
            An optuna RDBStorage that unpickles by reopening the folder's database.
        """
        return study_storage(self.db_path)

    def load_study(self) -> Any:
        """The search's Optuna study; DataError when the search has none.

        Returns:
            The `optuna.Study`, loaded from `optuna.db`.

        Raises:
            DataError: no Optuna study, or `fer_tune.json` is unreadable.
        """
        import optuna

        state = self.read_state()
        if not state.study or not self.db_path.is_file():
            raise DataError(
                f"{self.db_path}: no Optuna study (search.algorithm is random or grid, or the search "
                "predates optuna.db)"
            )
        return optuna.load_study(study_name=state.study, storage=self.storage())

    # -- Ray's trials ---------------------------------------------------------------------------------------

    def stopped_by(self) -> dict[str, str]:
        """Trial id -> what stopped it, for the trials fer-tune stopped itself ({} if none).

        Returns:
            `{trial id: cause}`, from `stopped_by.json`.

        Raises:
            DataError: the file is unreadable or not a mapping.
        """
        path = self.path / STOPPED_BY_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable: {e}") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a mapping of trial id to stop cause")
        return {str(k): str(v) for k, v in data.items()}


def command_line() -> str:
    """The command as the user typed it (`fer-tune ...`), not the script's absolute path on this machine.

    Returns:
        The shell-quoted command line.
    """
    return shlex.join(["fer-tune", *sys.argv[1:]])
