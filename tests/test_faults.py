"""The faults that end searches (docs/faults.md): each ends with one line and a folder that
still resumes.

The fast tests build broken folders by hand. The slow ones run `fer-tune` in subprocesses with their own Ray:
a results disk that fills up or turns read-only mid-search (a real tmpfs in a private mount namespace), a
trial that hangs, and one search stopped three ways in turn (Ctrl-C typed in its terminal, SIGTERM to its
process group, Ctrl-C twice), resumed after each: the three tests of those ways share it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import make_fer
from ray.tune import Checkpoint

import fer_tune
from fer_tune.base import DataError, process_stats
from fer_tune.cli import main
from fer_tune.search import SearchFolder, SearchState, load_results, parse_space
from fer_tune.search.internals import default_placement_group_factory, storage_context, training_result
from fer_tune.search.recovery import check_experiment_state, keep_whole_state, whole_copy
from fer_tune.search.trial_checkpoints import good_checkpoint, heal_stale_checkpoint
from fer_tune.training import train

TINY = {
    "model": {"arch": "cnn", "kernels": [8], "head_width": 0},
    "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0},
}


def one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def space_doc(search: dict, train: dict) -> dict:
    return {
        "search": search,
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {"batch_size": 16, "warmup_epochs": 0, **train},
        "augment": {"crop": 0, "rotation": 0},
    }


# -- refused before anything is written ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "..", "../up", ".", "a\\b"])
def test_a_name_with_a_path_in_it_is_refused(name: str, tmp_path: Path, capsys) -> None:
    argv = ["--space", "smoke", "--data", str(tmp_path / "absent.csv"), "--gpus", "0"]
    assert main([*argv, "--results", str(tmp_path / "r"), "--name", name]) == 2
    assert one_line(capsys).startswith(f"fer-tune: error: --name {name!r}: must be one folder name")
    assert not (tmp_path / "r").exists()


def test_results_inside_the_package_are_refused(tmp_path: Path, capsys) -> None:
    inside = Path(fer_tune.__file__).resolve().parent / "results-test"
    argv = [
        "--space",
        "smoke",
        "--data",
        str(tmp_path / "absent.csv"),
        "--gpus",
        "0",
        "--results",
        str(inside),
    ]
    assert main(argv) == 2
    assert "inside the installed fer_tune package" in one_line(capsys)
    assert not inside.exists()


# -- damaged files after a crash -----------------------------------------------------------------------------


def search_folder(tmp_path: Path) -> SearchFolder:
    """A search folder as a crash leaves it: state, space and one Ray experiment-state snapshot."""
    folder = SearchFolder(tmp_path / "s")
    folder.path.mkdir()
    space = parse_space(space_doc({"num_samples": 2, "scheduler": "none"}, {"epochs": 2}), name="s")
    folder.write_space(space)
    folder.write_state(SearchState(name="s", space="s.yaml", data=str(tmp_path / "d.csv"), started="now"))
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": []}))
    return folder


def test_a_corrupt_fer_tune_json_stops_resume_with_one_line(tmp_path: Path, capsys) -> None:
    folder = search_folder(tmp_path)
    folder.state_path.write_text(folder.state_path.read_text()[:40])  # cut mid-write by something else
    assert main(["resume", str(folder)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"fer-tune: error: {folder.state_path}: unreadable search state (")
    assert line.endswith(
        "restore it from a backup, or move it aside: report and export read the folder without it"
    )


def test_a_cut_experiment_state_stops_resume_with_one_line(tmp_path: Path, capsys) -> None:
    folder = search_folder(tmp_path)
    newest = folder / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text('{"trial_data": [["{\\"trial_id\\": ')
    assert main(["resume", str(folder)]) == 2
    line = one_line(capsys)
    assert line.startswith(f"fer-tune: error: {newest}: truncated or corrupt Ray Tune experiment state (")
    assert line.endswith(
        "move it aside to resume from the older snapshot experiment_state-2026-01-01_00-00-00.json"
    )
    (folder / "experiment_state-2026-01-01_00-00-00.json").unlink()
    assert main(["resume", str(folder)]) == 2
    assert "it is the only snapshot, so the search cannot continue" in one_line(capsys)


def test_a_cut_experiment_state_is_put_back_from_its_whole_copy(tmp_path: Path, capsys) -> None:
    folder = search_folder(tmp_path)
    state = folder / "experiment_state-2026-01-01_00-00-00.json"
    whole, seen = state.read_text(), {}
    keep_whole_state(folder.path, seen, every_s=0)  # what the driver does as Ray's loop runs
    assert whole_copy(state).read_text() == whole
    copied = whole_copy(state).stat().st_mtime_ns
    keep_whole_state(folder.path, seen, every_s=0)  # unchanged: not copied again
    assert whole_copy(state).stat().st_mtime_ns == copied
    state.write_text(whole[:9])  # SIGKILL while Ray copied the next snapshot over it
    keep_whole_state(folder.path, seen, every_s=0)  # a cut file is never kept
    state.write_text(whole.replace("[]", "[[]]"))  # a newer whole snapshot, but looked at too soon after
    keep_whole_state(folder.path, seen)
    assert whole_copy(state).read_text() == whole
    state.write_text(whole[:9])
    assert whole_copy(state).read_text() == whole
    check_experiment_state(folder.path)  # what resume does first
    assert state.read_text() == whole
    assert capsys.readouterr().err.startswith(f"fer-tune: {state}: cut short by a crash (")


@pytest.fixture(scope="module")
def trial_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trial folder with checkpoint_000001 and checkpoint_000002, both whole (real fer-tune checkpoints)."""
    trial = tmp_path_factory.mktemp("trial")
    for epochs, name in ((1, "checkpoint_000001"), (2, "checkpoint_000002")):
        out = trial / f"run{epochs}"
        train(
            {**TINY, "train": {**TINY["train"], "epochs": epochs}},
            make_fer({"Training": 5, "PublicTest": 2}),
            out_dir=out,
        )
        (trial / name).mkdir()
        shutil.copy(out / "checkpoint.pt", trial / name / "checkpoint.pt")
    return trial


