"""`fer-tune report`: report.md and figures for one or more searches, read from their results folders
alone.

Per search: a leaderboard per architecture family, learning curves and an over/underfitting diagnosis of the
top trials, hyperparameter importance (Optuna's PED-ANOVA) with val_acc against the most important
parameters, and the epochs ASHA saved. Several searches are also compared side by side. No Ray cluster, GPU
or network is needed, and a search that is still running or was interrupted is reported as it stands.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from fer_tune.analysis.diagnosis import (
    OVERFIT_GAP_GROWTH,
    OVERFIT_VAL_DROP,
    RISE_WINDOW,
    UNDERFIT_ACC,
    UNDERFIT_RISE,
    diagnose,
)
from fer_tune.analysis.importance import param_importance
from fer_tune.analysis.plots import plot_curves, plot_importance, plot_scatter
from fer_tune.analysis.tables import duration, fmt_cell, hashable, markdown_table, missing, pct, short_key, si
from fer_tune.base import DataError, check_writable
from fer_tune.base.storage import local_folder
from fer_tune.search import SearchFolder, Selection, load_results, selection
from fer_tune.search.folder import REPORT_DIR
from fer_tune.search.results import VAL_ACC

TOP_TRIALS = 4  # trials whose curves and diagnosis are shown
TOP_PER_FAMILY = 3  # leaderboard rows per architecture family
TOP_PARAMS = 3  # most important parameters plotted against val_acc


# ---------------------------------------------------------------------------------------------- tables


def _varied(trials: pd.DataFrame) -> list[str]:
    """Config columns that take more than one value in these trials (what the search varied)."""
    cols = [c for c in trials.columns if c.startswith("config/")]
    return [c for c in cols if len({repr(hashable(v)) for v in trials[c] if not missing(v)}) > 1]


def _value(sel: Selection) -> Any:
    """How the ranked metric is shown: accuracies as percentages, the rest as numbers."""
    return pct if sel.metric.endswith("_acc") else fmt_cell


def family_leaderboards(
    trials: pd.DataFrame, top: int = TOP_PER_FAMILY, sel: Selection = VAL_ACC
) -> dict[str, pd.DataFrame]:
    """Per architecture family, its `top` trials with the config values the search varied, size and cost.

    Args:
        trials: the trials table of `load_results`.
        top: rows per family.
        sel: what the trials are ranked by.

    Returns:
        Family name -> its table, families in the order of their best trial.
    """
    boards = {}
    for arch, group in sel.rank(trials).groupby("arch", sort=False):
        varied = _varied(trials[trials["arch"] == arch])
        rows = group.head(top)
        shown = {sel.metric: rows[sel.column].map(_value(sel))}
        if sel.metric != "val_acc":
            shown["best val_acc"] = rows["best_val_acc"].map(pct)
        phases = {"phase": rows["phase"]} if trials.get("phase", pd.Series([1])).nunique() > 1 else {}
        board = pd.DataFrame(
            {
                "trial": rows["trial_id"],
                **phases,
                **shown,
                "best epoch": rows["best_epoch"],
                "status": rows["stop_reason"],
                **{short_key(c): rows[c].map(hashable) for c in varied},
                "params": rows["params"].map(si),
                "MACs": rows["macs"].map(si),
                "epochs": rows["epochs"],
                "time": rows["seconds"].map(duration),
            }
        )
        boards[str(arch)] = board
    return boards


def budget(trials: pd.DataFrame) -> dict[str, float]:
    """Epochs spent against the epochs the same trials would have run without early stopping.

    A trial the time budget cut would have been cut without early stopping too: it counts with the epochs
    it ran, not as a saving of ASHA.

    Args:
        trials: the trials table of `load_results`.

    Returns:
        Trials, epochs and seconds spent, what they would have been without early stopping, and what ASHA
        and the time budget cut.
    """
    ran = trials[trials["epochs"].fillna(0) > 0]
    cut = ran["stop_reason"] == "stopped by time budget"
    planned = ran["max_epochs"].where(~cut, ran["epochs"])
    spent, full = float(ran["epochs"].sum()), float(planned.sum())
    asha = ran[ran["stop_reason"] == "stopped by ASHA"]
    saved = float((asha["max_epochs"] - asha["epochs"]).sum())
    per_epoch = (ran["seconds"] / ran["epochs"]).fillna(0)
    return {
        "trials": len(ran),
        "epochs_spent": spent,
        "epochs_without_early_stopping": full,
        "epochs_saved_by_asha": saved,
        "fraction_saved_by_asha": saved / full if full else 0.0,
        "trials_cut_by_time_budget": int(cut.sum()),
        "epochs_cut_by_time_budget": float((ran["max_epochs"] - ran["epochs"])[cut].sum()),
        "seconds_spent": float(ran["seconds"].sum()),
        "seconds_without_early_stopping": float((per_epoch * planned).sum()),
    }


# ------------------------------------------------------------------------------------------ importance


# --------------------------------------------------------------------------------------------- figures


# ---------------------------------------------------------------------------------------------- report


def _slug(names: Sequence[str]) -> list[str]:
    """File-name-safe, unique prefixes for the searches' figures."""
    out: list[str] = []
    for n in names:
        s = re.sub(r"[^A-Za-z0-9_.-]+", "_", n) or "search"
        out.append(s if s not in out else f"{s}_{len(out)}")
    return out


