"""Fault tolerance of a search, each in a `fer-tune` subprocess with its own Ray (not the session's cluster).

The driver is SIGKILLed mid-search, the crash cuts the newest checkpoints, and the search is resumed (one run,
shared by the two tests that check it); a trial that raises and one whose loss turns NaN end with their stop
reasons while the search goes on, and only the one that raised is retried.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from fer_tune.base import DataError
from fer_tune.search import SearchFolder, load_results
from fer_tune.search.searcher import LOST

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

EPOCHS = 25

# Loaded by every Python process of the subprocess run (via PYTHONPATH); in Ray workers it makes the trial
# with lr 0.0123 raise, as a bug or a CUDA OOM would, and logs "lr epoch" for every epoch trained.
FAULT_HOOK = """
import os, sys
if sys.argv and sys.argv[0].endswith("default_worker.py"):
    import fer_tune.training.trainer as t
    _train, _train_one_epoch = t.train, t.train_one_epoch
    def train(config, data, **kwargs):
        if config["train"]["lr"] == 0.0123:
            raise RuntimeError("injected fault")
        return _train(config, data, **kwargs)
    def train_one_epoch(model, opt, sched, images, labels, cfg, norm, epoch, *args, **kwargs):
        with open(os.environ["FER_TUNE_EPOCH_LOG"], "a") as log:
            log.write(f"{cfg.train.lr} {epoch}\\n")
        return _train_one_epoch(model, opt, sched, images, labels, cfg, norm, epoch, *args, **kwargs)
    t.train, t.train_one_epoch = train, train_one_epoch
"""


def space(tmp_path: Path, name: str, search: dict, train: dict) -> Path:
    doc = {
        "search": search,
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {"batch_size": 16, "warmup_epochs": 0, **train},
        "augment": {"crop": 0, "rotation": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextmanager
def subprocesses(folder: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start `fer-tune ARGS` in a subprocess (output in folder/log-N.txt); none outlives the block."""
    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", **(env or {})}
        env.pop("RAY_ADDRESS", None)
        with open(folder / f"log-{len(procs)}.txt", "w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fer_tune.cli", *args], env=env, stdout=log, stderr=log
                )
            )
        return procs[-1]

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def fer_tune(tmp_path: Path):
    """Start `fer-tune ARGS` in a subprocess (output in tmp_path/log-N.txt); none outlives the test."""
    with subprocesses(tmp_path) as start:
        yield start


def epochs_reported(trial_dir: Path) -> int:
    path = trial_dir / "result.json"
    return len(path.read_text().splitlines()) if path.is_file() else 0


@dataclass
class Killed:
    """A search SIGKILLed mid-way, its newest checkpoints cut by the crash, then resumed (`killed`)."""

    folder: Path
    kill_code: int | None  # the driver's exit status
    finished: dict[str, str]  # trial id -> its result.json at the kill: trials finished before it
    interrupted: list[str]  # trials running at the kill, past their third epoch
    cut: int  # checkpoints the crash cut
    resume_code: int | None
    resume_log: str
    start: Callable[..., subprocess.Popen]  # more `fer-tune` commands on it


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, data_csv: Path) -> Iterator[Killed]:
    """One search of 4 trials, SIGKILLed (the machine goes down) once a trial finished while another is past
    its third epoch; the crash cut every checkpoint of the unfinished trials but their oldest, whichever one
    Ray's last snapshot names; then `fer-tune --resume`. Two tests check what it left."""
    tmp = tmp_path_factory.mktemp("killed")
    folder = tmp / "results" / "kill"
    sp = space(tmp, "kill", {"num_samples": 4, "scheduler": "none", "seed": 1}, {"epochs": EPOCHS})
    args = ["--space", str(sp), "--data", str(data_csv), "--gpus", "0", "--cpus", "2"]
    with subprocesses(tmp) as fer_tune:
        proc = fer_tune(*args, "--results", str(folder.parent), "--name", "kill")
        finished: dict[str, str] = {}
        interrupted: list[str] = []
        deadline = time.time() + 150
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            try:
                trials, _ = load_results(folder)
            except DataError:
                continue  # no state snapshot yet
            # Finished, and its result.json written out: Ray's state can say TERMINATED a moment before the
            # trial's last row reaches the search folder (resume then appends it from the checkpoint).
            done = [
                t
                for t in trials[trials["status"] == "TERMINATED"]["trial_id"]
                if epochs_reported(folder / f"trial_{t}") == EPOCHS
            ]
            running = [
                t
                for t in trials[trials["status"] != "TERMINATED"]["trial_id"]
                if 3 <= epochs_reported(folder / f"trial_{t}") < EPOCHS
            ]
            if len(done) and running:
                finished = {t: (folder / f"trial_{t}" / "result.json").read_text() for t in done}
                interrupted = running
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        cut = 0
        for trial in folder.glob("trial_*"):
            ckpts = sorted(trial.glob("checkpoint_*/checkpoint.pt"))
            if epochs_reported(trial) < EPOCHS and len(ckpts) > 1:
                for ckpt in ckpts[1:]:
                    ckpt.write_bytes(ckpt.read_bytes()[:1000])
                    cut += 1
        resume = fer_tune("--resume", str(folder)) if finished and interrupted else None
        resume_code = resume.wait(timeout=200) if resume is not None else None
        log = (tmp / "log-1.txt").read_text() if resume is not None else ""
        yield Killed(folder, proc.returncode, finished, interrupted, cut, resume_code, log, fer_tune)


