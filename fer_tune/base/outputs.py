"""Outputs never overwrite their sources: the one check every writing command makes before it writes.

A command's output path is refused, with one line naming the flag, the path and why, when it

- lies in a search folder (one holding `fer_tune.json`): its files belong to the search and the commands
  that read it (`report`, `export`, `resume`, `extend`);
- is a file the same command reads (`export-model RUN -o RUN/model.pt`), or, for an output folder, holds
  one where the command writes (`train RUN/config.yaml --out RUN` would replace that config.yaml);
- is a folder of another kind than the command makes: a retrain folder (`seed_<s>/` folders) given to
  `train --out`, a run folder (`model.pt` or `checkpoint.pt`) given to `retrain --out`.

The kinds are told by their marker files alone, so this module needs nothing above `fer_tune.base`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from pathlib import Path

from fer_tune.base.errors import OutputError
from fer_tune.base.storage import is_uri

SEARCH_STATE = "fer_tune.json"  # a search folder's state record (fer_tune.search.folder.STATE_FILE is it)
RUN_FILES = ("model.pt", "checkpoint.pt")  # a run folder: what `fer-tune train` leaves
SEED_DIR = re.compile(r"seed_\d+")  # a retrain folder holds one run folder per seed

# What each command writes into its output folder (patterns relative to it), for `check_output(writes=)`.
TRAIN_WRITES = ("config.yaml", "metrics.csv", "checkpoint.pt", "model.pt")
RETRAIN_WRITES = ("config.yaml", "metrics.json", "confusion_*.png", "seed_*/*")
EVALUATE_WRITES = ("metrics.json", "confusion_*.png")


def search_root(path: str | Path) -> Path | None:
    """The search folder `path` is or lies in: itself or the nearest folder above it holding `fer_tune.json`.

    Args:
        path: any path; need not exist.

    Returns:
        The search folder (resolved), or None.
    """
    p = Path(path).expanduser().resolve()
    for folder in (p, *p.parents):
        if (folder / SEARCH_STATE).is_file():
            return folder
    return None


def folder_kind(path: str | Path) -> tuple[str, str] | None:
    """What an existing folder is, by its marker files: `search`, `retrain` or `run`, with the reason.

    A `seed_<s>` folder of a retrain folder is part of the retrain, not a run of its own.

    Args:
        path: a folder; a missing one, or a file, is none of them.

    Returns:
        (kind, why), or None for a new folder or one of no kind (say an evaluation's).
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if (p / SEARCH_STATE).is_file():
        return "search", f"it holds {SEARCH_STATE}"
    if _has_seeds(p):
        return "retrain", "it holds seed_<s>/ folders"
    if SEED_DIR.fullmatch(p.resolve().name) and _has_seeds(p.resolve().parent):
        return "retrain", f"a seed of the retrain folder {p.resolve().parent}"
    for name in RUN_FILES:
        if (p / name).is_file():
            return "run", f"it holds {name}"
    return None


def check_output(
    path: str | Path,
    flag: str,
    *,
    sources: Iterable[str | Path] = (),
    writes: Iterable[str] | None = None,
    kind: str | None = None,
) -> Path:
    """Refuse an output that would write over what the command reads, a search's files or another kind of
    folder; call it before anything is written (and before the data is parsed).

    Args:
        path: the output: a file, or (with `writes`) a folder; a URI is not checked.
        flag: the flag that named it (`--out`, `-o`), for the message.
        sources: the files the command reads (a model, a config, a checkpoint).
        writes: for an output folder, the files the command writes in it, as patterns relative to it
            (`seed_*/*`); None when `path` is a file.
        kind: for an output folder, the kind the command makes (`run`, `retrain`, `evaluation`); an existing
            folder of another kind (see `folder_kind`) is refused. None: any.

    Returns:
        The output, with `~` expanded and made absolute.

    Raises:
        OutputError: one line: the flag, the path and why it is refused.
    """
    if is_uri(path):
        return Path(path)
    out = Path(path).expanduser().resolve()
    root = search_root(out)
    if root is not None:
        where = "is a search folder" if root == out else f"lies in the search folder {root}"
        raise OutputError(f"{flag} {path}: {where}, whose files belong to that search; write outside it")
    for src in {Path(s).expanduser().resolve() for s in sources}:
        if writes is None and src == out:
            raise OutputError(f"{flag} {path}: is {src}, which this command reads; writing it would lose it")
        if writes is not None and out in src.parents:
            rel = src.relative_to(out).as_posix()
            if any(fnmatch.fnmatchcase(rel, w) for w in writes):
                raise OutputError(
                    f"{flag} {path}: holds {rel}, which this command reads and would write over; "
                    f"give another {flag}"
                )
    found = folder_kind(out) if writes is not None else None
    if kind is not None and found is not None and found[0] != kind:
        made = f"a {kind} folder" if kind != "evaluation" else "metrics.json"
        raise OutputError(
            f"{flag} {path}: a {found[0]} folder ({found[1]}); this command writes {made} there and would "
            f"mix or replace its files: give a new folder"
        )
    return out


def _has_seeds(folder: Path) -> bool:
    try:
        return any(SEED_DIR.fullmatch(c.name) and c.is_dir() for c in folder.iterdir())
    except OSError:
        return False
