"""One live writer per search folder (docs/faults.md): search, resume, extend and `--retrain` hold the
folder's lock (`fcntl.flock`, dropped by the kernel when its process dies) for their whole run; a second
command stops at once with one line naming the holder, and writes nothing there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import one_line, snapshot

from fer_tune.base import FolderBusy, lock_folder
from fer_tune.base.locks import LOCK_FILE
from fer_tune.cli import main
from fer_tune.search import SearchFolder, SearchState, parse_space

# A process that holds a folder's lock until it is killed.
HOLD = """
import sys, time
from fer_tune.base import lock_folder
with lock_folder(sys.argv[1], "fer-tune --space holder.yaml --name s", create=True):
    print("locked", flush=True)
    time.sleep(600)
"""
SPACE = {
    "search": {"num_samples": 2, "scheduler": "none", "algorithm": "optuna"},
    "resources": {"cpus_per_trial": 1},
    "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}], "head_width": 0, "pool_size": 1},
    "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
    "augment": {"crop": 0, "rotation": 0},
}


@pytest.fixture
def holder() -> Iterator:
    """`holder(folder)`: a process holding `folder`'s lock (killed at the end of the test)."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def search_folder(tmp_path: Path) -> SearchFolder:
    """A search folder as an interrupted search leaves it: state, space, one experiment-state snapshot."""
    folder = SearchFolder(tmp_path / "s")
    folder.path.mkdir()
    folder.write_space(parse_space(SPACE, name="s"))
    folder.write_state(SearchState(name="s", space="s.yaml", data=str(tmp_path / "d.csv"), started="now"))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    return folder


def test_a_second_lock_fails_naming_the_holder_until_the_holder_is_killed(tmp_path: Path, holder) -> None:
    folder = tmp_path / "s"
    proc = holder(folder)
    before = snapshot(folder)
    with pytest.raises(FolderBusy) as refused, lock_folder(folder, "fer-tune resume s"):
        pytest.fail("two holders of one lock")
    msg = str(refused.value)
    assert msg.startswith(f"{folder}: in use by another fer-tune command (PID {proc.pid} on ")
    assert ", since 20" in msg and ": fer-tune --space holder.yaml --name s); " in msg
    assert "\n" not in msg
    assert snapshot(folder) == before  # the refused one wrote nothing, not even its name
    proc.send_signal(signal.SIGKILL)  # a crash: no handler runs, the kernel drops the lock
    proc.wait()
    with lock_folder(folder, "fer-tune resume s"):
        assert json.loads((folder / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_in_this_process_excludes_a_second_one_and_leaves_no_trace(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    busy = r"PID \d+ .*: fer-tune a\); .*; or choose another --name$"
    with lock_folder(folder, "fer-tune a", create=True):
        with pytest.raises(FolderBusy, match=busy):  # a second open of the file: flock excludes it too
            lock_folder(folder, "fer-tune b", hint="or choose another --name").__enter__()
        assert (folder / LOCK_FILE).is_file()
    assert not folder.exists()  # created to be locked, and nothing else was written: removed again
    with lock_folder(tmp_path / "missing", "fer-tune c"):  # not created: the command says it is missing
        pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["resume"], ["extend", "--num-samples", "1"], ["--resume"]])
def test_resume_and_extend_of_a_search_in_use_stop_at_once(
    command: list[str], tmp_path: Path, holder, capsys: pytest.CaptureFixture
) -> None:
    folder = search_folder(tmp_path)
    proc = holder(folder.path)
    before = snapshot(folder.path)
    argv = [command[0], str(folder), *command[1:]]
    assert main(argv) == 2
    line = one_line(capsys)
    assert line.startswith(f"fer-tune: error: {folder}: in use by another fer-tune command (PID {proc.pid} ")
    assert snapshot(folder.path) == before


def test_a_new_search_of_a_name_in_use_stops_before_the_data_and_ray(
    tmp_path: Path, data_csv: Path, holder, capsys: pytest.CaptureFixture
) -> None:
    results = tmp_path / "r"
    proc = holder(results / "same")
    before = snapshot(results / "same")
    argv = ["--space", "smoke", "--data", str(data_csv), "--gpus", "0", "--results", str(results)]
    assert main([*argv, "--name", "same"]) == 2
    line = one_line(capsys)
    assert line.startswith(
        f"fer-tune: error: {results / 'same'}: in use by another fer-tune command (PID {proc.pid}"
    )
    assert line.endswith("wait for it to end; or choose another --name")
    assert snapshot(results / "same") == before


def test_a_search_that_fails_before_writing_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,pixels,Usage\n9,1 2 3,Training\n")
    results = tmp_path / "r"
    argv = ["--space", "smoke", "--data", str(bad), "--gpus", "0", "--results", str(results)]
    assert main([*argv, "--name", "s"]) == 2
    capsys.readouterr()
    assert list(results.iterdir()) == []  # neither the folder nor its lock file


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_two_searches_of_one_name_started_together_one_runs(tmp_path: Path, data_csv: Path) -> None:
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    results = tmp_path / "r"
    args = ["--space", str(space), "--data", str(data_csv), "--gpus", "0", "--cpus", "2"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    procs, logs = [], [tmp_path / "log-0.txt", tmp_path / "log-1.txt"]
    try:
        for log in logs:
            with open(log, "w") as out:
                cmd = [
                    sys.executable,
                    "-m",
                    "fer_tune.cli",
                    *args,
                    "--name",
                    "same",
                    "--results",
                    str(results),
                ]
                procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True))
            time.sleep(0.3)
        codes = [p.wait(timeout=360) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert sorted(codes) == [0, 2], [log.read_text()[-3000:] for log in logs]
    ran, refused = (0, 1) if codes[0] == 0 else (1, 0)
    text = logs[refused].read_text()
    errors = [ln for ln in text.splitlines() if ln.startswith("fer-tune: error:")]
    folder = results / "same"
    assert len(errors) == 1, text[-3000:]
    assert errors[0].startswith(
        f"fer-tune: error: {folder}: in use by another fer-tune command (PID {procs[ran].pid} on "
    ), text[-3000:]
    # One search's files only: its two trials, one experiment state, its own tables and lock record.
    assert len(list(folder.glob("experiment_state-*.json"))) == 1
    assert len([p for p in folder.iterdir() if (p / "params.json").is_file()]) == 2
    assert len((folder / "trials.csv").read_text().splitlines()) == 1 + 2
    assert json.loads((folder / LOCK_FILE).read_text())["pid"] == procs[ran].pid
    assert SearchFolder(folder).read_state().finished