def test_sigkill_then_resume_keeps_finished_trials_and_continues_interrupted_ones(killed: Killed) -> None:
    folder = killed.folder
    assert killed.finished and killed.interrupted, "the search ended before it could be killed mid-way"
    assert killed.kill_code == -signal.SIGKILL
    assert killed.resume_code == 0, killed.resume_log[-3000:]
    trials, history = load_results(folder)
    assert len(trials) == 4 and (trials["stop_reason"] == "completed").all()
    assert (trials["epochs"] == EPOCHS).all()
    for t, before in killed.finished.items():  # finished before the kill: not run again
        assert (folder / f"trial_{t}" / "result.json").read_text() == before
    for t in killed.interrupted:  # running at the kill: continued from a checkpoint, not restarted at epoch 1
        assert t in set(trials["trial_id"])
        lines = (folder / f"trial_{t}" / "result.json").read_text().splitlines()
        assert sum('"epoch": 1,' in line for line in lines) == 1
        assert sorted(history[history["trial_id"] == t]["epoch"]) == list(range(1, EPOCHS + 1))
    # The study in optuna.db matches: one finished study trial per Ray trial (a trial asked in the moment
    # before the kill, which Ray never saved, is told FAIL and marked lost), with its best value.
    study = SearchFolder(folder).load_study()
    live = [t for t in study.trials if LOST not in t.user_attrs]
    assert {t.state for t in live} == {TrialState.COMPLETE}
    assert all(t.state == TrialState.FAIL for t in study.trials if LOST in t.user_attrs)
    best = dict(zip(trials["trial_id"], trials["best_val_acc"], strict=True))
    assert {t.user_attrs["ray_trial_id"]: t.value for t in live} == pytest.approx(best)
    # Resuming again says it is finished and changes nothing.
    before = (folder / "trials.csv").read_text()
    again = killed.start("resume", str(folder))
    assert again.wait(timeout=60) == 0
    assert (folder / "trials.csv").read_text() == before


def test_after_a_crash_cut_checkpoints_resume_from_the_last_good_one(killed: Killed) -> None:
    """The crash cut every checkpoint of the unfinished trials but their oldest (the same run as the test
    above): each continues from its newest whole checkpoint, and every trial completes with every epoch."""
    folder = killed.folder
    assert killed.cut, "no unfinished trial had two checkpoints at the crash"
    assert killed.resume_code == 0, killed.resume_log[-3000:]
    trials, history = load_results(folder)
    assert len(trials) == 4 and (trials["stop_reason"] == "completed").all(), trials["stop_reason"]
    for t in trials["trial_id"]:  # none restarted at epoch 1 after the crash (each epoch once or redone)
        lines = (folder / f"trial_{t}" / "result.json").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines].count(1) == 1
        assert sorted(history[history["trial_id"] == t]["epoch"]) == list(range(1, EPOCHS + 1))


def test_a_raising_trial_and_a_nan_trial_do_not_stop_the_search(
    tmp_path: Path, data_csv: Path, fer_tune
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT_HOOK)
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    folder = tmp_path / "results" / "faults"
    sp = space(
        tmp_path,
        "faults",
        {"algorithm": "grid", "num_samples": 1, "scheduler": "none"},
        {"epochs": 2, "lr": {"grid": [0.05, 0.0123, 1.0e7]}},
    )
    args = ["--space", str(sp), "--data", str(data_csv), "--gpus", "0", "--cpus", "2", "--max-failures", "2"]
    epoch_log = tmp_path / "epochs.log"
    env = {"PYTHONPATH": pythonpath, "FER_TUNE_EPOCH_LOG": str(epoch_log)}
    proc = fer_tune(*args, "--results", str(folder.parent), "--name", "faults", env=env)
    assert proc.wait(timeout=200) == 0  # not every trial failed
    trials, _ = load_results(folder)
    reasons = dict(zip(trials["config/train/lr"], trials["stop_reason"], strict=True))
    assert reasons[0.05] == "completed"
    assert reasons[0.0123] == "error: RuntimeError: injected fault"
    assert reasons[1.0e7].startswith("error: FloatingPointError: non-finite loss")
    # --max-failures 2: the raising trial was run three times before it was given up...
    t = trials[trials["config/train/lr"] == 0.0123]["trial_id"].iloc[0]
    assert "Failure # 3" in (folder / f"trial_{t}" / "error.txt").read_text()
    # ...but the NaN would recur from the same checkpoint: its epoch was trained once, not three times.
    epochs = epoch_log.read_text().split("\n")
    assert epochs.count("10000000.0 1") == 1 and epochs.count("0.05 2") == 1
