"""Shared fixtures: a clean environment, a private parse cache, small synthetic FER2013 (in memory and as a
CSV), the real data when present, one Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_tune.data import FER2013, USAGES, save_csv
from fer_tune.training.device import TRIAL_DEVICE_ENV

SHARED_FER = (Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "fer2013").resolve()

# What a developer's shell may hold that would change what the tests do: `RAY_ADDRESS` (the session's Ray, and
# every `fer-tune` subprocess, would join that cluster), `WANDB_*` (`WANDB_PROJECT` turns logging on, a key
# or a mode changes how), `FER_TUNE_*` (`FER_TUNE_DATA`, the search folder and study database the trials
# use, the trial device). `FER_TUNE_CACHE` is set again below, to the session's own folder. No WANDB_MODE
# is set in their place: a test that logs says how (a global `disabled` once hid a bug).
LEAKY_PREFIXES = ("WANDB_", "FER_TUNE_")
# What tests or fer-tune itself may set in this process, cleared again before each test. Not every WANDB_*
# (wandb keeps its service's address there while this process holds runs).
LEAKY_NAMES = (
    "RAY_ADDRESS",
    *("WANDB_PROJECT", "WANDB_MODE", "WANDB_API_KEY", "WANDB_ENTITY", "WANDB_BASE_URL"),
)

# At import, before any fixture, Ray or subprocess: they all inherit os.environ.
for _name in list(os.environ):
    if _name.startswith(LEAKY_PREFIXES) or _name in LEAKY_NAMES:
        del os.environ[_name]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the parse cache (and Ray usage stats) of the tests away from the user's."""
    os.environ["FER_TUNE_CACHE"] = str(tmp_path_factory.mktemp("fer-tune-cache"))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without those variables, also where an earlier test set one in this process (a
    search run in-process sets `FER_TUNE_STUDY_DB`); the session's `FER_TUNE_CACHE` stays."""
    for name in list(os.environ):
        if (name.startswith("FER_TUNE_") and name != "FER_TUNE_CACHE") or name in LEAKY_NAMES:
            monkeypatch.delenv(name)


def make_fer(n_per_class: dict[str, int], seed: int = 0) -> FER2013:
    """Synthetic FER2013: `n_per_class[usage]` images of each of the 7 classes.

    Each class gets its own mean brightness and a bright bar at a class-specific row, so a small model can
    learn it in a few epochs (tests that check learning need a signal); the rest is noise.
    """
    rng = np.random.default_rng(seed)
    images, labels, usage = [], [], []
    for u, n in n_per_class.items():
        assert u in USAGES
        for c in range(7):
            x = rng.integers(0, 96, size=(n, 48, 48)) + 16 * c
            x[:, 4 + 6 * c : 8 + 6 * c, :] = 255
            images.append(x.clip(0, 255).astype(np.uint8))
            labels.append(np.full(n, c, dtype=np.int64))
            usage.append(np.full(n, u))
    return FER2013(np.concatenate(images), np.concatenate(labels), np.concatenate(usage), "synthetic")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; two threads on busy shared cores were 10x slower (OMP waits)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data() -> FER2013:
    """20 Training and 6 PublicTest images per class (182 in all)."""
    return make_fer({"Training": 20, "PublicTest": 6})


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data (20 Training, 6 PublicTest images per class) as a fer2013.csv, for `--data`."""
    return save_csv(
        make_fer({"Training": 20, "PublicTest": 6}), tmp_path_factory.mktemp("data") / "fer2013.csv"
    )


@pytest.fixture(scope="session")
def shared_fer() -> Path:
    """The real FER2013 image folders beside the checkout (CI has them); skips where absent."""
    if not SHARED_FER.is_dir():
        pytest.skip(f"{SHARED_FER} not present")
    return SHARED_FER


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch):
    """Install a strict fake `torch.cuda` (tests/fake_cuda.py): `fake_cuda(count=2, capability=(7, 5))`."""
    from fake_cuda import FakeCuda

    return lambda **kwargs: FakeCuda(**kwargs).install(monkeypatch)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the whole test session: 2 CPUs and 2 logical GPUs (GPU scheduling without a GPU).

    Trials given a logical GPU train on the CPU because the cluster says so explicitly
    (`FER_TUNE_TRIAL_DEVICE=cpu`); without it they would fail, as on a real machine whose CUDA is broken.
    """
    ray = pytest.importorskip("ray")
    ray.init(
        address="local",  # a new local Ray, never a cluster named by RAY_ADDRESS
        num_cpus=2,
        num_gpus=2,
        runtime_env={"env_vars": {TRIAL_DEVICE_ENV: "cpu"}},
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def one_line(capsys: pytest.CaptureFixture) -> str:
    """What a refused command printed on stderr, asserted to be one line."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a refused command must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
