"""The trainable: files and metrics, exact resume, augmentations, schedules, optimizers, failures, CLI."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_fer

from fer_tune.base import ConfigError, DataError, OutputError
from fer_tune.cli import main
from fer_tune.data import EMOTIONS, FER2013, load_fer2013
from fer_tune.models import build_model, list_models
from fer_tune.training import (
    METRIC_KEYS,
    AugmentConfig,
    RunConfig,
    TrainConfig,
    augment,
    build_optimizer,
    build_schedulers,
    load_model,
    train,
)
from fer_tune.training.device import Precision, cpu_has_native_bf16
from fer_tune.training.splits import pixel_stats, stratified_subset

TINY_MODEL = {"arch": "cnn", "kernels": [8, 16], "head_width": 0}
ALL_AUG = {
    "hflip": True,
    "rotation": 15,
    "crop": 4,
    "scale": 0.1,
    "erasing": 0.5,
    "mixup": 0.2,
    "cutmix": 1.0,
}
NO_AUG = {"hflip": False, "rotation": 0, "crop": 0, "scale": 0, "erasing": 0, "mixup": 0, "cutmix": 0}
TIMING = ("epoch_seconds", "images_per_second")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(epochs: int = 1, train: dict | None = None, aug: dict | None = None) -> dict:
    return {
        "model": TINY_MODEL,
        "train": {"epochs": epochs, "batch_size": 32, "warmup_epochs": 0, **(train or {})},
        "augment": aug if aug is not None else ALL_AUG,
        "seed": 1,
    }


@pytest.fixture(scope="module")
def real_slice(shared_fer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 real images per class of Training and PublicTest, copied into a fresh image folder."""
    root = tmp_path_factory.mktemp("fer-slice")
    for split in ("train", "test"):
        for cls in EMOTIONS:
            (root / split / cls).mkdir(parents=True)
            for png in sorted((shared_fer / split / cls).glob("*.png"))[:6]:
                shutil.copy(png, root / split / cls / png.name)
    return root


def test_one_epoch_on_real_data_writes_everything(real_slice: Path, tmp_path: Path) -> None:
    data = load_fer2013(real_slice)
    result = train(tiny(1, aug={**ALL_AUG, "crop": 40}), data, out_dir=tmp_path)
    assert [h["epoch"] for h in result["history"]] == [1]
    metrics = result["history"][0]
    assert set(METRIC_KEYS) <= set(metrics)
    assert all(math.isfinite(metrics[k]) for k in METRIC_KEYS)
    assert result["val_held_out"] and result["best_epoch"] == 1
    for name in ("config.yaml", "metrics.csv", "model.pt", "checkpoint.pt"):
        assert (tmp_path / name).is_file(), name
    assert RunConfig.from_yaml(tmp_path / "config.yaml").augment.crop == 40
    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert list(csv.columns) == list(METRIC_KEYS) and len(csv) == 1
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "scheduler", "rng", "history", "mean", "std"} <= set(
        ckpt
    )
    model, meta = load_model(tmp_path)  # weights_only=True inside
    assert meta["input_size"] == 40 and meta["arch"] == "cnn" and meta["epoch"] == 1
    assert meta["mean"] == pytest.approx(float(data.split("Training").images.mean()))
    assert model(torch.zeros(2, 1, 40, 40)).shape == (2, 7)


class Stop(Exception):
    pass


@pytest.mark.parametrize("schedule", ["cosine", "plateau", "onecycle"])
def test_resume_equals_uninterrupted_run(tiny_data: FER2013, tmp_path: Path, schedule: str) -> None:
    cfg = tiny(2, train={"schedule": schedule, "warmup_epochs": 0.5, "batch_size": 16})
    straight = train(cfg, tiny_data)["history"]

    def report_then_die(metrics: dict, folder: Path) -> None:
        shutil.copytree(folder, tmp_path / f"ray_checkpoint_{metrics['epoch']}")  # as Ray would
        raise Stop

    with pytest.raises(Stop):
        train(cfg, tiny_data, report=report_then_die)
    reports = []
    resumed = train(
        cfg, tiny_data, resume=tmp_path / "ray_checkpoint_1", report=lambda m, d: reports.append(m)
    )
    assert [m["epoch"] for m in reports] == [2]
    history = resumed["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    for a, b in zip(straight, history, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING} == {
            k: v for k, v in b.items() if k not in TIMING
        }


