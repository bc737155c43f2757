"""Files written whole: the one atomic write, and the one conversion of results to strict JSON."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from fer_tune.base.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None]) -> None:
    """Call `write(f)` on a new temporary file beside `path`, then rename it over `path`.

    Readers never see half a file: they see the old one or the new one. A full or read-only disk ends with
    one `OutputError` naming the file, and the previous version stays whole.

    Args:
        path: the file to write (its folder must exist).
        write: writes the content to the binary file object it is given; text goes as `f.write(s.encode())`
            or through `atomic_write_text`.

    Raises:
        OutputError: the temporary file cannot be written or renamed (full or read-only disk).
    """
    path = Path(path)
    tmp = ""
    try:
        # mkstemp: a unique name, so two writers (threads, processes) never share a temporary file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:  # a Python file: ENOSPC comes as OSError, not torch's "unexpected pos"
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise OutputError(f"{path}: cannot write: {e.strerror or e} (the last whole one is kept)") from None
    except BaseException:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_write`.

    Args:
        path: the file to write (its folder must exist).
        text: the whole new content.

    Raises:
        OutputError: the file cannot be written.
    """
    atomic_write(path, lambda f: f.write(text.encode()))


def json_safe(x: Any) -> Any:
    """Plain, strict JSON values: numpy scalars and arrays as Python ones, NaN and inf as null, keys as str.

    Args:
        x: a value, a mapping or a sequence, nested to any depth.

    Returns:
        The same structure with only JSON's types in it.
    """
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x
