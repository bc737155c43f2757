"""The Optuna study of a search in its `optuna.db`: storage that reopens by URL when Ray unpickles it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

# Read in the driver when Ray unpickles a searcher: the study's database is the one of the folder being run
# now, not the absolute path it was pickled with (a folder may have been moved since).
STUDY_DB_ENV = "FER_TUNE_STUDY_DB"


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