def test_a_checkpoint_from_before_new_config_keys_still_resumes(tiny_data: FER2013, tmp_path: Path) -> None:
    """Keys added to the run config since a checkpoint was written take their defaults, not a refusal."""
    cfg = tiny(2)

    def report_then_die(metrics: dict, folder: Path) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(cfg, tiny_data, out_dir=tmp_path, report=report_then_die)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for key in ("teacher", "distill_alpha", "distill_temperature"):  # added after 2026-11-30's checkpoints
        del ckpt["config"]["train"][key]
    torch.save(ckpt, tmp_path / "checkpoint.pt")
    assert [h["epoch"] for h in train(cfg, tiny_data, resume=tmp_path)["history"]] == [1, 2]


def test_resume_with_another_config_names_the_key(tiny_data: FER2013, tmp_path: Path) -> None:
    train(tiny(1), tiny_data, out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^train\.lr: differs"):
        train(tiny(1, train={"lr": 0.01}), tiny_data, resume=tmp_path)


def batch(n: int = 16) -> torch.Tensor:
    return augment.normalize(torch.from_numpy(make_fer({"Training": 3}).images[:n]), 100.0, 60.0)


ONE_ON = {
    "hflip": {"hflip": True},
    "rotation": {"rotation": 20.0},
    "scale": {"scale": 0.2},
    "shift": {"crop": 4},
    "translate": {"shift": 0.2},
    "aspect": {"aspect": 1.5},
    "crop": {"crop": 40},
    "erasing": {"erasing": 1.0},
    "mixup": {"mixup": 1.0},
    "cutmix": {"cutmix": 1.0},
}


@pytest.mark.parametrize("name", list(ONE_ON))
def test_each_augmentation_changes_images_and_keeps_the_batch(name: str) -> None:
    torch.manual_seed(0)
    x, y = batch(), torch.arange(16) % 7
    cfg = AugmentConfig(**{**NO_AUG, **ONE_ON[name]})
    out, y_a, y_b, lam = augment.augment_batch(x, y, cfg)
    side = cfg.input_size
    assert out.shape == (16, 1, side, side) and out.dtype == x.dtype and out.device == x.device
    assert torch.isfinite(out).all()
    changed = (out != augment.center_crop(x, side)).flatten(1).any(1)
    assert changed.sum() >= 4, f"{name} changed only {int(changed.sum())} of 16 images"
    assert torch.equal(y_a, y)
    if name in ("mixup", "cutmix"):
        assert 0 <= lam <= 1 and sorted(y_b.tolist()) == sorted(y.tolist())
    else:
        assert lam == 1.0 and torch.equal(y_b, y)


def test_views_augment_each_copy_on_its_own_and_repeat_the_labels() -> None:
    torch.manual_seed(0)
    x, y = batch(), torch.arange(16) % 7
    cfg = AugmentConfig(**{**NO_AUG, "hflip": True, "rotation": 10, "shift": 0.2, "crop": 40, "views": 3})
    out, y_a, y_b, lam = augment.augment_batch(x, y, cfg)
    assert out.shape == (48, 1, 40, 40) and torch.equal(y_a, y.repeat(3)) and torch.equal(y_b, y_a)
    copies = out.view(3, 16, -1)  # copy v of image i is row v * 16 + i
    assert (copies[0] != copies[1]).any(1).all() and (copies[1] != copies[2]).any(1).all()


def test_translation_moves_the_content_by_up_to_its_fraction_of_the_side() -> None:
    x = torch.zeros(64, 1, 48, 48)
    x[..., 20:28, 20:28] = 1.0  # a bright square, centred
    torch.manual_seed(0)
    out = augment.random_affine(x, 0, 0, shift=0.2)
    rows = torch.arange(48.0)
    mass = out[:, 0].clamp(min=0)
    centre_y = (mass.sum(2) * rows).sum(1) / mass.sum((1, 2))  # (B,) the square's centre, px
    centre_x = (mass.sum(1) * rows).sum(1) / mass.sum((1, 2))
    moved = torch.stack([centre_y, centre_x]) - 23.5
    assert moved.abs().max() <= 0.2 * 48 + 0.5  # +-9.6 px at most
    assert moved.abs().max() > 0.1 * 48  # and the range is used


def test_augmentations_off_are_identity_and_shifts_are_reflect_padded() -> None:
    x, y = batch(), torch.arange(16) % 7
    out, y_a, y_b, lam = augment.augment_batch(x, y, AugmentConfig(**NO_AUG))
    assert out is x and lam == 1.0
    assert augment.random_affine(x, 0, 0) is x and augment.random_erasing(x, 0) is x
    assert augment.random_affine(x, 0, 0, shift=0.0, aspect=1.0) is x
    assert torch.equal(augment.random_crop(x, 48), x)
    # A shifted image is a window of the reflect-padded one.
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="reflect")
    shifted = augment.random_crop(x, 48, pad=4)
    windows = padded.unfold(2, 48, 1).unfold(3, 48, 1)  # (B, 1, 9, 9, 48, 48)
    hits = (windows == shifted[:, :, None, None]).flatten(-2).all(-1)
    assert hits.flatten(1).any(1).all()


