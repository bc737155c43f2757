"""Read a search folder back into tables, write its results files, export a trial's run config.

Everything here reads plain JSON, YAML and text files under `results/<name>/` (each trial's `params.json`,
`result.json` and `error.txt`, Ray's experiment-state JSON for the trial list and statuses, fer-tune's
`space.yaml` and `stopped_by.json`): no Ray cluster, and it works on a running or interrupted search. Nothing
is unpickled: Ray's state files hold cloudpickled objects, and unpickling a file runs code from it, so a
search folder from elsewhere is safe to report on and export from. Trials are ranked by the best epoch of the
space's `search.metric` (in its `search.mode`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from fer_tune.base import DataError, FerTuneError
from fer_tune.search.folder import BEST_CONFIG, LEADERBOARD, TRIALS_CSV, TRIALS_PARQUET, SearchFolder
from fer_tune.search.ray_trials import ray_trials
from fer_tune.search.stop_log import STUCK, TIMED_OUT
from fer_tune.training import METRIC_KEYS as METRICS
from fer_tune.training import METRIC_MODES, RunConfig, metric_columns

_STATUS_REASON = {"RUNNING": "running", "PAUSED": "running", "PENDING": "pending"}


@dataclass(frozen=True)
class Selection:
    """The metric trials are ranked by (their best epoch of it) and its direction, from `space.yaml`.

    Args:
        metric: `search.metric`, one of `METRIC_KEYS`.
        mode: `max` or `min`.
    """

    metric: str = "val_acc"
    mode: str = "max"

    @property
    def column(self) -> str:
        """The trials-table column ranked on: `best_<metric>` (`best_val_acc`, `best_val_loss`, ...)."""
        return f"best_{self.metric}"

    def rank(self, trials: pd.DataFrame) -> pd.DataFrame:
        """Trials with a value of the metric, best first (stable: ties keep their order).

        Args:
            trials: the trials table of `load_results`.

        Returns:
            The rows with a value in `column`, sorted best first.
        """
        ranked = trials.dropna(subset=[self.column])
        return ranked.sort_values(self.column, ascending=self.mode == "min", kind="stable")


VAL_ACC = Selection()  # the default: val_acc, max


def selection(search_dir: str | Path) -> Selection:
    """The `search.metric` and `search.mode` of a search folder's `space.yaml` (val_acc, max without one).

    Args:
        search_dir: the search folder.

    Returns:
        The selection; `mode` defaults to the metric's natural direction.

    Raises:
        DataError: `space.yaml` is unreadable, or names an unknown metric or mode.
    """
    folder = SearchFolder(search_dir)
    path = folder.space_path(1)
    raw = folder.raw_space()
    if not raw:
        return VAL_ACC
    search = raw.get("search") or {}
    metric = search.get("metric", "val_acc")
    mode = search.get("mode") or METRIC_MODES.get(metric)
    if metric not in METRIC_MODES or mode not in ("min", "max"):
        raise DataError(f"{path}: search.metric {metric!r}, search.mode {mode!r}: unknown metric or mode")
    return Selection(metric, mode)


def load_results(search_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials: one row per trial, best first; history: one row per trial-epoch) of a search folder.

    Args:
        search_dir: the search folder (local; see `fer_tune.base.storage.local_folder` for a URI).

    Returns:
        (trials, history) tables; trials carry `stop_reason`, `best_<metric>`, model size, time and one
        `config/...` column per config key.

    Raises:
        DataError: not a search folder, or one of its files is unreadable.
    """
    folder = SearchFolder(search_dir)
    scheduler, sel, stopped_by = _scheduler(folder), selection(folder), folder.stopped_by()
    latest = folder.experiment_dirs()[-1][0]
    rows, histories = [], []
    for trial in ray_trials(folder):
        hist = _history(trial["path"])
        hist.insert(0, "trial_id", trial["trial_id"])
        histories.append(hist)
        row = _trial_row(trial, hist, scheduler, sel, stopped_by.get(trial["trial_id"]))
        if trial["phase"] < latest and row["stop_reason"] in ("running", "pending"):
            row["stop_reason"] = "interrupted"  # its phase was extended, not resumed: it never ends
        rows.append(row)
    trials = pd.DataFrame(rows, columns=_columns(rows, sel))
    if len(trials):
        trials = trials.sort_values(
            sel.column, ascending=sel.mode == "min", na_position="last", kind="stable"
        )
    history = (
        pd.concat(histories, ignore_index=True) if histories else pd.DataFrame(columns=["trial_id", *METRICS])
    )
    return trials.reset_index(drop=True), history


