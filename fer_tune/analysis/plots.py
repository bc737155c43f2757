"""The report's figures (matplotlib's object API: no pyplot, no global backend, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.figure import Figure  # object API: no pyplot, no global backend, headless

from fer_tune.analysis.tables import hashable, missing
from fer_tune.search import Selection
from fer_tune.search.results import VAL_ACC


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def plot_curves(history: pd.DataFrame, trial_ids: Sequence[str], path: Path, title: str = "") -> Path:
    """Accuracies (augmented train, clean train, val) and losses per epoch, one row per trial.

    Args:
        history: the history table of `load_results`.
        trial_ids: the trials to plot, top to bottom.
        path: the PNG file to write.
        title: put before each panel's title; empty for none.

    Returns:
        `path`.
    """
    fig = Figure(figsize=(10, 2.8 * max(1, len(trial_ids))), layout="constrained")
    for i, tid in enumerate(trial_ids):
        h = history[history["trial_id"] == tid].sort_values("epoch")
        acc, loss = (
            fig.add_subplot(len(trial_ids), 2, 2 * i + 1),
            fig.add_subplot(len(trial_ids), 2, 2 * i + 2),
        )
        for key, style in (("train_acc", ":"), ("clean_train_acc", "--"), ("val_acc", "-")):
            if key in h and h[key].notna().any():
                acc.plot(h["epoch"], h[key], style, marker=".", label=key)
        for key, style in (("train_loss", ":"), ("val_loss", "-")):
            if key in h and h[key].notna().any():
                loss.plot(h["epoch"], h[key], style, marker=".", label=key)
        if h["val_acc"].notna().any():
            best = h.loc[h["val_acc"].idxmax(), "epoch"]
            for ax in (acc, loss):
                ax.axvline(best, color="grey", lw=0.8, ls="--")
        acc.set_title(f"{title} {tid}: accuracy".strip(), fontsize=9)
        loss.set_title(f"{title} {tid}: loss".strip(), fontsize=9)
        for ax in (acc, loss):
            ax.set_xlabel("epoch")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_importance(importances: Mapping[str, float], path: Path) -> Path:
    """A horizontal bar per parameter, the most important on top.

    Args:
        importances: `group.key` -> importance, most important first.
        path: the PNG file to write.

    Returns:
        `path`.
    """
    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 0.35 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    return _save(fig, path)


def plot_scatter(
    trials: pd.DataFrame,
    dists: Mapping[str, Any],
    params: Sequence[str],
    path: Path,
    sel: Selection = VAL_ACC,
) -> Path:
    """The best value of the ranked metric against each parameter, completed trials filled, stopped hollow.

    Args:
        trials: the trials table of `load_results`.
        dists: `group.key` -> the Optuna distribution of each parameter (categorical ones get ticks, log
            ones a log axis).
        params: the parameters to plot, one panel each.
        path: the PNG file to write.
        sel: what the trials are ranked by.

    Returns:
        `path`.
    """
    fig = Figure(figsize=(4 * len(params), 3.4), layout="constrained")
    ranked = trials.dropna(subset=[sel.column])
    for i, name in enumerate(params):
        ax, dist = fig.add_subplot(1, len(params), i + 1), dists[name]
        x = ranked[f"config/{name.replace('.', '/')}"].map(lambda v: None if missing(v) else hashable(v))
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            choices = list(dist.choices)
            x = x.map(lambda v, c=choices: c.index(v) if v in c else None)
            ax.set_xticks(range(len(choices)), [str(c) for c in choices], rotation=30, fontsize=7)
            ax.margins(x=0.2)
        elif dist.log:
            ax.set_xscale("log")
        x, done = pd.to_numeric(x, errors="coerce"), ranked["stop_reason"] == "completed"
        ax.scatter(x[done], ranked[sel.column][done], label="completed")
        ax.scatter(
            x[~done], ranked[sel.column][~done], facecolors="none", edgecolors="C1", label="stopped/other"
        )
        ax.set_xlabel(name)
        ax.set_ylabel(f"best {sel.metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)