def test_a_cut_checkpoint_falls_back_to_the_one_before(tmp_path: Path, trial_checkpoints: Path) -> None:
    trial = tmp_path / "trial"
    shutil.copytree(trial_checkpoints, trial)
    latest, before = trial / "checkpoint_000002", trial / "checkpoint_000001"
    with good_checkpoint(Checkpoint(str(latest))) as folder:
        assert folder == str(latest)  # whole: used as it is
    ckpt = latest / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # a crash before the write reached disk
    with good_checkpoint(Checkpoint(str(latest))) as folder:
        assert folder == str(before)
    cut = before / "checkpoint.pt"
    cut.write_bytes(cut.read_bytes()[:100])
    with (
        pytest.raises(
            DataError, match=rf"^{latest}/checkpoint.pt: not a fer-tune checkpoint, truncated or corrupt"
        ),
        good_checkpoint(Checkpoint(str(latest))),
    ):
        pass


@pytest.mark.ray
def test_a_snapshot_naming_a_deleted_checkpoint_resumes_from_the_newest(
    ray_cluster, tmp_path: Path, trial_checkpoints: Path
) -> None:
    """Ray deletes old checkpoints (num_to_keep=2) faster than it saves its state: the state it resumes from
    can name a checkpoint that is gone. fer-tune continues the trial from the newest one instead.

    Ray must be up: the healed trial's result.json lies in its driver staging folder, under Ray's session."""
    from ray.tune import CheckpointConfig, PlacementGroupFactory
    from ray.tune.experiment import Trial

    storage = storage_context(str(tmp_path), "exp", "trial_t1")
    trial = Trial(
        "fer_trial",
        stub=True,
        trial_id="t1",
        storage=storage,
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
    )
    trial.placement_group_factory = default_placement_group_factory(trial)  # as Ray's controller sets it
    folder = tmp_path / "exp" / "trial_t1"
    snapshot = None
    for k in range(4):  # one checkpoint per report, as fer-tune's trainable makes them
        ckpt = folder / f"checkpoint_00000{k}"
        ckpt.mkdir(parents=True)
        shutil.copy(trial_checkpoints / "checkpoint_000002" / "checkpoint.pt", ckpt / "checkpoint.pt")
        metrics = {"training_iteration": k + 1, "time_total_s": k}
        trial.on_checkpoint(training_result(Checkpoint(str(ckpt)), metrics))
        if k == 1:
            snapshot = trial.get_json_state()  # Ray's last save of its state before the kill
    assert not (folder / "checkpoint_000001").exists() and (folder / "checkpoint_000003").exists()

    def resumed() -> Trial:
        t = Trial.from_json_state(snapshot[0], stub=True)
        t.restore_run_metadata(snapshot[1])
        return t

    t = resumed()
    assert t.checkpoint.path.endswith("checkpoint_000001")  # what Ray would fail to restore
    assert heal_stale_checkpoint(t) == (
        "trial t1: the saved search state names checkpoint_000001, which Ray had already replaced; "
        "resuming from checkpoint_000003 (epoch 2)"
    )
    assert t.checkpoint.path == str(folder / "checkpoint_000003")
    assert t.latest_checkpoint_result.metrics["training_iteration"] == 4
    assert t.storage.current_checkpoint_index == 3  # its next checkpoint: checkpoint_000004
    assert t.latest_checkpoint_result.metrics["val_acc"] >= 0  # the epoch's own metrics
    assert heal_stale_checkpoint(t) is None  # whole now: nothing to do

    cut = folder / "checkpoint_000003" / "checkpoint.pt"
    cut.write_bytes(cut.read_bytes()[:100])  # the newest cut too: the one before it
    t = resumed()
    assert heal_stale_checkpoint(t).endswith("resuming from checkpoint_000002 (epoch 2)")
    assert t.latest_checkpoint_result.metrics["training_iteration"] == 3