def trial_config(search_dir: str | Path, trial_id: str) -> dict[str, Any]:
    """The complete (resolved, defaults filled) run config of one trial.

    Args:
        search_dir: the search folder.
        trial_id: Ray's trial id.

    Returns:
        The run config as plain values.

    Raises:
        DataError: no such trial, or the folder is unreadable.
        ConfigError: the trial's config is not a valid run config.
    """
    for trial in ray_trials(SearchFolder(search_dir)):
        if trial["trial_id"] == trial_id:
            return RunConfig.from_dict(trial["config"]).to_dict()
    raise DataError(f"{search_dir}: no trial {trial_id!r}")


def export_config(search_dir: str | Path, rank: int = 1, out: str | Path = "best.yaml") -> Path:
    """Write the `rank`-th best trial's run config with a `provenance:` block; returns the path written.

    Args:
        search_dir: the search folder, local or a URI.
        rank: 1 for the best trial, 2 for the next, ...
        out: the YAML file to write; its folder is created.

    Returns:
        `out`.

    Raises:
        DataError: no trial of that rank, or the folder is unreadable.
        OutputError: `out` lies in a search folder (this one's `space.yaml`, say), or cannot be written.
    """
    from fer_tune.base import check_output
    from fer_tune.base.storage import local_folder

    check_output(out, "-o")  # before the search is read: never over a search's own files
    folder = local_folder(search_dir)  # a search in an object store: a local copy
    trials, _ = load_results(folder)
    sel = selection(folder)
    ranked = sel.rank(trials)
    if rank < 1 or rank > len(ranked):
        raise DataError(f"{folder}: --rank {rank}: the search has {len(ranked)} trials with a {sel.metric}")
    return _write_config(folder, ranked.iloc[rank - 1], rank, Path(out), sel)


