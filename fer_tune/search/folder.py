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

import dataclasses
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

from fer_tune.base import DataError, atomic_write_text

STATE_FILE = "fer_tune.json"  # SearchState
SPACE_FILE = "space.yaml"  # the resolved space of a phase, in its experiment folder
STOPPED_BY_FILE = "stopped_by.json"  # trial id -> "time budget", written by fer_tune.search.searcher.StopLog
OPTUNA_DB = "optuna.db"  # the Optuna study of every phase (SQLite)
TRIALS_CSV, TRIALS_PARQUET = "trials.csv", "trials.parquet"
LEADERBOARD = "leaderboard.md"
BEST_CONFIG = "best_config.yaml"
REPORT_DIR = "report"
# Read in the driver when Ray unpickles a searcher: the study's database is the one of the folder being run
# now, not the absolute path it was pickled with (a folder may have been moved since).
STUDY_DB_ENV = "FER_TUNE_STUDY_DB"
# The search folder the driver works in now (a remote search's local mirror): where StopLog records its stops.
FOLDER_ENV = "FER_TUNE_SEARCH_FOLDER"


@dataclass
class Phase:
    """One run of trials in a search: the first search, or one `fer-tune extend`.

    Args:
        number: 1 for the search itself; 2, 3, ... for extensions.
        space: the space file it was given.
        num_samples: the trials it adds.
        started: when it started (ISO 8601, local time, seconds).
        finished: whether it ran to its end (not stopped by Ctrl-C or a crash).
        ended: when it ended (ISO 8601); None while running.
        command: the command line that started it.
        outside: ids of earlier trials its space could not have proposed: kept in the results, hidden from
            its sampler.
    """

    number: int  # 1: the search itself; 2, 3, ...: extensions
    space: str  # the space file it was given
    num_samples: int  # trials it adds
    started: str
    finished: bool = False
    ended: str | None = None
    command: str = ""
    # Earlier trials the phase's space could not have proposed: kept in the results, hidden from its sampler.
    outside: list[str] = field(default_factory=list)


