"""`fer-tune report`: report.md and figures for one or more searches, read from their results folders alone.

Per search: a leaderboard per architecture family, learning curves and an over/underfitting diagnosis of the
top trials, hyperparameter importance (Optuna's PED-ANOVA) with val_acc against the most important parameters,
and the epochs ASHA saved. Several searches are also compared side by side. No Ray cluster, GPU or network is
needed, and a search that is still running or was interrupted is reported as it stands.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure  # object API: no pyplot, no global backend, headless

from fer_tune.errors import DataError, check_writable
from fer_tune.folder import REPORT_DIR, SearchFolder
from fer_tune.remote import local_folder
from fer_tune.results import VAL_ACC, Selection, load_results, selection

TOP_TRIALS = 4  # trials whose curves and diagnosis are shown
TOP_PER_FAMILY = 3  # leaderboard rows per architecture family
TOP_PARAMS = 3  # most important parameters plotted against val_acc
FINISHED = ("completed", "stopped by ASHA")  # trials whose best_val_acc is final

# Diagnosis thresholds, as accuracy fractions. PublicTest has 3,589 images, yet val_acc moves ~0.5-1 point
# between epochs from lr and batch-norm noise, so every rule asks for a change clearly above that.
OVERFIT_VAL_DROP = 0.01  # val_acc ends at least 1 point below its best...
OVERFIT_GAP_GROWTH = 0.03  # ...while clean_train_acc - val_acc grew 3+ points since the best epoch
UNDERFIT_ACC = 0.70  # a FER2013 CNN that fits its data reaches 75-95% clean train accuracy; below 70% on both
UNDERFIT_RISE = 0.01  # ...and still gaining 1+ point over the last RISE_WINDOW epochs: it needed more epochs
RISE_WINDOW = 3  # epochs over which "still rising" is measured
INVERT_MARGIN = 0.005  # augmented train_acc below val_acc by more than rounding noise

# Importance: PED-ANOVA compares where the top-quantile trials lie with where all trials lie; below ~8
# finished trials the top quantile holds 1-3 points and the ranking is noise, so we say so instead.
MIN_IMPORTANCE_TRIALS = 8
MIN_TOP_TRIALS = 5  # Optuna's docs: prefer >= 5 trials above the target quantile


@dataclass(frozen=True)
class Diagnosis:
    """The fit of one trial, from its per-epoch clean_train_acc, train_acc and val_acc."""

    label: str
    epochs: int
    best_epoch: int
    val_best: float
    val_end: float
    clean_best: float
    clean_end: float
    train_best: float
    gap_best: float  # clean_train_acc - val_acc at the best epoch
    gap_end: float  # ... at the last epoch


def diagnose(history: pd.DataFrame | Sequence[Mapping[str, float]]) -> Diagnosis:
    """Label a metric history (rows with epoch, train_acc, clean_train_acc, val_acc) as one of:

    `overfitting` (after the best epoch val_acc falls while the clean train/val gap grows), `underfitting`
    (both accuracies low and still rising at the end), `regularisation inverts the gap` (augmented train_acc
    below val_acc while clean_train_acc is above it: augmentation, not the data, limits train accuracy),
    `good fit`, or `too short` (under 2 epochs).
    """
    h = pd.DataFrame(list(history) if not isinstance(history, pd.DataFrame) else history)
    if h.empty:
        return Diagnosis("too short", 0, 0, *[float("nan")] * 7)
    h = h.dropna(subset=["val_acc"]).sort_values("epoch").reset_index(drop=True)
    if len(h) < 2:
        v = float(h["val_acc"].iloc[0]) if len(h) else float("nan")
        return Diagnosis(
            "too short", len(h), int(h["epoch"].max()) if len(h) else 0, v, v, *[float("nan")] * 5
        )
    val, clean, train = (h[k].to_numpy(dtype=float) for k in ("val_acc", "clean_train_acc", "train_acc"))
    b = int(np.argmax(val))
    gap = clean - val
    w = min(RISE_WINDOW, len(h) - 1)
    rising = val[-1] - val[-1 - w] >= UNDERFIT_RISE or clean[-1] - clean[-1 - w] >= UNDERFIT_RISE
    if b < len(h) - 1 and val[b] - val[-1] >= OVERFIT_VAL_DROP and gap[-1] - gap[b] >= OVERFIT_GAP_GROWTH:
        label = "overfitting"
    elif max(clean[-1], val[-1]) < UNDERFIT_ACC and rising and b >= len(h) - 1 - w:
        label = "underfitting"
    elif train[b] < val[b] - INVERT_MARGIN and clean[b] > val[b]:
        label = "regularisation inverts the gap"
    else:
        label = "good fit"
    numbers = (val[b], val[-1], clean[b], clean[-1], train[b], gap[b], gap[-1])
    return Diagnosis(label, len(h), int(h["epoch"].iloc[b]), *map(float, numbers))


# ---------------------------------------------------------------------------------------------- tables


def _fmt(v: Any) -> str:
    if _missing(v):
        return ""
    v = _hashable(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs `tabulate`, which is not a dependency)."""
    cols = [_fmt(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "" if _missing(x) else f"{100 * x:.2f}%"


def _si(x: float) -> str:
    if _missing(x):
        return ""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def _duration(s: float) -> str:
    if _missing(s):
        return ""
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m" if s < 7200 else f"{s / 3600:.1f}h"


def _short(col: str) -> str:
    """`config/train/lr` -> `train.lr`."""
    return col.removeprefix("config/").replace("/", ".")


def _hashable(v: Any) -> Any:
    """A config value as an Optuna categorical choice: lists (also parquet's arrays) by their repr."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, np.generic):
        v = v.item()
    return v if isinstance(v, (str, int, float, bool)) else repr(v)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _varied(trials: pd.DataFrame) -> list[str]:
    """Config columns that take more than one value in these trials (what the search varied)."""
    cols = [c for c in trials.columns if c.startswith("config/")]
    return [c for c in cols if len({repr(_hashable(v)) for v in trials[c] if not _missing(v)}) > 1]


def _value(sel: Selection) -> Any:
    """How the ranked metric is shown: accuracies as percentages, the rest as numbers."""
    return _pct if sel.metric.endswith("_acc") else _fmt


def family_leaderboards(
    trials: pd.DataFrame, top: int = TOP_PER_FAMILY, sel: Selection = VAL_ACC
) -> dict[str, pd.DataFrame]:
    """Per architecture family, its `top` trials with the config values the search varied, size and cost."""
    boards = {}
    for arch, group in sel.rank(trials).groupby("arch", sort=False):
        varied = _varied(trials[trials["arch"] == arch])
        rows = group.head(top)
        shown = {sel.metric: rows[sel.column].map(_value(sel))}
        if sel.metric != "val_acc":
            shown["best val_acc"] = rows["best_val_acc"].map(_pct)
        phases = {"phase": rows["phase"]} if trials.get("phase", pd.Series([1])).nunique() > 1 else {}
        board = pd.DataFrame(
            {
                "trial": rows["trial_id"],
                **phases,
                **shown,
                "best epoch": rows["best_epoch"],
                "status": rows["stop_reason"],
                **{_short(c): rows[c].map(_hashable) for c in varied},
                "params": rows["params"].map(_si),
                "MACs": rows["macs"].map(_si),
                "epochs": rows["epochs"],
                "time": rows["seconds"].map(_duration),
            }
        )
        boards[str(arch)] = board
    return boards


def budget(trials: pd.DataFrame) -> dict[str, float]:
    """Epochs spent against the epochs the same trials would have run without early stopping.

    A trial the time budget cut would have been cut without early stopping too: it counts with the epochs
    it ran, not as a saving of ASHA.
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


def _distribution(
    values: Iterable[Any], declared: optuna.distributions.BaseDistribution | None = None
) -> optuna.distributions.BaseDistribution | None:
    """Numbers -> Int/Float over the observed range, on a log scale when the space declares one (`declared`:
    its Optuna distribution); choices and other values categorical."""
    vals = [_hashable(v) for v in values if not _missing(v)]
    if len(set(map(repr, vals))) < 2:
        return None  # constant: nothing to attribute
    numeric = not isinstance(declared, optuna.distributions.CategoricalDistribution)
    if numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        lo, hi = min(vals), max(vals)
        log = bool(getattr(declared, "log", False)) and lo > 0
        if all(float(v).is_integer() for v in vals):
            return optuna.distributions.IntDistribution(int(lo), int(hi), log=log)
        return optuna.distributions.FloatDistribution(float(lo), float(hi), log=log)
    return optuna.distributions.CategoricalDistribution(sorted(set(vals), key=repr))


def _cast(v: Any, dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return float(v)
    return _hashable(v)


def param_importance(
    trials: pd.DataFrame, sel: Selection = VAL_ACC, declared: Mapping[str, Any] | None = None
) -> tuple[dict[str, float], dict[str, Any], str]:
    """Importance of each varied config key for reaching the top trials' value of the ranked metric.

    Uses the finished trials (completed or stopped by ASHA) with the best value each reached, so a trial
    ASHA stopped counts with what it reached before it was stopped. Optuna's PED-ANOVA evaluator is used
    because fANOVA needs scikit-learn (not a dependency) and PED-ANOVA handles conditional (per-family)
    parameters.

    `declared`: `group.key` -> the Optuna distribution the space samples it from (its log scale is used).

    Returns:
        (importances by `group.key`, the distributions used, a note for the report: "" when it worked).
    """
    done = trials[trials["stop_reason"].isin(FINISHED)].dropna(subset=[sel.column])
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}, {}, f"needs at least {MIN_IMPORTANCE_TRIALS} finished trials, this search has {len(done)}"
    cols = [c for c in done.columns if c.startswith("config/")]
    declared = declared or {}
    dists = {_short(c): d for c in cols if (d := _distribution(done[c], declared.get(_short(c)))) is not None}
    if not dists:
        return {}, {}, "no config key varied between the finished trials"
    frozen = []
    for _, row in done.iterrows():
        present = {k: row[f"config/{k.replace('.', '/')}"] for k in dists}
        present = {k: v for k, v in present.items() if not _missing(v)}
        frozen.append(
            optuna.trial.create_trial(
                params={k: _cast(v, dists[k]) for k, v in present.items()},
                distributions={k: dists[k] for k in present},
                value=float(row[sel.column]),
            )
        )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if sel.mode == "max" else "minimize")
        study.add_trials(frozen)
        quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / len(frozen)))
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials in a regime" warnings: the report states the counts
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    note = (
        f"PED-ANOVA over {len(frozen)} finished trials (each with its best {sel.metric}; ASHA-stopped ones "
        f"with what they reached): what sets the top {quantile:.0%} apart from all"
    )
    return dict(imp), dists, note


