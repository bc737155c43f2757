"""Tiny real searches on the session's Ray: GPU packing, ASHA, wandb offline, results files, all failing."""

from __future__ import annotations

import io
import json
import pickle
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from fer_tune.base import DataError
from fer_tune.cli import main
from fer_tune.search import export_config, load_results, trial_config
from fer_tune.training import RunConfig

pytestmark = pytest.mark.timeout(300)

RESULT_FILES = (
    "trials.csv",
    "trials.parquet",
    "leaderboard.md",
    "best_config.yaml",
    "space.yaml",
    "fer_tune.json",
)


def tiny_space(
    tmp_path: Path, search: dict, resources: dict, train: dict | None = None, name: str = "s"
) -> Path:
    space = {
        "search": search,
        "resources": resources,
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "warmup_epochs": 0,
            "lr": {"loguniform": [1e-3, 0.2]},
            **(train or {}),
        },
        "augment": {"crop": 0, "rotation": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_fractional_gpus_pack_four_trials_and_log_to_wandb_offline(
    ray_cluster, tmp_path: Path, data_csv: Path, monkeypatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    space = tiny_space(tmp_path, {"num_samples": 4, "scheduler": "none"}, {"cpus_per_trial": 0.5})
    argv = ["--space", str(space), "--data", str(data_csv), "--gpus", "2", "--gpus-per-trial", "0.5"]
    argv += ["--results", str(tmp_path / "results"), "--name", "gpu", "--wandb-project", "fer-test"]
    assert main([*argv, "--wandb-mode", "offline"]) == 0
    trials, history = load_results(tmp_path / "results" / "gpu")
    assert len(trials) == 4 and (trials["stop_reason"] == "completed").all()
    # Four trials at once: four worker processes, two per (logical) GPU, each told its own device.
    first = [
        json.loads(p.read_text().splitlines()[0])
        for p in (tmp_path / "results" / "gpu").glob("trial_*/result.json")
    ]
    assert len({r["pid"] for r in first}) == 4
    assert sorted(r["cuda_visible_devices"] for r in first) == ["0", "0", "1", "1"]
    assert {r["device"] for r in first} == {"cpu"}  # CUDA_VISIBLE_DEVICES set, no CUDA: trained on CPU
    # wandb offline: one run per trial, in the trial's folder, with its config and its metrics (every epoch,
    # read back with wandb's reader: tests/test_tracking.py).
    runs = list((tmp_path / "results" / "gpu").glob("trial_*/wandb/offline-run-*"))
    assert len(runs) == 4
    for run in runs:
        trial_id = run.name.rsplit("-", 1)[1]
        assert f"'trial_id': '{trial_id}'" in (run / "logs" / "debug.log").read_text()
    logged = [b"val_acc" in b"".join(p.read_bytes() for p in run.glob("*.wandb")) for run in runs]
    assert all(logged)


@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_trials_and_results_files_are_complete(
    ray_cluster, tmp_path: Path, data_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = tiny_space(
        tmp_path,
        {
            "num_samples": 8,
            "seed": 3,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
        {"cpus_per_trial": 1},
        train={"epochs": 4, "lr": {"loguniform": [1e-4, 0.3]}},
    )
    folder = tmp_path / "results" / "asha"
    argv = ["--space", str(space), "--data", str(data_csv), "--gpus", "0", "--results", str(folder.parent)]
    views = watch_on_a_terminal(monkeypatch)
    t0 = time.monotonic()
    assert main([*argv, "--name", "asha"]) == 0
    # The live view on a terminal: redrawn in place at most once a second (the first at once, and the final
    # state), for < 2% of one core.
    elapsed, (view,) = time.monotonic() - t0, views
    assert 1 <= view.redraws <= elapsed + 2 and view.cpu_s < 0.02 * elapsed
    screen = view.console.file.getvalue()
    assert re.search(r"[1-8] stopped", screen) and f"results: {folder}" in screen and "\x1b[2K" in screen
    for name in RESULT_FILES:
        assert (folder / name).is_file(), name
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 8
    assert set(trials["stop_reason"]) == {"completed", "stopped by ASHA"}
    stopped = trials[trials["stop_reason"] == "stopped by ASHA"]
    assert (stopped["epochs"] < 4).all() and (
        trials[trials["stop_reason"] == "completed"]["epochs"] == 4
    ).all()
    assert trials["best_val_acc"].is_monotonic_decreasing
    assert (trials["params"] > 0).all() and (trials["macs"] > 0).all()
    assert pd.read_parquet(folder / "trials.parquet")["trial_id"].tolist() == trials["trial_id"].tolist()
    assert "| rank |" in (folder / "leaderboard.md").read_text()
    # Optuna learned each trial's best epoch, and the trials ASHA stopped as pruned (our own state: trusted).
    with open(next(folder.glob("searcher-state-*.pkl")), "rb") as f:
        searcher = pickle.load(f)
    study_trials = searcher["_ot_study"].get_trials(deepcopy=False)
    for _, row in trials.iterrows():
        told = study_trials[searcher["_ot_trials"][row["trial_id"]].number]
        if row["stop_reason"] == "completed":
            assert told.state == TrialState.COMPLETE and told.value == pytest.approx(row["best_val_acc"])
        else:
            assert told.state == TrialState.PRUNED and len(told.intermediate_values) == row["epochs"]
    # The best config is a complete run config with provenance; export picks any rank.
    best = yaml.safe_load((folder / "best_config.yaml").read_text())
    assert best["provenance"]["trial_id"] == trials["trial_id"][0]
    assert best["provenance"]["val_acc"] == pytest.approx(trials["best_val_acc"][0])
    second = export_config(folder, rank=2, out=tmp_path / "second.yaml")
    cfg = RunConfig.from_yaml(second)
    assert cfg.to_dict() == trial_config(folder, trials["trial_id"][1])
    with pytest.raises(DataError, match="rank 9"):
        export_config(folder, rank=9, out=tmp_path / "x.yaml")
    assert main(["export", str(folder), "-o", str(tmp_path / "best.yaml")]) == 0
    assert RunConfig.from_yaml(tmp_path / "best.yaml").to_dict() == trial_config(
        folder, trials["trial_id"][0]
    )
    # A finished search is not run again.
    before = (folder / "trials.csv").read_text()
    assert main(["resume", str(folder)]) == 0
    assert (folder / "trials.csv").read_text() == before


@pytest.mark.ray
@pytest.mark.slow
def test_every_trial_failing_ends_with_a_summary(ray_cluster, tmp_path: Path, data_csv: Path, capsys) -> None:
    space = tiny_space(
        tmp_path, {"num_samples": 2, "scheduler": "none"}, {"cpus_per_trial": 1}, train={"lr": 1e7}
    )
    argv = ["--space", str(space), "--data", str(data_csv), "--gpus", "0", "--results", str(tmp_path / "r")]
    assert main([*argv, "--name", "nan", "--verbose"]) == 1
    out = capsys.readouterr().out
    assert "2 trials: 2 error" in out and "FloatingPointError" in out and "every trial failed" in out
    assert "== Status ==" in out  # --verbose: Ray's own table
    folder = tmp_path / "r" / "nan"
    trials, _ = load_results(folder)
    assert trials["stop_reason"].str.startswith("error: FloatingPointError").all()
    # A finished search with errored trials runs them again only when asked to.
    assert main(["resume", str(folder)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert main(["resume", str(folder), "--retry-errored"]) == 1
    for t in trials["trial_id"]:
        assert "Failure # 2" in (folder / f"trial_{t}" / "error.txt").read_text()


def watch_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> list:
    """Make the next searches draw their live view on a (fake) terminal; returns the views made."""
    from rich.console import Console

    from fer_tune.search import progress as live

    views: list = []
    real = live.watch

    @contextmanager
    def watch(*args, **kwargs):
        kwargs["console"] = Console(file=io.StringIO(), force_terminal=True, width=120)
        with real(*args, **kwargs) as view:
            views.append(view)
            yield view

    monkeypatch.setattr(live, "watch", watch)
    return views


def test_load_results_needs_a_search_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no experiment_state"):
        load_results(tmp_path)
    with pytest.raises(DataError, match="no such search folder"):
        load_results(tmp_path / "nope")
