"""The GPU path: device checks, memory caps of packed trials, mixed precision, `--gpus` and `--device`.

On CPU machines (CI) every GPU branch runs through `tests/fake_cuda.py`, a fake `torch.cuda` as strict as the
real one where it matters. Tests marked `gpu` train on a real GPU and are skipped without one.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import make_fer

from fer_tune.base import ConfigError, DeviceError
from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.search import parse_space
from fer_tune.training import Precision, RunConfig, setup_device, train, trial_device
from fer_tune.training import device as fdev
from fer_tune.training.device import MEMORY_SAFETY, memory_cap

TINY = {
    "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0},
    "train": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0, "lr": 0.05},
    "augment": {"crop": 4, "rotation": 5},
    "seed": 3,
}
real_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


# -- the fake is as strict as torch --------------------------------------------------------------------------


def test_torch_itself_refuses_an_unindexed_device() -> None:
    # The bug the fake must catch: torch.cuda.set_per_process_memory_fraction(f, torch.device("cuda")).
    from torch.cuda._utils import _get_device_index

    with pytest.raises(ValueError, match="specified index"):
        _get_device_index(torch.device("cuda"))


@pytest.mark.parametrize(
    ("fraction", "device", "error"),
    [
        (0.25, torch.device("cuda"), ValueError),  # no index
        (0.25, "cuda", ValueError),
        (1.5, torch.device("cuda", 0), ValueError),
        (-0.1, 0, ValueError),
        (1, 0, TypeError),  # torch wants a float
        (0.5, torch.device("cuda", 2), RuntimeError),  # beyond device_count
    ],
)
def test_fake_refuses_what_torch_refuses(fake_cuda, fraction, device, error) -> None:
    fake_cuda(count=2)
    with pytest.raises(error):
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def test_fake_without_devices_refuses_everything(fake_cuda) -> None:
    fake_cuda(count=0)
    assert not torch.cuda.is_available()
    with pytest.raises(RuntimeError):
        torch.cuda.set_per_process_memory_fraction(0.5, 0)


# -- memory caps ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.5, 0.25, 0.125])
def test_packed_trial_caps_memory_on_an_indexed_device_leaving_room(fake_cuda, share: float) -> None:
    fake = fake_cuda(count=2)
    dev, _ = setup_device("cuda", "auto", gpu_share=share)  # "cuda": no index, as a trial asks for it
    assert dev == torch.device("cuda", 0)
    assert fake.fractions == {0: pytest.approx(share * MEMORY_SAFETY)}
    # Every trial packed on one GPU together stays under 100%, with room for each CUDA context.
    assert round(1 / share) * memory_cap(share) <= MEMORY_SAFETY + 1e-9


def test_whole_gpu_trial_and_cpu_set_no_cap(fake_cuda) -> None:
    fake = fake_cuda(count=1)
    setup_device("cuda:0", "auto", gpu_share=1.0)
    setup_device("cuda:0", "auto", gpu_share=None)
    setup_device("cpu", "auto", gpu_share=0.25)
    assert fake.fractions == {}


def test_trial_adapter_asks_for_the_packed_share(fake_cuda, monkeypatch, tiny_data, tmp_path) -> None:
    """fer_trial (the Ray trainable) hands train() its GPU and share; train's set-up caps that GPU."""
    import ray.tune

    from fer_tune.search import trainable as search
    from fer_tune.training import trainer as train_mod

    fake = fake_cuda(count=1)
    monkeypatch.delenv(fdev.TRIAL_DEVICE_ENV, raising=False)
    monkeypatch.setattr(ray.tune, "get_checkpoint", lambda: None)
    trial_dir = SimpleNamespace(get_trial_dir=lambda: str(tmp_path))
    monkeypatch.setattr(ray.tune, "get_context", lambda: trial_dir)
    # Asked of a process outside Ray, this would start one (8 s, in the fast tests).
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "node-1"))
    seen = {}

    def spy(config, data, **kwargs):
        seen.update(kwargs)
        setup_device(kwargs["device"], "auto", kwargs["gpu_fraction"])  # the branch train() runs first

    monkeypatch.setattr(train_mod, "train", spy)
    search.fer_trial(TINY, tiny_data, search.TrialResources(1, 0.25, None))
    assert seen["device"] == torch.device("cuda", 0) and seen["gpu_fraction"] == 0.25
    assert fake.fractions == {0: pytest.approx(0.25 * MEMORY_SAFETY)}


# -- no silent CPU -------------------------------------------------------------------------------------------


