"""Table cells for the report: markdown tables, percentages, SI counts, durations, short column names."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd


def fmt_cell(v: Any) -> str:
    if missing(v):
        return ""
    v = hashable(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`, which is not a dependency)."""
    cols = [fmt_cell(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def pct(x: float) -> str:
    return "" if missing(x) else f"{100 * x:.2f}%"


def si(x: float) -> str:
    if missing(x):
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def duration(s: float) -> str:
    if missing(s):
        return ""
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def short_key(col: str) -> str:
    """`config/train/lr` -> `train.lr`."""
    return col.removeprefix("config/").replace("/", ".")


def hashable(v: Any) -> Any:
    """A config value as an Optuna categorical choice: lists (also parquet's arrays) by their repr."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    return v if isinstance(v, (str, int, float, bool)) else repr(v)


def missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))