def write_checkpoint(folder: Path, epochs: int) -> None:
    """A fer-tune checkpoint of `epochs` epochs: what the resume reads of it (its history), no weights."""
    import torch

    folder.mkdir(parents=True)
    history = [{"epoch": e, "val_acc": e / 10, "epoch_seconds": 1.0} for e in range(1, epochs + 1)]
    ckpt = {k: {} for k in ("config", "model", "optimizer", "scheduler", "plateau", "rng")}
    torch.save({**ckpt, "epoch": epochs, "history": history}, folder / "checkpoint.pt")


@pytest.mark.ray
@pytest.mark.parametrize(
    "kill",
    [
        "after Ray replaced the checkpoint its last snapshot names",  # the snapshot's is gone: healed
        "while Ray copied its snapshot and the trial's rows to the search folder",  # the snapshot's is there
    ],
)
def test_a_trial_resumed_from_a_checkpoint_ahead_of_its_rows_keeps_every_epoch_once(
    ray_cluster, tmp_path: Path, kill: str
) -> None:
    """SIGKILL at the wrong moment leaves the trial's checkpoints ahead of its `result.json` in the search
    folder: Ray writes checkpoints there from the trial at once, but the driver's rows only with its next
    snapshot sync. The resumed trial continues from the checkpoint; the epochs before it must still be in its
    rows. Ray restores a resumed trial's `result.json` from the search folder when it starts it (its logger's
    `_restore_from_remote`, overwriting the driver's staging copy): the rows must be recorded there. Seen:
    "epochs 4-6 missing" after a SIGKILL resume."""
    from ray.tune import CheckpointConfig, PlacementGroupFactory
    from ray.tune.experiment import Trial
    from ray.tune.logger import JsonLoggerCallback

    from fer_tune.search.trainable import trial_dirname
    from fer_tune.search.trial_checkpoints import record_checkpoint_epochs

    trial = Trial(
        "fer_trial",
        stub=True,
        trial_id="t1",
        storage=storage_context(str(tmp_path), tmp_path.name, "trial_t1"),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
        trial_dirname_creator=trial_dirname,
    )
    trial.placement_group_factory = default_placement_group_factory(trial)
    trial.init_local_path()  # as Ray's controller does when it adds a trial
    folder = tmp_path / tmp_path.name / "trial_t1"
    rows, snapshot = [], None
    for epoch in range(1, 7):  # one report (and checkpoint_<epoch - 1>) per epoch, as fer_trial makes them
        write_checkpoint(folder / f"checkpoint_{epoch - 1:06d}", epoch)
        metrics = {"epoch": epoch, "val_acc": epoch / 10, "training_iteration": epoch, "time_total_s": epoch}
        rows.append(json.dumps({**metrics, "epoch_seconds": 1.0}) + "\n")
        trial.on_checkpoint(training_result(Checkpoint(str(folder / f"checkpoint_{epoch - 1:06d}")), metrics))
        if epoch == (3 if kill.startswith("after") else 6):
            snapshot = trial.get_json_state()  # Ray's last snapshot in the search folder before the kill
    # The trial's rows in the search folder: synced up to epoch 3 (a copy cut by the kill: epoch 4's torn).
    torn = "" if kill.startswith("after") else rows[3][:20]
    (folder / "result.json").write_text("".join(rows[:3]) + torn)
    assert sorted(p.name for p in folder.glob("checkpoint_*")) == ["checkpoint_000004", "checkpoint_000005"]

    resumed = Trial.from_json_state(snapshot[0], stub=True)
    resumed.restore_run_metadata(snapshot[1])
    resumed.init_local_path()  # as Ray's restore does: the driver's staging folder of the trial, empty
    healed = heal_stale_checkpoint(resumed)  # what StopLog does for each trial to resume, in this order
    assert (healed is not None) == kill.startswith("after")
    note = "trial t1: recorded epochs 4-6, in its checkpoint but not in result.json"
    assert record_checkpoint_epochs(resumed) == note
    assert record_checkpoint_epochs(resumed) is None  # once only
    # Ray starts the trial: its logger restores result.json from the search folder, and the trial continues
    # from epoch 6's checkpoint with epoch 7.
    logger = JsonLoggerCallback()
    logger.log_trial_start(resumed)
    logger.log_trial_result(0, resumed, {"epoch": 7, "training_iteration": 7})
    logger.log_trial_end(resumed)
    staged = Path(resumed.local_path) / "result.json"
    assert [json.loads(ln)["epoch"] for ln in staged.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 7]
    last = json.loads(staged.read_text().splitlines()[5])
    assert last["training_iteration"] == 6 and last["time_total_s"] == 6.0 and last["trial_id"] == "t1"