@dataclass
class SearchState:
    """`fer_tune.json`: what resume, extend and report need to know about a search.

    Args:
        name: the search's name (its folder's).
        space: phase 1's space file.
        data: the absolute path of the data.
        started: when the search started (ISO 8601).
        cpus: the CPUs it was given (`--cpus`); None for all of the cluster's.
        gpus: the GPUs it was given (`--gpus`); None for all of the cluster's.
        wandb_project: the Weights & Biases project trials log to; None for no logging.
        wandb_mode: `online` or `offline`.
        finished: whether the latest phase finished.
        ended: when the latest phase ended (ISO 8601); None while running.
        command: the command line that started the search.
        study: the Optuna study's name in optuna.db; None for a search that is not an Optuna one.
        phases: every phase, in order; the last is the latest.
    """

    name: str
    space: str  # phase 1's space file
    data: str  # absolute path of the data
    started: str
    cpus: int | None = None
    gpus: float | None = None
    wandb_project: str | None = None
    wandb_mode: str = "online"
    finished: bool = False  # the latest phase finished
    ended: str | None = None
    command: str = ""
    study: str | None = None  # the Optuna study's name in optuna.db (None: not an Optuna search)
    phases: list[Phase] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchState:
        """The state read from `fer_tune.json`'s JSON; unknown keys are ignored.

        Args:
            raw: the parsed JSON; a record written before phases existed gets phase 1 from its own fields.

        Returns:
            The state.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in known and k != "phases"})
        state.phases = [Phase(**p) for p in raw.get("phases") or []]
        if not state.phases:  # written before phases existed: the search is its only phase
            state.phases = [
                Phase(1, state.space, 0, state.started, state.finished, state.ended, state.command)
            ]
        return state

    def to_dict(self) -> dict[str, Any]:
        """The state as `fer_tune.json` holds it.

        Returns:
            Plain, JSON-safe values; `from_dict` reads them back.
        """
        return dataclasses.asdict(self)

    @property
    def phase(self) -> Phase:
        """The latest phase."""
        return self.phases[-1]


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
    def open(cls, path: str | Path) -> SearchFolder:
        """An existing search: a local folder, or a URI downloaded into its local mirror.

        Args:
            path: the search folder or its URI.

        Returns:
            The folder (not checked to be a search: see `is_search`).

        Raises:
            DataError: a remote folder cannot be listed or holds no `fer_tune.json`.
        """
        from fer_tune.base.storage import is_uri, local_folder

        if is_uri(path):
            return cls(local_folder(path), remote=str(path).rstrip("/"))
        return cls(path)

    @classmethod
    def create(cls, results: str | Path, name: str) -> SearchFolder:
        """A new search `name` under `results` (a folder or a URI), test-written first.

        Args:
            results: the folder (or URI) that holds searches (`--results`).
            name: the new search's name (`--name`).

        Returns:
            The new search's folder (not created yet for a local one).

        Raises:
            OutputError: `results` cannot be written.
            ConfigError: the URI holds a search of that name already.
        """
        from fer_tune.base import ConfigError, check_writable
        from fer_tune.base.storage import check_writable_uri, filesystem, is_uri, join, mirror_of

        if is_uri(results):
            uri = join(check_writable_uri(str(results), "--results"), name)
            fs, path = filesystem(uri)
            if fs.get_file_info(join(path, STATE_FILE)).is_file:
                raise ConfigError(
                    f"--name: {uri} holds a search already; continue it with fer-tune --resume {uri}"
                )
            import shutil

            shutil.rmtree(mirror_of(uri), ignore_errors=True)  # a leftover of an earlier search of that name
            return cls(mirror_of(uri), remote=uri)
        return cls(check_writable(Path(results).expanduser().resolve(), "--results") / name)

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
        from fer_tune.base.storage import pull

        if self.remote is not None:
            pull(self.remote, self.path, require=None)

    def sync_up(self) -> None:
        """A remote search: upload fer-tune's own files from the mirror to the store."""
        from fer_tune.base.storage import push

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
        import yaml

        from fer_tune.base import ConfigError
        from fer_tune.search.space import parse_space

        phase = phase or self.experiment_dirs()[-1][0]
        path = self.space_path(phase)
        try:
            raw = yaml.safe_load(path.read_text())
            return parse_space(raw, name=self.name, source=str(path))
        except FileNotFoundError:
            raise DataError(f"{path}: no such file") from None
        except (OSError, yaml.YAMLError, ConfigError) as e:
            raise DataError(f"{path}: {' '.join(str(e).split())}") from None

    def raw_space(self) -> dict[str, Any]:
        """Phase 1's `space.yaml` as a plain mapping ({} when absent): for readers that need one key.

        Returns:
            The YAML mapping, unvalidated.

        Raises:
            DataError: the file is unreadable or not a mapping.
        """
        import yaml

        path = self.space_path(1)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            return {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"{path}: unreadable search space: {' '.join(str(e).split())}") from None
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
                f"{self.db_path}: no Optuna study (search.algorithm is not optuna, or the search "
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

    def ray_trials(self) -> list[dict[str, Any]]:
        """Trial id, phase, status, config and folder of every trial of every phase, from Ray's newest
        experiment-state snapshot of each phase, read as plain JSON (its cloudpickled fields are never
        decoded; the config comes from the trial's own `params.json`).

        Returns:
            One `{"trial_id", "phase", "status", "config", "path"}` per trial, phase by phase.

        Raises:
            DataError: no such folder, phase 1 has no experiment state, or a state or `params.json` is
                unreadable.
        """
        if not self.path.is_dir():
            raise DataError(f"{self.path}: no such search folder")
        out: list[dict[str, Any]] = []
        for phase, exp in self.experiment_dirs():
            states = sorted(exp.glob("experiment_state-*.json"))
            if not states:
                if phase == 1:
                    raise DataError(
                        f"{self.path}: no experiment_state-*.json; not a Ray Tune search folder (yet)"
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


def command_line() -> str:
    """The command as the user typed it (`fer-tune ...`), not the script's absolute path on this machine.

    Returns:
        The shell-quoted command line.
    """
    return shlex.join(["fer-tune", *sys.argv[1:]])


def study_storage(db: str | Path) -> Any:
    """Optuna's RDB storage on the SQLite file `db`, pickled as a path (see `_StudyStorage`).

    Args:
        db: the SQLite file; created when absent.

    Returns:
        The storage; unpickled, it reopens `$FER_TUNE_STUDY_DB` when set, else `db`.
    """
    return _StudyStorage(f"sqlite:///{Path(db).resolve()}")


def _reopen(url: str) -> Any:
    override = os.environ.get(STUDY_DB_ENV)
    return _StudyStorage(f"sqlite:///{override}" if override else url)


class _StudyStorage(RDBStorage):
    """RDBStorage that unpickles by reopening its database: Ray pickles the searcher, with its storage, into
    `tuner.pkl` and the searcher state, and the folder being resumed wins over the path saved there."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _reopen, (self.url,)
