"""wandb: every trial's run holds its config and exactly its epochs, read back with wandb's own reader.

The offline `.wandb` files are read with `wandb leet inspect --json` (wandb's transaction-log reader).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from fer_tune.base import ConfigError
from fer_tune.cli import main
from fer_tune.search import load_results
from fer_tune.search.wandb_runs import WandbTracking


def test_tracking_from_the_search_state() -> None:
    assert WandbTracking.from_state({"name": "s", "wandb_project": None, "wandb_mode": "offline"}) is None
    assert WandbTracking.from_state({"name": "s", "wandb_project": "p", "wandb_mode": "disabled"}) is None
    t = WandbTracking.from_state({"name": "s", "wandb_project": "p", "wandb_mode": "dryrun"})
    assert t == WandbTracking(project="p", mode="offline", group="s")
    assert WandbTracking("p", "online", "my search/2").run_id("ab12_00003") == "my-search-2-ab12_00003"
    with pytest.raises(ConfigError, match="--wandb-mode: 'loud'"):
        WandbTracking.from_state({"name": "s", "wandb_project": "p", "wandb_mode": "loud"})


# -- reading runs back ---------------------------------------------------------------------------------------


def read_runs(folder: Path) -> dict[str, list[dict]]:
    """Trial id -> its offline runs (one per segment: a resumed trial adds one), each as
    {run_id, config, epochs, exit_code}, read with wandb's own reader, several files at once."""
    files = sorted(folder.glob("trial_*/wandb/offline-run-*/run-*.wandb"))
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(f)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for f in files
    ]
    runs: dict[str, list[dict]] = {}
    for f, proc in zip(files, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        run: dict = {"epochs": [], "exit_code": None, "file": f}
        for line in out.splitlines():
            record = json.loads(line)
            if record["type"] == "run":
                run["run_id"] = record["run"]["run_id"]
                run["config"] = record["run"]["config"]["update"]
            elif record["type"] == "history":
                run["epochs"].append(record["history"]["item"]["epoch"])
            elif record["type"] == "exit":
                run["exit_code"] = record["exit"].get("exit_code", 0)
        runs.setdefault(f.parts[-4].removeprefix("trial_"), []).append(run)
    return runs


def space(tmp_path: Path, search: dict, train: dict, name: str = "s") -> Path:
    doc = {
        "search": search,
        "resources": {"cpus_per_trial": 0.5},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {"epochs": 4, "batch_size": 32, "warmup_epochs": 0, **train},
        "augment": {"crop": 0, "rotation": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- searches ------------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
# The same search 3 times over (a run without its history records showed in one search of several): once in
# the default set, the two repeats (30-35 s each) under -m long.
@pytest.mark.parametrize(
    "repeat", [1, pytest.param(2, marks=pytest.mark.long), pytest.param(3, marks=pytest.mark.long)]
)
def test_every_offline_run_holds_its_config_and_exactly_its_epochs(
    ray_cluster, tmp_path: Path, data_csv: Path, repeat: int
) -> None:
    """8 trials: ASHA stops some, lr 1e30 errors (NaN in epoch 1), the rest complete; 3 times over."""
    lrs = [0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 1.0e30]
    sp = space(
        tmp_path,
        {
            "algorithm": "grid",
            "num_samples": 1,
            "seed": repeat,
            "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
        {"lr": {"grid": lrs}},
    )
    folder = tmp_path / "results" / f"wb{repeat}"
    argv = ["--space", str(sp), "--data", str(data_csv), "--gpus", "0", "--results", str(folder.parent)]
    assert main([*argv, "--name", folder.name, "--wandb-project", "fer-test", "--wandb-mode", "offline"]) == 0
    trials, history = load_results(folder)
    assert len(trials) == 8
    reasons = set(trials["stop_reason"])
    assert {"completed", "stopped by ASHA"} <= reasons and any(r.startswith("error") for r in reasons)
    runs = read_runs(folder)
    assert sorted(runs) == sorted(trials["trial_id"])  # the errored trial too, with its config
    for _, row in trials.iterrows():
        (run,) = runs[row["trial_id"]]  # one run per trial, in the trial's own folder
        assert run["run_id"] == f"{folder.name}-{row['trial_id']}"
        assert run["config"]["train"]["lr"] == pytest.approx(row["config/train/lr"])
        assert run["config"]["trial_id"] == row["trial_id"]
        epochs = sorted(history[history["trial_id"] == row["trial_id"]]["epoch"])
        assert run["epochs"] == epochs, row["stop_reason"]  # every epoch, once, in order
        assert run["exit_code"] == (1 if row["stop_reason"].startswith("error") else 0)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_offline_as_a_new_user_does_no_key_no_env_no_traceback(tmp_path: Path, data_csv: Path) -> None:
    """The CLI in a subprocess, as typed: no WANDB_MODE, no key, an empty HOME (no netrc), not a terminal."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RAY_ADDRESS"))}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    train = {"epochs": 2, "lr": {"choice": [0.1, 0.05]}}
    sp = space(tmp_path, {"num_samples": 4, "scheduler": "none"}, train)
    folder = tmp_path / "results" / "user"
    args = ["--space", str(sp), "--data", str(data_csv), "--gpus", "0", "--cpus", "2"]
    args += ["--results", str(folder.parent)]
    run = subprocess.run(
        # no --wandb-project: `--wandb-mode offline` alone logs, to the project "fer-tune"
        [sys.executable, "-m", "fer_tune.cli", *args, "--name", "user", "--wandb-mode", "offline"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "API key" not in run.stderr, run.stderr
    # The default output: fer-tune's progress lines, no Ray status table, INFO lines or token notice.
    assert run.stdout.startswith(f"fer-tune: search started; results in {folder}\n"), run.stdout
    assert "4 finished, 0 stopped, 0 errored" in run.stdout and "best val_acc" in run.stdout
    assert "== Status ==" not in run.stdout
    assert " INFO " not in run.stderr and "Token authentication is enabled" not in run.stderr, run.stderr
    runs = read_runs(folder)
    assert len(runs) == 4 and all([r["epochs"] for r in rs] == [[1, 2]] for rs in runs.values())

    # online without a key stops before the data is read or Ray starts, with one line.
    online = subprocess.run(
        [sys.executable, "-m", "fer_tune.cli", *args, "--name", "online", "--wandb-mode", "online"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert online.returncode == 2
    assert online.stderr.startswith("fer-tune: error: --wandb-mode online: no wandb API key"), online.stderr
    assert len(online.stderr.splitlines()) == 1


def test_a_trial_resumed_in_a_new_driver_continues_its_own_run(tmp_path: Path, monkeypatch) -> None:
    """Interrupt, then resume: the trial's run keeps its id, and the new segment holds every epoch so far."""
    import pyarrow.fs

    from fer_tune.search.wandb_runs import WandbRuns, WandbTracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    folder = tmp_path / "search" / "trial_abc"
    folder.mkdir(parents=True)
    trial = SimpleNamespace(
        trial_id="abc",
        config={"train": {"lr": 0.1}},
        storage=SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem()),
        path=str(folder),
        local_path=str(folder),
        status="RUNNING",
    )
    tracking = WandbTracking(project="p", mode="offline", group="search")

    def epoch(n: int) -> dict:
        return {"epoch": n, "val_acc": 0.1 * n, "train_loss": 2.0 - n / 10}

    first = WandbRuns(tracking)  # the driver before the interrupt: epochs 1 and 2, then Ctrl-C
    for n in (1, 2):
        first.on_trial_result(n, [trial], trial, epoch(n))
        with (folder / "result.json").open("a") as f:  # what Ray writes beside the run
            f.write(json.dumps(epoch(n)) + "\n")
    first.on_experiment_end([trial])

    second = pickle.loads(pickle.dumps(first))  # the resumed search gets the callback back from tuner.pkl
    second.on_trial_start(0, [trial], trial)
    for n in (3, 4):
        second.on_trial_result(n, [trial], trial, epoch(n))
    trial.status = "TERMINATED"
    second.on_trial_complete(0, [trial], trial)
    second.on_experiment_end([trial])

    segments = read_runs(tmp_path / "search")["abc"]
    assert len(segments) == 2 and {r["run_id"] for r in segments} == {"search-abc"}
    by_epochs = sorted(segments, key=lambda r: len(r["epochs"]))
    assert by_epochs[0]["epochs"] == [1, 2] and by_epochs[0]["exit_code"] == 1  # interrupted
    assert by_epochs[1]["epochs"] == [1, 2, 3, 4] and by_epochs[1]["exit_code"] == 0