# -- faults in a running search (subprocesses) ---------------------------------------------------------------


def write_space(tmp_path: Path, search: dict, train: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space_doc(search, train)))
    return path


def search_argv(
    tmp_path: Path, data_csv: Path, folder: Path, *, num_samples: int, seed: int, epochs: int
) -> list[str]:
    """A CPU search of `num_samples` trials without ASHA into `folder`: its space written, its argv."""
    search = {"num_samples": num_samples, "scheduler": "none", "seed": seed}
    sp = write_space(tmp_path, search, {"epochs": epochs})
    args = ["--space", str(sp), "--data", str(data_csv), "--gpus", "0", "--cpus", "2"]
    return [*args, "--results", str(folder.parent), "--name", folder.name]


class Runner:
    """`fer-tune ARGS` subprocesses (optionally inside a mount namespace), output in tmp_path/log-N.txt."""

    def __init__(self, tmp_path: Path, prefix: list[str] | None = None) -> None:
        self.tmp_path, self.prefix, self.procs = tmp_path, prefix or [], []

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", **(env or {})}
        env.pop("RAY_ADDRESS", None)
        log = self.tmp_path / f"log-{len(self.procs)}.txt"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "fer_tune.cli", *args],
                env=env,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group: killpg is what a terminal's Ctrl-C does
            )
        proc.log = log  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def start_in_terminal(self, *args: str) -> subprocess.Popen:
        """`fer-tune ARGS` in a new session whose controlling terminal is a pseudo-terminal, as a user's shell
        runs it: `proc.type(b"\\x03")` is Ctrl-C typed there (the terminal sends SIGINT to its foreground
        process group). What the terminal shows goes to the log."""
        master, slave = os.openpty()
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled", "TERM": "xterm"}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_tune.cli", *args],
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            # setsid ran first: fd 0 (the pty) becomes the session's controlling terminal.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        proc.log = self.tmp_path / f"log-{len(self.procs)}.txt"  # type: ignore[attr-defined]

        def drain() -> None:  # a full pty buffer would block the search's output
            with open(proc.log, "wb") as out:  # type: ignore[attr-defined]
                while True:
                    try:
                        chunk = os.read(master, 4096)
                    except OSError:  # EIO: every process holding the terminal has exited
                        break
                    if not chunk:
                        break
                    out.write(chunk)
                    out.flush()
            os.close(master)

        threading.Thread(target=drain, daemon=True).start()
        proc.type = lambda keys: os.write(master, keys)  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def group_left(pgid: int, wait_s: float = 10.0) -> list[str]:
    """The live processes of the process group `pgid` (a zombie nobody reaps is not) by command line, once
    there are none or `wait_s` has passed: Ray's workers notice their raylet's end within a second or two."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [pid for pid, (state, _, pgrp) in process_stats().items() if pgrp == pgid and state != "Z"]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lines = []
    for pid in alive:
        with contextlib.suppress(OSError):  # it ended meanwhile
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100])
    return lines


@pytest.fixture
def runner(tmp_path: Path):
    r = Runner(tmp_path)
    yield r
    r.close()


def epochs(trial_dir: Path) -> list[int]:
    path = trial_dir / "result.json"
    return [json.loads(ln)["epoch"] for ln in path.read_text().splitlines()] if path.is_file() else []


def wait_for_epochs(folder: Path, proc: subprocess.Popen, n: int, timeout: float = 150) -> None:
    """Until a state snapshot exists and some trial has reported n epochs (fails if the search ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if list(folder.glob("experiment_state-*.json")) and any(
            len(epochs(t)) >= n for t in folder.glob("trial_*")
        ):
            return
    raise AssertionError(f"no trial reached {n} epochs; exit {proc.poll()}: {proc.log.read_text()[-3000:]}")


def assert_continued(folder: Path, n_trials: int, n_epochs: int) -> None:
    """Every trial completed, and none restarted at epoch 1 after the fault (each epoch once or redone)."""
    trials, history = load_results(folder)
    assert len(trials) == n_trials and (trials["stop_reason"] == "completed").all(), trials["stop_reason"]
    for t in trials["trial_id"]:
        assert epochs(folder / f"trial_{t}").count(1) == 1
        assert sorted(history[history["trial_id"] == t]["epoch"]) == list(range(1, n_epochs + 1))


class Namespace:
    """A private mount namespace holding a small tmpfs at `mount`: the results disk that fills up."""

    def __init__(self, mount: Path, size: str = "24m") -> None:
        mount.mkdir(parents=True)
        script = 'mount -t tmpfs -o size="$1" tmpfs "$0" && echo ready && exec sleep 900'
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(mount), size],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if self.proc.stdout.readline().strip() != "ready":
            pytest.skip(f"no private tmpfs here (unshare -m needs root): {self.proc.stderr.read()}")
        self.mount = mount
        self.enter = ["nsenter", "-t", str(self.proc.pid), "-m", "--"]

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.enter, *cmd], capture_output=True, text=True)

    def read_only(self, on: bool) -> None:
        """Make the disk read-only, or writable again. A remount of the tmpfs itself is refused while the
        search holds files open for writing (EBUSY), so a read-only bind mount of it is laid over it: every
        new write there fails with EROFS, as on a disk the kernel turned read-only after an error."""
        m = str(self.mount)
        cmds = [["mount", "--bind", m, m], ["mount", "-o", "remount,bind,ro", m]] if on else [["umount", m]]
        for cmd in cmds:
            done = self.run(*cmd)
            assert done.returncode == 0, done.stderr

    def copy_out(self, src: Path, dst: Path) -> Path:
        """`src` as the namespace sees it, copied to `dst` on the real disk (visible outside)."""
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        self.run("cp", "-a", f"{src}/.", str(dst))  # a file vanishing mid-copy (Ray's temp files) is no fault
        return dst

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def whole_lines(text: str) -> list[str]:
    """The lines of a JSON-lines file that were completely written (a copy may catch the last one torn)."""
    lines = text.splitlines()
    return lines if text.endswith("\n") else lines[:-1]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