def test_read_only_arrays_train_without_warnings(tiny_data: FER2013) -> None:
    arrays = [a.copy() for a in (tiny_data.images, tiny_data.labels, tiny_data.usage)]
    for a in arrays:
        a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = train(tiny(1), FER2013(*arrays, "read-only"))
    assert result["history"][0]["epoch"] == 1


def test_lr_schedules_follow_their_definitions() -> None:
    model = torch.nn.Linear(2, 2)

    def trace(**kw) -> list[float]:
        cfg = TrainConfig(
            **{"epochs": 4, "lr": 1.0, "warmup_epochs": 1.0, "step_size": 2, "gamma": 0.5, **kw}
        )
        opt = build_optimizer(model, cfg)
        sched, plateau = build_schedulers(opt, cfg, steps_per_epoch=10)
        lrs = []
        for _ in range(40):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched is not None:
                sched.step()
        return lrs

    for schedule in ("constant", "cosine", "step", "plateau"):  # linear warm-up from lr/10 over 10 steps
        lrs = trace(schedule=schedule)
        assert lrs[0] == pytest.approx(0.1) and lrs[10] == pytest.approx(1.0), schedule
        assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True)), schedule
    assert trace(schedule="constant")[10:] == pytest.approx([1.0] * 30)
    assert trace(schedule="plateau")[10:] == pytest.approx([1.0] * 30)  # it decays per epoch, on val_loss
    step = trace(schedule="step")  # step_size epochs counted after the warm-up
    assert step[29] == pytest.approx(1.0) and step[30] == pytest.approx(0.5)
    cosine = trace(schedule="cosine")
    assert cosine[25] == pytest.approx(0.5, abs=0.01) and cosine[-1] < 0.01
    onecycle = trace(schedule="onecycle")
    assert max(onecycle) == pytest.approx(1.0) and onecycle[0] < 0.1 and onecycle[-1] < 1e-3