def write_results(search_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(Re)write trials.csv, trials.parquet, leaderboard.md and best_config.yaml; returns load_results'.

    Args:
        search_dir: the local search folder; the files are written into it.

    Returns:
        (trials, history), as `load_results` returns them.

    Raises:
        DataError: the folder is unreadable.
    """
    folder = Path(search_dir)
    trials, history = load_results(folder)
    table = trials.copy()
    for col in table.columns:  # lists (kernel widths) as JSON text: one type per column in CSV and parquet
        if table[col].map(lambda v: isinstance(v, list)).any():
            table[col] = table[col].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    table.to_csv(folder / TRIALS_CSV, index=False)
    table.to_parquet(folder / TRIALS_PARQUET, index=False)
    sel = selection(folder)
    (folder / LEADERBOARD).write_text(leaderboard(trials, folder.name, sel=sel))
    ranked = sel.rank(trials)
    if len(ranked):
        _write_config(folder, ranked.iloc[0], 1, folder / BEST_CONFIG, sel)
    return trials, history


def leaderboard(trials: pd.DataFrame, name: str, top: int = 20, sel: Selection = VAL_ACC) -> str:
    """A markdown table of the best `top` trials (written by hand: pandas' to_markdown needs tabulate).

    Args:
        trials: the trials table of `load_results`, best first.
        name: the search's name, for the heading.
        top: how many trials to show.
        sel: what the trials are ranked by, for the heading and the columns.

    Returns:
        The markdown, with a heading; varied config keys are columns.
    """
    shown = ("trial_id", "arch", sel.column, "best_epoch", "best_val_acc", "epochs", "stop_reason")
    cols = [c for c in dict.fromkeys((*shown, "params", "macs", "seconds")) if c in trials.columns]
    varied = [c for c in trials.columns if c.startswith("config/") and trials[c].astype(str).nunique() > 1]
    cols += [c for c in varied if c != "config/model/arch"]
    lines = [
        f"# {name}: top {min(top, len(trials))} of {len(trials)} trials by best-epoch {sel.metric} "
        f"({sel.mode})",
        "",
        "| rank | " + " | ".join(c.removeprefix("config/") for c in cols) + " |",
        "|---:|" + "---|" * len(cols),
    ]
    for i, (_, row) in enumerate(trials.head(top).iterrows(), 1):
        lines.append(f"| {i} | " + " | ".join(_cell(row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def summarize(trials: pd.DataFrame, search_dir: str | Path) -> str:
    """A few lines for the terminal: trials per stop reason, the best trial, the errors.

    Args:
        trials: the trials table of `load_results`.
        search_dir: the search folder, for its `space.yaml` and the messages.

    Returns:
        The lines, joined (at most five errors are shown).
    """
    if not len(trials):
        return f"{search_dir}: no trials"
    reasons = trials["stop_reason"].map(lambda r: "error" if r.startswith("error") else r).value_counts()
    lines = [f"{len(trials)} trials: " + ", ".join(f"{n} {r}" for r, n in reasons.items())]
    sel = selection(search_dir)
    best = sel.rank(trials)
    if len(best):
        b = best.iloc[0]
        lines.append(
            f"best: trial {b['trial_id']} ({b['arch']}) {sel.metric} {b[sel.column]:.4f} at epoch "
            f"{int(b['best_epoch'])}; run config: {Path(search_dir) / BEST_CONFIG}"
        )
    for _, row in trials[trials["stop_reason"].str.startswith("error")].head(5).iterrows():
        lines.append(f"  trial {row['trial_id']}: {row['stop_reason']}")
    return "\n".join(lines)


# -- reading the folder --------------------------------------------------------------------------------------


def _history(trial_dir: Path) -> pd.DataFrame:
    """One row per epoch from the trial's `result.json` (the last report of an epoch run twice wins)."""
    path = trial_dir / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = []
    for i, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines):  # a torn last line is a write in progress; anything else is damage
                raise DataError(f"{path}: line {i}: not JSON") from None
    keep = [
        *metric_columns(rows),
        "time_total_s",
        "time_this_iter_s",
        "cuda_visible_devices",
        "node_id",
        "cpu_share",
    ]
    hist = pd.DataFrame([{k: r.get(k) for k in keep} for r in rows], columns=keep)
    if len(hist):
        # A trial resumed from an older checkpoint reports some epochs again.
        hist = hist.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last").sort_values("epoch")
    return hist.reset_index(drop=True)


def _error(trial_dir: Path) -> str:
    path = trial_dir / "error.txt"
    if not path.is_file():
        return "unknown (no error.txt)"
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    # Ray's error.txt is a traceback; its last line is the exception ("FloatingPointError: non-finite ...").
    return lines[-1][:300] if lines else "unknown"


def _scheduler(folder: SearchFolder) -> str:
    try:
        sched = (folder.raw_space().get("search") or {}).get("scheduler") or {}
        return sched.get("type", "asha") if isinstance(sched, dict) else str(sched)
    except DataError:
        return "asha"


def _trial_row(
    trial: dict[str, Any], hist: pd.DataFrame, scheduler: str, sel: Selection, stopped_by: str | None
) -> dict[str, Any]:
    config = trial["config"]
    try:
        run = RunConfig.from_dict(config)
        max_epochs, arch = run.train.epochs, run.model.arch
    except FerTuneError:
        run, max_epochs, arch = None, math.nan, (config.get("model") or {}).get("arch")
    row: dict[str, Any] = {"trial_id": trial["trial_id"], "phase": trial["phase"], "status": trial["status"]}
    epochs = int(hist["epoch"].max()) if len(hist) else 0
    status = trial["status"]
    if stopped_by == TIMED_OUT and status != "TERMINATED":
        # Killed as hung: Ray's last snapshot may still show it running when the search ended right after.
        reason = TIMED_OUT
    elif status == "ERROR":
        reason = f"error: {_error(trial['path'])}"
    elif status == "TERMINATED":
        if epochs >= max_epochs:
            reason = "completed"
        elif stopped_by == STUCK:
            reason = STUCK
        elif stopped_by and stopped_by != TIMED_OUT:  # fer-tune's own record: the budget ran out as it ran
            reason = f"stopped by {stopped_by}"
        elif epochs == 0:  # no scheduler stops a trial before its first result: the search ended first
            reason = "ended before its first epoch"
        else:
            reason = "stopped by ASHA" if scheduler == "asha" else "stopped early"
    else:
        # A snapshot shows the trials running at that moment as PENDING: ones with epochs ran.
        reason = "running" if epochs else _STATUS_REASON.get(status, status.lower())
    row["stop_reason"] = reason
    row["arch"] = arch
    m = sel.metric
    values = pd.to_numeric(hist[m], errors="coerce") if len(hist) else pd.Series(dtype=float)
    if values.notna().any():
        best = hist.loc[values.idxmax() if sel.mode == "max" else values.idxmin()]
        row.update({f"best_{m}": float(best[m]), "best_epoch": int(best["epoch"])})
        row[f"last_{m}"] = float(values.iloc[-1])
    else:
        row.update({f"best_{m}": math.nan, "best_epoch": math.nan, f"last_{m}": math.nan})
    if m != "val_acc":  # the FER2013 number people compare, shown whatever the search ranked by
        row["best_val_acc"] = float(hist["val_acc"].max()) if len(hist) else math.nan
    row.update(epochs=epochs, max_epochs=max_epochs)
    row.update(_stats(run))
    row["seconds"] = float(hist["time_total_s"].iloc[-1]) if len(hist) else math.nan
    # Trial start-up inside the trainable: its first report's wall time minus that epoch's own time.
    first = hist.iloc[0] if len(hist) else None
    row["start_seconds"] = (
        float(first["time_this_iter_s"] - first["epoch_seconds"])
        if first is not None and epochs
        else math.nan
    )
    row["cuda_visible_devices"] = hist["cuda_visible_devices"].iloc[-1] if len(hist) else None
    # Every node it ran on, in order (a trial continued elsewhere after its node died has two).
    row["node_ids"] = " ".join(dict.fromkeys(hist["node_id"].dropna())) if len(hist) else None
    resolved = run.to_dict() if run is not None else config
    for key, value in pd.json_normalize(resolved, sep="/").iloc[0].items():
        row[f"config/{key}"] = value
    return row


def _stats(run: RunConfig | None) -> dict[str, Any]:
    if run is None:
        return {"params": math.nan, "macs": math.nan}
    from fer_tune.models import model_stats

    try:
        return model_stats(run.model, input_size=run.augment.input_size)
    except FerTuneError:
        return {"params": math.nan, "macs": math.nan}


def _columns(rows: list[dict[str, Any]], sel: Selection) -> list[str]:
    cols = [
        "trial_id",
        "phase",
        "status",
        "stop_reason",
        "arch",
        sel.column,
        "best_epoch",
        f"last_{sel.metric}",
        "best_val_acc",
        "epochs",
        "max_epochs",
        "params",
        "macs",
        "seconds",
        "start_seconds",
        "cuda_visible_devices",
        "node_ids",
    ]
    for row in rows:
        cols += [k for k in row if k not in cols]
    return list(dict.fromkeys(cols))  # ranking on val_acc: best_val_acc once


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _write_config(folder: Path, row: pd.Series, rank: int, out: Path, sel: Selection) -> Path:
    config = trial_config(folder, row["trial_id"])
    provenance = {
        "search": _shown(folder),
        "trial_id": row["trial_id"],
        "rank": rank,
        "ranked_by": f"{sel.metric} ({sel.mode}) of the best epoch",
        sel.metric: float(row[sel.column]),
        "epoch": int(row["best_epoch"]),
        "epochs_run": int(row["epochs"]),
        "stop_reason": row["stop_reason"],
        "exported": datetime.now().isoformat(timespec="seconds"),
    }
    if SearchFolder(folder).is_search():
        provenance["data"] = SearchFolder(folder).read_state().data
    text = f"# run config of trial {row['trial_id']} (rank {rank}) of search {folder.name}; train it with\n"
    text += f"# fer-tune train {out.name} --data ... (provenance: is read by people, ignored by training)\n"
    text += yaml.safe_dump({**config, "provenance": provenance}, sort_keys=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def _shown(path: Path) -> str:
    """A path as people should read it: relative to the working directory when inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
