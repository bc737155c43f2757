"""User-facing errors: the CLI prints them as one line on stderr and exits with status 2."""

from __future__ import annotations

import os
import reprlib
import tempfile
from pathlib import Path
from typing import Any


class FerTuneError(Exception):
    """Base of every error caused by the user's input (a file, a config, a flag), not by a bug."""


class DataError(FerTuneError):
    """Unreadable or malformed dataset: the message names the file and the row or image."""


class ConfigError(FerTuneError):
    """Invalid run config or search space: the message starts with the dotted key path (`model.kernels`)."""


class DeviceError(FerTuneError):
    """The device asked for cannot be used: no CUDA, fewer GPUs than asked for, an unsupported precision."""


class OutputError(FerTuneError):
    """An output folder or file that cannot be written: the message names it and the OS's reason."""


def _short_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxset = 3, 6, 8, 8, 8
    r.maxstring = r.maxother = r.maxlong = 200
    return r


_REPR = _short_repr()  # never builds a whole repr: a value may be a huge string or an alias-expanded tree


def shown(value: Any, limit: int = 80) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters (`...` where cut).

    A message is one line a person reads: a value that a YAML alias expanded, or a binary file read as text,
    must not turn it into kilobytes.

    Args:
        value: any value (a string is quoted, as `repr` does).
        limit: the most characters returned, at least 8.

    Returns:
        The repr, whole when it fits, else its first `limit - 3` characters and `...`.
    """
    try:
        text = _REPR.repr(value)
    except ValueError:  # it holds an int too long to print (Python refuses over 4,300 digits)
        text = f"<{type(value).__name__} too long to print>"
    return cut(text, limit)  # one line, whatever a type's own repr does


def cut(text: str, limit: int = 300) -> str:
    """`text` on one line (its line breaks as spaces), at most `limit` characters (`...` where cut).

    Args:
        text: a message, or part of one (a library's error, a quoted value).
        limit: the most characters returned, at least 8.

    Returns:
        The text, whole when it fits, else its first `limit - 3` characters and `...`.
    """
    text = " ".join(text.splitlines())
    limit = max(limit, 8)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check(ok: bool, key: str, msg: str) -> None:
    """Raise `ConfigError("<key>: <msg>")` unless `ok`: the one way configs and spaces report a bad value.

    Args:
        ok: the condition that holds for a good value.
        key: the dotted key path the message starts with (`model.kernels`).
        msg: what is wrong with the value, and what would be right.

    Raises:
        ConfigError: when `ok` is false.
    """
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def check_writable(folder: str | Path, flag: str) -> Path:
    """Create `folder` if needed, then create, write, fsync and delete a small file in it; else OutputError.

    Commands call this before parsing data or starting Ray, so a read-only, misspelt or full output folder
    fails in a second, not after the work. Only a real write tells: `os.access` passes for root and knows
    nothing of full disks or read-only mounts, and a full disk may only refuse at fsync.

    Args:
        folder: the output folder (`~` is expanded); created with its parents when missing.
        flag: the command-line flag that named it (`--out`), for the message.

    Returns:
        The folder, with `~` expanded.

    Raises:
        OutputError: the path is a file, or the folder cannot be created or written.
    """
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: cannot write there: a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fer-tune-write-test-", dir=path)
        try:
            os.write(fd, b"\0" * 4096)  # one block: a full disk refuses it here or at fsync
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write there: {e.strerror or e}") from None
    return path