# One kind in the default set (each a 35-50 s search on 2 cores); the other under -m long, to keep CI short.
@pytest.mark.parametrize("fault", ["full", pytest.param("read-only", marks=pytest.mark.long)])
def test_a_full_or_read_only_results_disk_stops_with_one_error_and_resumes(
    fault: str, tmp_path: Path, data_csv: Path
) -> None:
    ns = Namespace(tmp_path / "disk")
    runner = Runner(tmp_path, prefix=ns.enter)
    try:
        folder = ns.mount / "s"
        proc = runner.start(*search_argv(tmp_path, data_csv, folder, num_samples=4, seed=1, epochs=25))
        deadline = time.time() + 150
        before = ns.copy_out(folder, tmp_path / "before")
        while not (
            list(before.glob("experiment_state-*.json"))
            and any(len(epochs(t)) >= 3 for t in before.glob("trial_*"))
        ):
            assert time.time() < deadline and proc.poll() is None, proc.log.read_text()[-3000:]
            time.sleep(0.5)
            before = ns.copy_out(folder, tmp_path / "before")
        if fault == "full":
            ns.run("sh", "-c", f"cat /dev/zero > {ns.mount}/filler")  # until ENOSPC
        else:
            ns.read_only(True)
        assert proc.wait(timeout=120) == 2
        log = proc.log.read_text()
        why = os.strerror(errno.ENOSPC if fault == "full" else errno.EROFS)
        errors = [ln for ln in log.splitlines() if ln.startswith("fer-tune: error:")]
        assert errors == [
            f"fer-tune: error: {folder}: cannot write there: {why}; the search stopped and its last saved "
            f"state is kept: free space (or make it writable), then continue with: fer-tune --resume {folder}"
        ]
        assert log.rstrip().endswith(errors[0])  # the last word
        after = ns.copy_out(folder, tmp_path / "after")
        # Nothing written before the fault was damaged: the state record, the space, every epoch line.
        for name in ("fer_tune.json", "space.yaml"):
            assert (after / name).read_text() == (before / name).read_text()
        for trial in before.glob("trial_*"):
            old, new = (
                whole_lines((trial / "result.json").read_text()),
                (after / trial.name / "result.json").read_text(),
            )
            assert new.splitlines()[: len(old)] == old
            [json.loads(ln) for ln in whole_lines(new)]
        state = max(after.glob("experiment_state-*.json"))
        try:
            json.loads(state.read_text())
        except ValueError:  # Ray writes it in place: the fault may cut it; resume puts back its whole copy
            json.loads(whole_copy(state).read_text())
        with sqlite3.connect(after / "optuna.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        # Space freed (or the disk writable again): the search resumes and every trial completes.
        if fault == "full":
            ns.run("rm", f"{ns.mount}/filler")
        else:
            ns.read_only(False)
        assert runner.start("--resume", str(folder)).wait(timeout=240) == 0
        assert_continued(ns.copy_out(folder, tmp_path / "resumed"), 4, 25)
    finally:
        runner.close()
        ns.close()


HANG_HOOK = """
import os, sys, time
if sys.argv and sys.argv[0].endswith("default_worker.py"):
    import fer_tune.training.trainer as t
    _train_one_epoch = t.train_one_epoch
    def train_one_epoch(model, opt, sched, images, labels, cfg, norm, epoch, *args, **kwargs):
        if cfg.train.lr == 0.0123 and epoch == 2:
            time.sleep(3600)  # a hung trial: a dead NFS mount, a deadlocked data loader, a stuck GPU
        return _train_one_epoch(model, opt, sched, images, labels, cfg, norm, epoch, *args, **kwargs)
    t.train_one_epoch = train_one_epoch
"""


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hung_trial_is_stopped_after_the_trial_timeout_and_the_search_goes_on(
    tmp_path: Path, data_csv: Path, runner: Runner
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HANG_HOOK)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)}
    sp = write_space(
        tmp_path,
        {"algorithm": "grid", "num_samples": 1, "scheduler": "none"},
        {"epochs": 3, "lr": {"grid": [0.05, 0.0123, 0.02]}},
    )
    folder = tmp_path / "results" / "hang"
    args = [
        "--space",
        str(sp),
        "--data",
        str(data_csv),
        "--gpus",
        "0",
        "--cpus",
        "2",
        "--trial-timeout",
        # 4x a trial's start-up and first epoch here under load (2.3-2.8 s; 4.5 s at a load of 7)
        "12s",
    ]
    t0 = time.time()
    proc = runner.start(*args, "--results", str(folder.parent), "--name", "hang", env=env)
    assert proc.wait(timeout=240) == 0, proc.log.read_text()[-3000:]
    assert time.time() - t0 < 200  # not the hour the trial would have slept
    trials = load_results(folder)[0]
    reasons = dict(zip(trials["config/train/lr"], trials["stop_reason"], strict=True))
    assert reasons == {0.05: "completed", 0.0123: "timed out", 0.02: "completed"}
    assert (trials[trials["config/train/lr"] == 0.0123]["epochs"] == 1).all()
    assert "timed out" in set(__import__("pandas").read_csv(folder / "trials.csv")["stop_reason"])


