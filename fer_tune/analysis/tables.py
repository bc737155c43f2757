"""Table cells for the report: markdown tables, percentages, SI counts, durations, short column names."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def fmt_cell(v: Any) -> str:
    """A value as a markdown table cell.

    Args:
        v: any value; None and NaN give an empty cell.

    Returns:
        Floats to 4 significant digits, anything else as text with `|` escaped and newlines as spaces.
    """
    if missing(v):
        return ""
    v = hashable(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`, which is not a dependency).

    Args:
        df: the table; its index is left out.

    Returns:
        The markdown, without a final newline.
    """
    cols = [fmt_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def pct(x: float) -> str:
    """A fraction as a percentage with two decimals (`0.7123` -> `71.23%`).

    Args:
        x: the fraction; None or NaN gives "".

    Returns:
        The text.
    """
    return "" if missing(x) else f"{100 * x:.2f}%"


def si(x: float) -> str:
    """A count with an SI suffix, 3 significant digits (`11200000` -> `11.2M`).

    Args:
        x: the count; None or NaN gives "".

    Returns:
        The text.
    """
    if missing(x):
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def duration(s: float) -> str:
    """A duration in seconds, minutes (from 2 min) or hours (from 2 h).

    Args:
        s: the duration, in seconds; None or NaN gives "".

    Returns:
        The text (`95s`, `12.5m`, `3.1h`).
    """
    if missing(s):
        return ""
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def short_key(col: str) -> str:
    """`config/train/lr` -> `train.lr`.

    Args:
        col: a trials-table column.

    Returns:
        The dotted config key.
    """
    return col.removeprefix("config/").replace("/", ".")


def hashable(v: Any) -> Any:
    """A config value as an Optuna categorical choice: lists (also parquet's arrays) by their repr.

    Args:
        v: a value from the trials table.

    Returns:
        A str, int, float or bool (numpy scalars as Python ones).
    """
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    return v if isinstance(v, (str, int, float, bool)) else repr(v)


def missing(v: Any) -> bool:
    """Whether a table value is absent.

    Args:
        v: a value from a table.

    Returns:
        True for None, `pd.NA` and NaN.
    """
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))