@pytest.mark.parametrize(
    "train_cfg",
    [
        {"optimizer": "sgd", "schedule": "step", "step_size": 1, "grad_clip": 1.0},
        {"optimizer": "adam", "lr": 1e-3, "schedule": "plateau", "patience": 0, "label_smoothing": 0.1},
        {"optimizer": "adamw", "lr": 1e-3, "schedule": "onecycle", "subset": 70},
        {"optimizer": "sgd", "schedule": "constant", "nesterov": False, "momentum": 0.0},
    ],
)
def test_optimizers_and_schedules_train(tiny_data: FER2013, train_cfg: dict) -> None:
    history = train(tiny(2, train=train_cfg), tiny_data)["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) and h["lr"] > 0 for h in history)


@pytest.mark.parametrize("split", ["PublicTest", "none"])
def test_plateau_steps_on_the_metric_it_names(
    tiny_data: FER2013, monkeypatch: pytest.MonkeyPatch, split: str
) -> None:
    """`plateau_metric: val_acc` decays when PublicTest's accuracy stops rising (train_acc without it)."""
    seen = []
    step = torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def record(self, metrics, *args, **kwargs):
        seen.append((self.mode, float(metrics)))
        return step(self, metrics, *args, **kwargs)

    monkeypatch.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", record)
    data = tiny_data if split == "PublicTest" else tiny_data.split("Training")
    for metric in ("val_acc", "val_loss"):
        seen.clear()
        history = train(tiny(2, train={"schedule": "plateau", "plateau_metric": metric}), data)["history"]
        name = metric if split == "PublicTest" else metric.replace("val_", "train_")
        assert seen == [("max" if metric == "val_acc" else "min", h[name]) for h in history]


def test_views_count_every_copy_as_an_image(tiny_data: FER2013) -> None:
    """A step trains on batch_size x views images: train_acc and images_per_second count the copies."""
    from fer_tune.training.device import Precision
    from fer_tune.training.trainer import train_one_epoch

    cfg = RunConfig.from_dict(tiny(1, train={"batch_size": 16}, aug={**NO_AUG, "views": 3}))
    model = build_model(cfg.model)
    opt = build_optimizer(model, cfg.train)
    images, labels = torch.from_numpy(tiny_data.images[:40]), torch.from_numpy(tiny_data.labels[:40])
    amp = Precision.select("fp32", torch.device("cpu"))
    stats = train_one_epoch(model, opt, None, images, labels, cfg, (100.0, 60.0), 1, amp)
    assert stats["images"] == 2 * 16 * 3  # two full batches of 16, three copies each
    assert 0 <= stats["train_acc"] <= 1 and math.isfinite(stats["train_loss"])


@pytest.mark.parametrize(
    ("group", "key", "value", "words"),
    [
        ("augment", "shift", 0.6, "augment.shift: must be in [0, 0.5], got 0.6"),
        ("augment", "aspect", 0.75, "augment.aspect: must be in [1, 2], got 0.75"),
        ("augment", "views", 0, "augment.views: must be in 1..16, got 0"),
        ("augment", "views", 2.5, "augment.views: expected"),
        ("train", "plateau_metric", "val_f1", "train.plateau_metric: must be one of ('val_loss', 'val_acc')"),
    ],
)
def test_new_keys_refuse_bad_values_naming_the_key(group: str, key: str, value, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": TINY_MODEL, group: {key: value}})
    assert str(e.value).startswith(words) and "\n" not in str(e.value)


def test_stratified_subset_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(7), [400, 40, 400, 700, 480, 320, 500])
    keep = stratified_subset(labels, 284, seed=0)
    assert len(keep) == 284 and len(set(keep.tolist())) == 284
    counts = np.bincount(labels[keep], minlength=7)
    assert counts.tolist() == [40, 4, 40, 70, 48, 32, 50]
    assert (np.bincount(labels[stratified_subset(labels, 7, seed=0)]) == 1).all()


def test_training_on_public_test_is_flagged_and_missing_val_is_nan(tiny_data: FER2013) -> None:
    with pytest.warns(UserWarning, match="not held out"):
        result = train(tiny(1, train={"train_on": "Training+PublicTest"}), tiny_data)
    assert result["val_held_out"] is False and math.isfinite(result["history"][0]["val_acc"])
    result = train(tiny(1, train={"schedule": "plateau"}), tiny_data.split("Training"))
    assert math.isnan(result["history"][0]["val_acc"]) and result["best_epoch"] is None


def test_data_without_the_training_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no Training images to train on"):
        train(tiny(1), make_fer({"PrivateTest": 2}))


def test_non_finite_loss_raises_promptly(tiny_data: FER2013) -> None:
    with pytest.raises(FloatingPointError, match=r"non-finite loss at epoch 1, step \d"):
        train(tiny(3, train={"lr": 1e30, "batch_size": 16}, aug=NO_AUG), tiny_data)


def test_cli_train_bad_config_is_one_line_naming_the_key(
    tiny_data: FER2013, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": {"optimizer": "rmsprop"}}))
    assert main(["train", str(path), "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.optimizer" in err and str(path) in err


def test_cli_train_writes_a_model(tiny_data: FER2013, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fer_tune.data import save_image_folder

    data_dir = save_image_folder(tiny_data, tmp_path / "data")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny(3)))
    assert (
        main(["train", str(cfg), "--data", str(data_dir), "--out", str(tmp_path / "run"), "--epochs", "2"])
        == 0
    )
    _, meta = load_model(tmp_path / "run" / "model.pt")
    assert meta["epoch"] == 2 and meta["config"]["train"]["epochs"] == 2
    assert "val_acc=" in capsys.readouterr().out  # the per-epoch summary (the bar goes to stderr)


def test_pixel_stats_match_numpy():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 48, 48), dtype=np.uint8)
    mean, std = pixel_stats(x)
    assert mean == pytest.approx(float(x.mean()), rel=1e-12)
    assert std == pytest.approx(float(x.std()), rel=1e-9)
    assert pixel_stats(np.full((2, 48, 48), 7, np.uint8)) == (7.0, 1.0)  # flat images: no division by zero


@pytest.mark.parametrize("arch", list_models())
def test_every_parameter_is_in_exactly_one_weight_decay_group(arch: str) -> None:
    model = build_model({"arch": arch, **({"pool": "cls"} if arch == "attention" else {})})
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1))
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for name, p in model.named_parameters():
        # Norm weights and biases (1-D) never decay; conv and linear weights do.
        assert (id(p) in no_decay) == (p.ndim <= 1 or name in {"pos", "cls"}), name
    if arch == "attention":  # the position embedding (4-D) and the class token (3-D) are not shrunk to 0
        assert id(model.pos) in no_decay and id(model.cls) in no_decay


