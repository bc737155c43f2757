"""Where the data is when no --data is given: the flag, $FER_TUNE_DATA, the space's `data:` key, then ./."""

from __future__ import annotations

import os
from pathlib import Path

from fer_tune.base import DataError

KAGGLE = (
    "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge"
)

DATA_CANDIDATES = ("fer2013.csv", "icml_face_data.csv", "fer2013")


def find_data(flag: str | None, space_data: str | None) -> Path:
    """`--data`, else `$FER_TUNE_DATA`, else the space's `data:`, else FER2013 in the working directory.

    Args:
        flag: the `--data` value; None when not given.
        space_data: the search space's `data:` key; None when it has none.

    Returns:
        The resolved path of the data (a CSV or a folder).

    Raises:
        DataError: the path given does not exist, or none was given and none is found in the working
            directory.
    """
    for given, what in (
        (flag, "--data"),
        (os.environ.get("FER_TUNE_DATA"), "$FER_TUNE_DATA"),
        (space_data, "data:"),
    ):
        if given:
            path = Path(given).expanduser()
            if not path.exists():
                raise DataError(f"{path}: no such file or folder (from {what})")
            return path.resolve()
    for name in DATA_CANDIDATES:
        if Path(name).exists():
            return Path(name).resolve()
    raise DataError(
        f"no FER2013 data: no --data, $FER_TUNE_DATA or data: in the space, and no "
        f"{', '.join(DATA_CANDIDATES)} "
        f"in {Path.cwd()}; FER2013 is at {KAGGLE}"
    )