def total_epochs(folder: Path) -> int:
    """The rows of every trial's result.json in the search folder (epochs redone count again)."""
    return sum(len(epochs(t)) for t in folder.glob("trial_*"))


def wait_for_progress(folder: Path, proc: subprocess.Popen, n: int, timeout: float = 150) -> None:
    """Until the search running in `proc` has reported n more epochs (fails if it ends first)."""
    start = total_epochs(folder)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if list(folder.glob("experiment_state-*.json")) and total_epochs(folder) >= start + n:
            return
    raise AssertionError(f"no {n} epochs more; exit {proc.poll()}: {proc.log.read_text()[-3000:]}")


@dataclass
class Stop:
    """One run of a search stopped by a signal."""

    code: int | None  # its exit status
    took: float  # seconds from the (first) signal to its exit
    log: str
    finished: bool  # fer_tune.json's "finished" after it
    left: list[str]  # the processes of its process group still running (after up to 10 s)


@dataclass
class StoppedThreeWays:
    """`stopped_three_ways`: the search folder, each stop (by its way), and the last resume's exit status."""

    folder: Path
    stops: dict[str, Stop]
    resume_code: int | None
    resume_log: str


STOP_EPOCHS = 25


@pytest.fixture(scope="module")
def stopped_three_ways(
    tmp_path_factory: pytest.TempPathFactory, data_csv: Path
) -> Iterator[StoppedThreeWays]:
    """One search of 4 trials stopped three times, each resume of it by the next way: one Ctrl-C typed in its
    terminal (what every user does), SIGTERM to its process group (a scheduler ending the job), Ctrl-C twice
    (the second while Ray saves); then resumed to its end. The search, and each resume, runs until it has
    reported two more epochs. Each way's test checks its stop, and that the search then resumed and
    completed with no trial restarted: one search instead of three (each a search and a resume)."""
    tmp = tmp_path_factory.mktemp("stopped")
    folder = tmp / "results" / "stop"
    runner = Runner(tmp)
    stops: dict[str, Stop] = {}

    def stop(proc: subprocess.Popen, way: str) -> None:
        wait_for_progress(folder, proc, 2)
        t0 = time.monotonic()
        if way == "typed":
            proc.type(b"\x03")  # type: ignore[attr-defined]
        elif way == "sigterm":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
            time.sleep(0.05)  # while Ray stops the trials and saves its state (0.1-0.5 s here)
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=120)
        took = time.monotonic() - t0
        time.sleep(0.5)  # a terminal's last output
        left = group_left(proc.pid)
        finished = json.loads((folder / "fer_tune.json").read_text())["finished"]
        stops[way] = Stop(code, took, proc.log.read_text(errors="replace"), finished, left)

    try:
        args = search_argv(tmp, data_csv, folder, num_samples=4, seed=2, epochs=STOP_EPOCHS)
        stop(runner.start_in_terminal(*args), "typed")
        stop(runner.start("--resume", str(folder)), "sigterm")
        stop(runner.start("--resume", str(folder)), "twice")
        last = runner.start("--resume", str(folder))
        code = last.wait(timeout=240)
        yield StoppedThreeWays(folder, stops, code, last.log.read_text(errors="replace"))
    finally:
        runner.close()