def test_no_weight_decay_naming_a_missing_parameter_fails() -> None:
    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = torch.nn.Parameter(torch.zeros(1, 4, 3, 3))

        def no_weight_decay(self) -> set[str]:
            return {"pos", "postion"}

    with pytest.raises(ValueError, match="postion"):
        build_optimizer(torch.nn.Sequential(Tokens()), TrainConfig())


@pytest.mark.parametrize("cut", [0, 0.5])
def test_resume_from_a_truncated_checkpoint_names_the_file(
    tiny_data: FER2013, tmp_path: Path, cut: float
) -> None:
    cfg = tiny(2, aug=NO_AUG)
    train(tiny(1, aug=NO_AUG), tiny_data, out_dir=tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: int(cut * ckpt.stat().st_size)])
    with pytest.raises(DataError, match=rf"^{tmp_path / 'checkpoint.pt'}: .*truncated or corrupt"):
        train(cfg, tiny_data, resume=tmp_path)


def test_resume_from_a_checkpoint_without_its_config_names_the_file(
    tiny_data: FER2013, tmp_path: Path
) -> None:
    train(tiny(1, aug=NO_AUG), tiny_data, out_dir=tmp_path)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    torch.save(ckpt["model"], tmp_path / "bare.pt")  # a bare state_dict
    with pytest.raises(DataError, match=rf"^{tmp_path / 'bare.pt'}: not a fer-tune checkpoint: no `config`"):
        train(tiny(2, aug=NO_AUG), tiny_data, resume=tmp_path / "bare.pt")


def test_disk_full_mid_run_is_one_error_and_keeps_the_last_checkpoint(
    tiny_data: FER2013, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    save, calls = torch.save, []

    def save_until_full(obj: object, f: object) -> None:
        calls.append(f)
        if len(calls) == 3:  # epoch 2's checkpoint.pt
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f)

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(OutputError, match=rf"^{tmp_path / 'checkpoint.pt'}: cannot write: No space left"):
        train(tiny(2, aug=NO_AUG), tiny_data, out_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1  # epoch 1's, whole
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_one_epoch_onecycle_run_ignores_the_warmup_it_does_not_use() -> None:
    """`fer-tune train configs/cpu_small.yaml --epochs 1`: onecycle warms up by itself."""
    assert RunConfig.from_dict({"model": TINY_MODEL, "train": {"epochs": 1, "schedule": "onecycle"}})
    # cosine warms up: its default warm-up fits one epoch, a warm-up as long as the run does not
    assert RunConfig.from_dict({"model": TINY_MODEL, "train": {"epochs": 1, "schedule": "cosine"}})
    with pytest.raises(ConfigError, match="train.warmup_epochs: must be in"):
        RunConfig.from_dict(
            {"model": TINY_MODEL, "train": {"epochs": 1, "schedule": "cosine", "warmup_epochs": 1.0}}
        )


@pytest.mark.parametrize(
    ("isa", "native"),
    [
        ("AVX2", False),
        ("avx512_core_vnni", False),
        ("AVX512_CORE_BF16", None),
        ("AVX512_CORE_AMX", None),
        ("", None),
    ],
)
def test_a_onednn_isa_cap_below_bf16_makes_auto_fp32(
    monkeypatch: pytest.MonkeyPatch, isa: str, native: bool | None
) -> None:
    # Under such a cap oneDNN emulates bf16 (37 images/s against fp32's 547 for the cpu space's VGG): auto
    # must not pick it. At or above the bf16 ISAs (or uncapped) the CPU's own capabilities decide.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    caps = torch.cpu.get_capabilities()
    expected = bool(caps.get("amx_bf16") or caps.get("avx512_bf16")) if native is None else native
    assert cpu_has_native_bf16() is expected
    assert Precision.select("auto", torch.device("cpu")).name == ("bf16" if expected else "fp32")