# --------------------------------------------------------------------------------------------- figures


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def plot_curves(history: pd.DataFrame, trial_ids: Sequence[str], path: Path, title: str = "") -> Path:
    """Accuracies (augmented train, clean train, val) and losses per epoch, one row per trial."""
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
    """The best value of the ranked metric against each parameter, completed trials filled, stopped hollow."""
    fig = Figure(figsize=(4 * len(params), 3.4), layout="constrained")
    ranked = trials.dropna(subset=[sel.column])
    for i, name in enumerate(params):
        ax, dist = fig.add_subplot(1, len(params), i + 1), dists[name]
        x = ranked[f"config/{name.replace('.', '/')}"].map(lambda v: None if _missing(v) else _hashable(v))
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
        row = {"trial": tid, **{k: (_pct(v) if isinstance(v, float) else v) for k, v in asdict(d).items()}}
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
        f"budget. Training time {_duration(b['seconds_spent'])} (about "
        f"{_duration(b['seconds_without_early_stopping'])} without early stopping, at each trial's own "
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
                "best val_acc": _pct(best["best_val_acc"]) if best is not None else "",
                "best trial": best["trial_id"] if best is not None else "",
                "best arch": best["arch"] if best is not None else "",
                "epochs run": f"{b['epochs_spent']:.0f}",
                "ASHA saved": f"{b['fraction_saved_by_asha']:.0%}",
                "time": _duration(b["seconds_spent"]),
            }
        )
        # Per family, the val_acc of the trial the search ranked first there (not the highest val_acc).
        fam[name] = ranked.groupby("arch", sort=False)["best_val_acc"].first().map(_pct)
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