def _load(search_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = Path(search_dir)
    if not path.is_dir():
        raise DataError(f"{path}: no such search folder")
    return load_results(path)


def _provenance(search_dir: str | Path) -> str:
    """Space, data, whether the search finished and its phases, from its state record (when present)."""
    folder = SearchFolder(search_dir)
    if not folder.is_search():
        return ""
    state = folder.read_state()
    done = (
        "finished"
        if state.finished
        else f"not finished (running, or resume it: fer-tune --resume {search_dir})"
    )
    text = f"Space `{state.space}`, data `{state.data}`, started {state.started}, {done}."
    if len(state.phases) > 1:
        text += " Phases (the leaderboards' `phase` column; one Optuna study, `optuna.db`):\n\n" + "\n".join(
            f"- phase {p.number}: {p.num_samples or ''} trials from `{p.space}`, started {p.started}"
            + (
                f"; {len(p.outside)} earlier trials outside its space did not steer its sampler"
                if p.outside
                else ""
            )
            for p in state.phases
        )
    return text


def _search_section(
    name: str,
    trials: pd.DataFrame,
    history: pd.DataFrame,
    out: Path,
    about: str,
    sel: Selection = VAL_ACC,
    declared: Mapping[str, Any] | None = None,
) -> str:
    """One search's section; `name` is also the prefix of its figures' file names. `declared`: the space's
    distributions per config key (for the log scales)."""
    lines = [f"## Search `{name}`", "", *([about, ""] if about else [])]
    counts = trials["stop_reason"].fillna("unknown").map(lambda s: s.split(":")[0]).value_counts()
    lines += [f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", ""]
    ranked = sel.rank(trials)
    if ranked.empty:
        return "\n".join([*lines, f"No trial has reported a {sel.metric} yet.", ""])

    lines += [f"Trials are ranked by the best epoch's {sel.metric} ({sel.mode}).", ""]
    lines += ["### Leaderboard per architecture family", ""]
    for arch, board in family_leaderboards(trials, sel=sel).items():
        lines += [f"**{arch}**", "", markdown_table(board), ""]

    top = ranked["trial_id"].head(TOP_TRIALS).tolist()
    lines += ["### Top trials: learning curves and fit", ""]
    fig = plot_curves(history, top, out / f"{name}_curves.png", title=name)
    lines += [f"![learning curves]({fig.name})", ""]
    lines += [
        "train_acc is measured on augmented batches, clean_train_acc on the un-augmented training images.",
        "",
    ]
    diag = []
    for tid in top:
        d = diagnose(history[history["trial_id"] == tid])
        row = {"trial": tid, **{k: (pct(v) if isinstance(v, float) else v) for k, v in asdict(d).items()}}
        diag.append(row)
    lines += [markdown_table(pd.DataFrame(diag)), ""]
    lines += [
        f"Rules: overfitting when val_acc falls >= {OVERFIT_VAL_DROP:.0%} after its best epoch while the "
        f"clean-train/val gap grows >= {OVERFIT_GAP_GROWTH:.0%}; underfitting when both accuracies end below "
        f"{UNDERFIT_ACC:.0%} and still gain >= {UNDERFIT_RISE:.0%} over the last {RISE_WINDOW} epochs; "
        "regularisation inverts the gap when augmented train_acc is below val_acc and clean_train_acc "
        "above it.",
        "",
    ]

    lines += ["### Hyperparameter importance", ""]
    imp, dists, note = param_importance(trials, sel, declared)
    if imp:
        table = pd.DataFrame({"parameter": list(imp), "importance": [f"{v:.3f}" for v in imp.values()]})
        fig = plot_importance(imp, out / f"{name}_importance.png")
        params = [p for p in imp if p in dists][:TOP_PARAMS]
        scatter = plot_scatter(trials, dists, params, out / f"{name}_scatter.png", sel)
        lines += [f"{note}.", "", markdown_table(table), "", f"![importance]({fig.name})", ""]
        lines += [f"![{sel.metric} against the most important parameters]({scatter.name})", ""]
    else:
        lines += [f"Not computed: {note}.", ""]

    b = budget(trials)
    lines += ["### Budget", ""]
    lines += [
        f"{b['epochs_spent']:.0f} epochs run by {b['trials']} trials; without early stopping the same trials "
        f"would have run {b['epochs_without_early_stopping']:.0f}. ASHA stopped trials "
        f"{b['epochs_saved_by_asha']:.0f} epochs early: {b['fraction_saved_by_asha']:.0%} of the full "
        f"budget. Training time {duration(b['seconds_spent'])} (about "
        f"{duration(b['seconds_without_early_stopping'])} without early stopping, at each trial's own "
        "seconds per epoch).",
        "",
    ]
    if b["trials_cut_by_time_budget"]:
        lines += [
            f"The time budget cut {b['trials_cut_by_time_budget']} running trials "
            f"({b['epochs_cut_by_time_budget']:.0f} epochs unrun); they count with the epochs they ran, "
            "not as savings of early stopping.",
            "",
        ]
    return "\n".join(lines)


def _comparison(
    results: Mapping[str, tuple[pd.DataFrame, pd.DataFrame]], sels: Mapping[str, Selection]
) -> str:
    rows, fam = [], {}
    for name, (trials, _) in results.items():
        sel = sels[name]
        ranked, b = sel.rank(trials), budget(trials)
        best = ranked.iloc[0] if len(ranked) else None
        rows.append(
            {
                "search": name,
                "trials": len(trials),
                "ranked by": f"{sel.metric} ({sel.mode})",
                "best val_acc": pct(best["best_val_acc"]) if best is not None else "",
                "best trial": best["trial_id"] if best is not None else "",
                "best arch": best["arch"] if best is not None else "",
                "epochs run": f"{b['epochs_spent']:.0f}",
                "ASHA saved": f"{b['fraction_saved_by_asha']:.0%}",
                "time": duration(b["seconds_spent"]),
            }
        )
        # Per family, the val_acc of the trial the search ranked first there (not the highest val_acc).
        fam[name] = ranked.groupby("arch", sort=False)["best_val_acc"].first().map(pct)
    per_family = pd.DataFrame(fam).fillna("").rename_axis("family").reset_index()
    return "\n".join(
        [
            "## Comparison",
            "",
            markdown_table(pd.DataFrame(rows)),
            "",
            "val_acc of the best trial per family and search:",
            "",
            markdown_table(per_family),
            "",
        ]
    )


def write_report(search_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Write `report.md` and its PNG figures for one or more search folders; returns the report's path.

    `out_dir` defaults to `<search>/report` for one search and `./report` for several. Missing or corrupt
    result files raise DataError naming the file.

    Args:
        search_dirs: search folders, local or URIs; several are also compared.
        out_dir: where report.md and the figures go; None for the default above.

    Returns:
        The path of report.md.

    Raises:
        DataError: no folder given, or a folder or one of its files cannot be read.
        OutputError: the output folder cannot be written.
    """
    if not search_dirs:
        raise DataError("no search folder given")
    search_dirs = [local_folder(d) for d in search_dirs]  # a search in an object store: a local copy
    slugs = _slug([Path(d).resolve().name for d in search_dirs])
    results = {s: _load(d) for s, d in zip(slugs, search_dirs, strict=True)}
    sels = {s: selection(d) for s, d in zip(slugs, search_dirs, strict=True)}
    out = (
        Path(out_dir)
        if out_dir
        else (Path(search_dirs[0]) / REPORT_DIR if len(search_dirs) == 1 else Path(REPORT_DIR))
    )
    check_writable(out, "--out" if out_dir else "report folder")  # after reading: no <search> is created
    parts = ["# fer-tune report", "", "Searches: " + ", ".join(f"`{d}`" for d in search_dirs) + ".", ""]
    parts += ["Validation accuracy (val_acc) is on PublicTest; PrivateTest is never read.", ""]
    if len(results) > 1:
        parts.append(_comparison(results, sels))
    for (slug, (trials, history)), d in zip(results.items(), search_dirs, strict=True):
        declared = SearchFolder(d).distributions() if SearchFolder(d).is_search() else {}
        parts.append(_search_section(slug, trials, history, out, _provenance(d), sels[slug], declared))
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
