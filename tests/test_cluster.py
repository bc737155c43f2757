"""A real two-node Ray cluster on this machine, results in a real S3-compatible store (moto's server).

The head node runs where the test does; the worker node runs in its own mount namespace where the test's
folder (the data file, fer-tune's local mirror of the search) is hidden under an empty tmpfs, so it can only
get the data from Ray's object store and can only write results to the store. `fer-tune --address` is the
driver on the head. Midway the worker node is killed (every process in its namespace, SIGKILL): the trial it
was running must continue from its last checkpoint on the head, and every trial must finish.

Own Ray processes (own ports and temp dir, never `ray stop`): no clash with the session's cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_fer

from fer_tune.data import save_csv

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(600)]

BIN = Path(sys.executable).parent
BUCKET = "fer-results"
EPOCHS = 24


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, ok, timeout: float, poll: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def s3(tmp_path: Path):
    """moto's S3 server on a free port, a bucket, and the environment every node and the driver need."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    with open(tmp_path / "moto.log", "w") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",  # pyarrow's S3 (Ray's storage) and boto3 read it
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )

    def up() -> bool:
        try:
            client.create_bucket(Bucket=BUCKET)
            return True
        except Exception:
            return False

    wait_until("moto's server", up, 60)
    yield env, client
    proc.kill()
    proc.wait()


def mount_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