def assert_resumed_to_its_end(run: StoppedThreeWays) -> None:
    """Every stop was resumed (the next run continued from it), and the last resume completed every trial,
    none restarted at epoch 1."""
    assert run.resume_code == 0, run.resume_log[-3000:]
    assert_continued(run.folder, 4, STOP_EPOCHS)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)  # the shared search: four runs of fer-tune
def test_one_ctrl_c_typed_in_its_terminal_stops_a_search_as_an_interruption_that_resumes(
    stopped_three_ways: StoppedThreeWays,
) -> None:
    """The first Ctrl-C every user presses: exit 130, the resume line, the state unfinished; resume completes.
    (Ray Tune's own SIGINT handler used to end the loop quietly: exit 0, "finished", nothing to resume.)"""
    run = stopped_three_ways
    typed = run.stops["typed"]
    assert typed.code == 130, typed.log[-3000:]
    assert not typed.left, f"outlived the driver: {typed.left}"
    assert f"Continue it with: fer-tune --resume {run.folder}" in typed.log
    assert typed.finished is False
    assert_resumed_to_its_end(run)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_to_the_process_group_stops_within_seconds_and_resumes(
    stopped_three_ways: StoppedThreeWays,
) -> None:
    """`kill -TERM -PGID` (a job control or a scheduler stopping the job) reaches only the driver: Ray's own
    processes block SIGTERM. When it reached them, the driver's graceful stop raced their end: it waited 15 s
    for the dead GCS (until the watchdog), or Ray's core worker ended it at once with status 1 and no resume
    line (CI, about 1 run in 8)."""
    run = stopped_three_ways
    term = run.stops["sigterm"]
    assert term.code == 130 and term.took < 15, (
        f"exit {term.code} after {term.took:.0f} s: {term.log[-3000:]}"
    )
    assert "did not stop within" not in term.log  # stopped by Ray, not by the watchdog
    assert not term.left, f"outlived the driver: {term.left}"
    assert f"Continue it with: fer-tune --resume {run.folder}" in term.log
    assert_resumed_to_its_end(run)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_twice_leaves_a_resumable_folder(stopped_three_ways: StoppedThreeWays) -> None:
    twice = stopped_three_ways.stops["twice"]
    assert twice.code == 130, twice.log[-3000:]
    assert_resumed_to_its_end(stopped_three_ways)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(400)