def test_trial_given_a_gpu_without_cuda_fails_with_one_line(fake_cuda, monkeypatch) -> None:
    fake_cuda(count=0)
    monkeypatch.delenv(fdev.TRIAL_DEVICE_ENV, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(DeviceError, match=r"given 0.5 GPU \(CUDA_VISIBLE_DEVICES='1'\)") as e:
        trial_device(0.5)
    assert "\n" not in str(e.value)
    assert trial_device(0) == torch.device("cpu")


def test_trial_device_override_is_explicit(fake_cuda, monkeypatch) -> None:
    fake_cuda(count=0)
    monkeypatch.setenv(fdev.TRIAL_DEVICE_ENV, "cpu")
    assert trial_device(1) == torch.device("cpu")


def test_gpus_beyond_what_torch_sees_stop_before_ray_and_data(
    fake_cuda, monkeypatch, tmp_path, capsys
) -> None:
    import ray

    import fer_tune.data.fer2013

    fake_cuda(count=1)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh `fer-tune` process

    def never(*args, **kwargs):
        raise AssertionError("must stop before this")

    monkeypatch.setattr(ray, "init", never)
    monkeypatch.setattr(fer_tune.data.fer2013, "load_fer2013", never)
    argv = ["--space", "smoke", "--data", str(tmp_path), "--gpus", "2", "--results", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "--gpus 2: torch sees 1 CUDA device(s); use --gpus 1" in one_line(capsys)


@pytest.mark.parametrize("command", ["train", "retrain", "evaluate"])
def test_device_cuda_without_cuda_is_one_line(fake_cuda, tmp_path: Path, capsys, command: str) -> None:
    fake_cuda(count=0)
    csv = save_csv(make_fer({"Training": 4, "PublicTest": 2}), tmp_path / "fer2013.csv")
    cfg = tmp_path / "cfg.yaml"
    RunConfig.from_dict(TINY).to_yaml(cfg)
    if command == "evaluate":
        train(TINY, make_fer({"Training": 4, "PublicTest": 2}), out_dir=tmp_path / "run", device="cpu")
        argv = ["evaluate", str(tmp_path / "run"), "--data", str(csv), "--device", "cuda"]
    else:
        argv = [command, str(cfg), "--data", str(csv), "--device", "cuda", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--device cuda: CUDA asked for, but" in one_line(capsys)


def test_more_than_one_gpu_per_trial_is_refused() -> None:
    with pytest.raises(ConfigError, match="resources.gpus_per_trial: a trial trains on one GPU"):
        parse_space({"model": {"arch": "cnn"}}, gpus_per_trial=2.0)
    with pytest.raises(ConfigError, match="divide 1"):
        parse_space({"model": {"arch": "cnn"}, "resources": {"gpus_per_trial": 0.3}})


# -- precision -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "asked", "name", "scaled"),
    [
        ((9, 0), "auto", "bf16", False),  # H100, H200
        ((8, 0), "auto", "bf16", False),  # A100
        ((7, 5), "auto", "fp16", True),  # T4
        ((7, 0), "auto", "fp16", True),  # V100
        ((7, 0), "fp16", "fp16", True),
        ((9, 0), "fp16", "fp16", True),
        ((9, 0), "fp32", "fp32", False),
        ((7, 5), "fp32", "fp32", False),
    ],
)
def test_precision_follows_the_gpu(fake_cuda, capability, asked, name, scaled) -> None:
    fake_cuda(capability=capability)
    amp = Precision.select(asked, torch.device("cuda", 0))
    assert amp.name == name
    assert amp.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[name]
    assert (amp.scaler() is not None) == scaled


def test_bf16_on_a_gpu_without_native_bf16_is_refused(fake_cuda) -> None:
    fake_cuda(capability=(7, 5), name="Tesla T4")
    with pytest.raises(ConfigError, match=r"train.precision: bf16 needs .* \(Tesla T4 is 7.5\)"):
        Precision.select("bf16", torch.device("cuda", 0))


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ({"amx_bf16": True, "avx512_bf16": True}, "bf16"),  # Xeon 4th gen on
        ({"amx_bf16": False, "avx512_bf16": True}, "bf16"),  # AMD Zen 4: bf16 trained 2.1x fp32 (2026-12-02)
        ({"amx_bf16": False, "avx512_bf16": False, "avx512_f": True}, "fp32"),  # emulated bf16 is slower
        ({"avx2": True}, "fp32"),  # the AVX2-only EPYC
    ],
)
def test_cpu_auto_is_bf16_only_with_native_bf16_and_bad_precision_is_a_config_error(
    monkeypatch, caps, expected
) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    assert Precision.select("auto", torch.device("cpu")).name == expected
    assert Precision.select("fp32", torch.device("cpu")).dtype is None
    with pytest.raises(ConfigError, match="train.precision: must be one of"):
        RunConfig.from_dict({**TINY, "train": {"precision": "fp8"}})


@pytest.mark.usefixtures("one_thread")
def test_fp16_with_a_gradient_scaler_trains_and_resumes(tmp_path: Path) -> None:
    """The fp16 branch (autocast + GradScaler) for real, on the CPU's fp16 autocast."""
    data = make_fer({"Training": 12, "PublicTest": 4})
    cfg = {**TINY, "train": {**TINY["train"], "precision": "fp16"}}
    full = train(cfg, data, device="cpu")["history"]
    assert all(math.isfinite(h["train_loss"]) for h in full)

    class Stop(Exception):
        pass

    def report_then_die(metrics: dict, folder: Path) -> None:
        ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert ckpt["scaler"] is not None and ckpt["scaler"]["scale"] > 0
        shutil.copytree(folder, tmp_path / "epoch_1")
        raise Stop

    with pytest.raises(Stop):
        train(cfg, data, device="cpu", report=report_then_die)
    # Resuming restores the scaler with the rest: the same second epoch as the uninterrupted run.
    resumed = train(cfg, data, device="cpu", resume=tmp_path / "epoch_1")["history"]
    assert resumed[-1]["train_loss"] == pytest.approx(full[-1]["train_loss"], rel=1e-6)
    assert resumed[-1]["val_acc"] == full[-1]["val_acc"]


# -- on a real GPU -------------------------------------------------------------------------------------------


@real_gpu
@pytest.mark.parametrize("precision", ["auto", "fp16", "fp32"])
def test_real_gpu_packed_trial_trains(tmp_path: Path, precision: str) -> None:
    data = make_fer({"Training": 64, "PublicTest": 16})
    cfg = {**TINY, "train": {**TINY["train"], "precision": precision}}
    result = train(cfg, data, device="cuda", gpu_fraction=0.25, out_dir=tmp_path)
    assert all(math.isfinite(h["train_loss"]) for h in result["history"])
    get = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get is not None:
        assert get(0) == pytest.approx(0.25 * MEMORY_SAFETY)
    expected = Precision.select(precision, torch.device("cuda", 0)).name
    assert expected == {"auto": "bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16"}.get(
        precision, precision
    )