class Cluster:
    """`ray start --head` here, and `ray start --address` inside `unshare -m` with `hidden` under a tmpfs."""

    def __init__(self, tmp_path: Path, env: dict[str, str], hidden: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's unix sockets live under it (108-byte limit).
        self.temp = Path(tempfile.mkdtemp(prefix="ftc-", dir="/tmp"))
        self.env = {
            **os.environ,
            **env,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray 2.60's token auth needs the head's token on every node: a test cluster goes without.
            "RAY_AUTH_MODE": "disabled",
            # The head notices a dead node in seconds, not the default half minute.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_health_check_timeout_ms": "1000",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.logs = tmp_path
        common = ["--num-cpus=1", "--num-gpus=0", "--object-store-memory=100000000", "--disable-usage-stats"]
        head = [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={self.port}",
            f"--temp-dir={self.temp}",
            "--include-dashboard=false",
            *common,
        ]
        self.worker: subprocess.Popen | None = None
        done = subprocess.run(head, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        try:
            self._start_worker(tmp_path, hidden, common)
        except BaseException:
            self.close()
            raise

    def _start_worker(self, tmp_path: Path, hidden: Path, common: list[str]) -> None:
        script = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
        worker = [str(BIN / "ray"), "start", f"--address={self.address}", "--block", *common]
        with open(tmp_path / "worker-node.log", "w") as log:
            self.worker = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(hidden), *worker],
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

        def joined() -> bool:
            log = (tmp_path / "worker-node.log").read_text()
            assert self.worker.poll() is None, f"the worker node exited: {log[-3000:]}"
            return self.nodes_alive() == 2

        wait_until("the worker node", joined, 180, poll=2)

    def nodes_alive(self) -> int:
        code = "import ray; ray.init(address='%s', log_to_driver=False); "
        code += "print(sum(n['Alive'] for n in ray.nodes()))"
        done = subprocess.run(
            [sys.executable, "-c", code % self.address],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return int(done.stdout.split()[-1]) if done.returncode == 0 and done.stdout.split() else 0

    def worker_pids(self) -> list[int]:
        """Every process in the worker node's mount namespace (the node: ray start, raylet, its workers)."""
        if self.worker is None or self.worker.poll() is not None:
            return []
        ns = mount_ns(self.worker.pid)
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if os.readlink(p / "ns" / "mnt") == ns:
                        pids.append(int(p.name))
                except OSError:
                    continue
        return pids

    def worker_node_id(self) -> str:
        for pid in self.worker_pids():
            try:
                args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"raylet"):
                return next(a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id="))
        raise AssertionError("no raylet in the worker node's namespace")

    def sees(self, path: Path) -> bool:
        """Whether a process on the worker node can see `path`."""
        done = subprocess.run(["nsenter", "-t", str(self.worker.pid), "-m", "--", "test", "-e", str(path)])
        return done.returncode == 0

    def kill_worker_node(self) -> None:
        for pid in self.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.worker.wait(timeout=30)

    def close(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.kill_worker_node()
        # Stop only this cluster's head: its processes, found by its temp dir (never `ray stop`).
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.temp).encode() in cmd:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(p.name), signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def s3_text(client, key: str) -> str:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def test_two_nodes_results_in_s3_worker_node_killed_mid_trial(tmp_path: Path, s3) -> None:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("the worker node's private mount namespace needs root and unshare")
    env, client = s3
    hidden = tmp_path / "head-only"  # data, fer-tune's cache and mirror: the worker node sees an empty tmpfs
    hidden.mkdir()
    data = save_csv(make_fer({"Training": 20, "PublicTest": 6}), hidden / "fer2013.csv")
    space = {
        "search": {"num_samples": 4, "scheduler": "none", "seed": 0},
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {"epochs": EPOCHS, "batch_size": 16, "warmup_epochs": 0},
        "augment": {"crop": 0, "rotation": 0},
    }
    (hidden / "space.yaml").write_text(yaml.safe_dump(space))
    cluster = Cluster(tmp_path, env, hidden)
    procs: list[subprocess.Popen] = []
    try:
        assert not cluster.sees(data) and cluster.sees(Path(sys.executable))
        worker_node = cluster.worker_node_id()
        uri = f"s3://{BUCKET}/searches"
        driver_env = {**cluster.env, "FER_TUNE_CACHE": str(hidden / "cache"), "WANDB_MODE": "disabled"}
        args = [
            "--space",
            str(hidden / "space.yaml"),
            "--data",
            str(data),
            "--gpus",
            "0",
            "--max-failures",
            "3",
        ]
        args += ["--address", cluster.address, "--results", uri, "--name", "mn"]
        with open(tmp_path / "driver.log", "w") as log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "fer_tune.cli", *args], env=driver_env, stdout=log, stderr=log
            )
        procs.append(driver)

        def on_worker() -> dict[str, list[int]]:
            """Trial -> epochs it reported, of the trials running on the worker node (read from S3)."""
            found = {}
            listed = client.list_objects_v2(Bucket=BUCKET, Prefix="searches/mn/").get("Contents", [])
            for obj in listed:
                if obj["Key"].endswith("/result.json"):
                    rows = [json.loads(ln) for ln in s3_text(client, obj["Key"]).splitlines() if ln.strip()]
                    if rows and rows[-1].get("node_id") == worker_node:
                        found[obj["Key"].split("/")[-2]] = [r["epoch"] for r in rows]
            return found

        # A trial on the worker node 4+ epochs in (so it has checkpoints in the store), not yet finished.
        wait_until(
            "a trial mid-way on the worker node",
            lambda: driver.poll() is None and any(4 <= len(e) < EPOCHS - 4 for e in on_worker().values()),
            240,
            poll=1,
        )
        victims = {t: e for t, e in on_worker().items() if len(e) < EPOCHS}
        assert victims, "the trial on the worker node finished before the node could be killed"
        cluster.kill_worker_node()
        assert driver.wait(timeout=400) == 0, (tmp_path / "driver.log").read_text()[-4000:]

        # Every trial finished; trials ran on both nodes; the killed one continued on the head.
        csv = s3_text(client, "searches/mn/trials.csv")
        (tmp_path / "trials.csv").write_text(csv)
        trials = pd.read_csv(tmp_path / "trials.csv")
        assert len(trials) == 4 and (trials["stop_reason"] == "completed").all(), trials
        nodes = {n for ids in trials["node_ids"] for n in ids.split()}
        assert len(nodes) == 2 and worker_node in nodes
        for trial, before in victims.items():
            row = trials[trials["trial_id"] == trial.removeprefix("trial_")].iloc[0]
            assert row["node_ids"].split() == [worker_node, next(iter(nodes - {worker_node}))]
            epochs = [
                json.loads(ln)["epoch"]
                for ln in s3_text(client, f"searches/mn/{trial}/result.json").splitlines()
            ]
            assert epochs.count(1) == 1  # continued from a checkpoint, not restarted
            assert epochs[: len(before)] == before and sorted(set(epochs)) == list(range(1, EPOCHS + 1))
        # Every result and the last checkpoints of every trial reached the store.
        keys = {
            o["Key"]
            for o in client.list_objects_v2(Bucket=BUCKET, Prefix="searches/mn/", MaxKeys=5000)["Contents"]
        }
        for t in trials["trial_id"]:
            lines = s3_text(client, f"searches/mn/trial_{t}/result.json").splitlines()
            assert {json.loads(ln)["epoch"] for ln in lines} == set(range(1, EPOCHS + 1))
            ckpts = sorted(
                {k.split("/")[3] for k in keys if k.startswith(f"searches/mn/trial_{t}/checkpoint_")}
            )
            assert len(ckpts) == 2, ckpts  # num_to_keep
            assert f"searches/mn/trial_{t}/{ckpts[-1]}/checkpoint.pt" in keys
        for name in ("fer_tune.json", "space.yaml", "optuna.db", "trials.csv", "best_config.yaml"):
            assert f"searches/mn/{name}" in keys, name
        # The readers take the URI as they take a folder.
        for cmd in (
            ["report", f"{uri}/mn", "--out", str(tmp_path / "report")],
            ["export", f"{uri}/mn", "-o", str(tmp_path / "best.yaml")],
        ):
            done = subprocess.run(
                [sys.executable, "-m", "fer_tune.cli", *cmd],
                env=driver_env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-3000:]
        assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "best.yaml").is_file()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        cluster.close()