# The same stop sent three other ways (45 s each); typed in its terminal and SIGTERM to the group, above.
@pytest.mark.parametrize("how", ["kill -INT to its group", "kill -INT to it", "kill -TERM to it"])
def test_one_ctrl_c_stops_a_search_as_an_interruption_that_resumes(
    tmp_path: Path, data_csv: Path, runner: Runner, how: str
) -> None:
    """As the first test above, for Ctrl-C sent with `kill -INT` to the process group or to the driver, and
    SIGTERM to the driver alone: Ray's processes, which it does not reach, end with the driver."""
    folder = tmp_path / "results" / "c1"
    args = search_argv(tmp_path, data_csv, folder, num_samples=2, seed=4, epochs=20)
    proc = runner.start(*args)
    wait_for_epochs(folder, proc, 2)
    signum = signal.SIGTERM if "TERM" in how else signal.SIGINT
    (os.killpg if "group" in how else os.kill)(proc.pid, signum)
    assert proc.wait(timeout=120) == 130, proc.log.read_text(errors="replace")[-3000:]
    left = group_left(proc.pid)
    assert not left, f"outlived the driver: {left}"
    assert f"Continue it with: fer-tune --resume {folder}" in proc.log.read_text(errors="replace")
    assert json.loads((folder / "fer_tune.json").read_text())["finished"] is False
    assert runner.start("--resume", str(folder)).wait(timeout=240) == 0
    assert_continued(folder, 2, 20)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_search_that_runs_out_of_its_time_budget_finishes(
    tmp_path: Path, data_csv: Path, runner: Runner
) -> None:
    """Ray runs its own copy of the budget stopper on a resume, and fer-tune judged "budget hit" by this run's
    clock alone: the resume that spent the rest of the budget ended as interrupted (exit 130, "Continue it
    with"), and so did every resume after it, seconds each: the search never finished."""
    folder = tmp_path / "results" / "b1"
    args = search_argv(tmp_path, data_csv, folder, num_samples=4, seed=5, epochs=100_000)
    proc = runner.start(*args, "--time-budget", "30s")  # 2 trials at a time: the budget ends before 4
    wait_for_epochs(folder, proc, 2)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130, proc.log.read_text(errors="replace")[-3000:]
    resumed = runner.start("--resume", str(folder))
    assert resumed.wait(timeout=240) == 0, resumed.log.read_text(errors="replace")[-3000:]
    assert json.loads((folder / "fer_tune.json").read_text())["finished"] is True
    # Its view counted down what the first run left, not the whole 30 s again.
    left = re.findall(r"elapsed, 0:00:(\d\d) left of 0:00:30", resumed.log.read_text(errors="replace"))
    assert left and int(left[0]) < 28, left
    reasons = set(__import__("pandas").read_csv(folder / "trials.csv")["stop_reason"])
    assert "stopped by time budget" in reasons, reasons


def test_epochs_a_checkpoint_holds_beyond_the_record_are_recorded(tmp_path: Path) -> None:
    """A trial resumed from a checkpoint newer than the driver's last record (seen: a read-only disk and a
    SIGKILL left epochs 6 and 7 in the checkpoint but not in result.json) keeps every epoch in the results."""
    from fer_tune.search.results import _history
    from fer_tune.search.trial_checkpoints import record_epochs

    history = [{"epoch": e, "val_acc": e / 10, "epoch_seconds": 2.0} for e in range(1, 8)]
    rows = [{**h, "training_iteration": h["epoch"], "time_total_s": 2.0 * h["epoch"]} for h in history[:5]]
    path = tmp_path / "result.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"epoch": 6, "val_')  # torn by the crash
    stale = rows[3]  # the snapshot named epoch 4's checkpoint
    assert record_epochs(path, history, stale, "t1") == 2
    hist = _history(tmp_path)
    assert hist["epoch"].tolist() == [1, 2, 3, 4, 5, 6, 7] and hist["val_acc"].tolist()[-2:] == [0.6, 0.7]
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["training_iteration"] == 7 and last["time_total_s"] == 14.0 and last["trial_id"] == "t1"
    assert record_epochs(path, history, stale, "t1") == 0  # once only