def test_resume_extend_export_and_retrain_take_an_s3_uri(tmp_path: Path, s3) -> None:
    """One node (fer-tune starts its own Ray), results in the store: interrupted, resumed, extended,
    retrained, each command given the URI."""
    env, client = s3
    data = save_csv(make_fer({"Training": 20, "PublicTest": 6}), tmp_path / "fer2013.csv")
    space = {
        "search": {"num_samples": 3, "scheduler": "none", "seed": 0},
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}, 8], "head_width": 0, "pool_size": 1},
        "train": {"epochs": 12, "batch_size": 16, "warmup_epochs": 0},
        "augment": {"crop": 0, "rotation": 0},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    run_env = {**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled"}
    run_env |= {"FER_TUNE_CACHE": str(tmp_path / "cache")}
    run_env.pop("RAY_ADDRESS", None)
    uri = f"s3://{BUCKET}/one/s"

    def fer_tune(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "fer_tune.cli", *args]
        return subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=timeout)

    def rows() -> pd.DataFrame:
        (tmp_path / "t.csv").write_text(s3_text(client, "one/s/trials.csv"))
        return pd.read_csv(tmp_path / "t.csv")

    args = ["--space", str(tmp_path / "space.yaml"), "--data", str(data), "--gpus", "0", "--cpus", "2"]
    with open(tmp_path / "search.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fer_tune.cli", *args, "--results", f"s3://{BUCKET}/one", "--name", "s"],
            env=run_env,
            stdout=log,
            stderr=log,
        )

    def some_epochs() -> bool:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix="one/s/").get("Contents", [])
        results = [o["Key"] for o in listed if o["Key"].endswith("/result.json")]
        return proc.poll() is None and any(len(s3_text(client, k).splitlines()) >= 3 for k in results)

    wait_until("3 epochs of a trial in the store", some_epochs, 180)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (tmp_path / "search.log").read_text()[-3000:]
    assert f"Continue it with: fer-tune --resume {uri}" in (tmp_path / "search.log").read_text()
    assert set(rows()["stop_reason"]) - {"completed"}  # some trials had not finished

    done = fer_tune("resume", uri)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(rows()) == 3 and (rows()["stop_reason"] == "completed").all()
    done = fer_tune("extend", uri, "--num-samples", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(rows()["phase"]) == [1, 1, 1, 2, 2] and (rows()["stop_reason"] == "completed").all()
    assert fer_tune("export", uri, "-o", str(tmp_path / "best.yaml")).returncode == 0
    done = fer_tune(
        "retrain", f"{uri}/best_config.yaml", "--data", str(data), "--out", str(tmp_path / "final")
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "final" / "metrics.json").is_file()
