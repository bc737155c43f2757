"""Training levers `train.ema` and `train.sam`: their config checks, that the moving average leaves training
alone and is what the run saves, SAM's step, exact resume of both, and that fused trials refuse them."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_fer
from test_models import EXTREMES

from fer_tune.base import ConfigError
from fer_tune.data import FER2013
from fer_tune.models import build_model, list_models
from fer_tune.training import METRIC_KEYS, RunConfig, load_model, train
from fer_tune.training.fused import check_fusable
from fer_tune.training.optim import optimizer_step
from fer_tune.training.sam import sam_second_pass

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("epoch_seconds", "images_per_second")
AUG = {"hflip": True, "rotation": 10, "crop": 0, "erasing": 0.5}  # draws random numbers every batch


@pytest.fixture(scope="module")
def data() -> FER2013:
    """10 Training and 3 PublicTest images per class: 4 steps of 16 an epoch."""
    return make_fer({"Training": 10, "PublicTest": 3})


def run_config(arch: str = "cnn", epochs: int = 2, train: dict | None = None, aug: dict | None = None):
    model = {"arch": arch, **EXTREMES[arch]["small"]}  # each family's smallest, milliseconds a step
    t = {"epochs": epochs, "batch_size": 16, "warmup_epochs": 0, "precision": "fp32", **(train or {})}
    return {"model": model, "train": t, "augment": {**AUG, **(aug or {})}, "seed": 3}


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Stop(Exception):
    pass


def resumed_after_epoch_1(cfg: dict, data: FER2013, tmp_path: Path) -> dict:
    """The run stopped after its first epoch's checkpoint (a killed Ray trial), resumed into tmp_path."""

    def report_then_die(metrics: dict, folder: Path) -> None:
        shutil.copytree(folder, tmp_path / "ray_checkpoint")  # as Ray would
        raise Stop

    with pytest.raises(Stop):
        train(cfg, data, report=report_then_die)
    return train(cfg, data, resume=tmp_path / "ray_checkpoint", out_dir=tmp_path / "resumed")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("ema", -0.1, "train.ema: must be in [0, 1), got -0.1"),
        ("ema", 1.0, "train.ema: must be in [0, 1), got 1.0"),
        ("ema", "high", "train.ema: expected"),
        ("sam", -0.05, "train.sam: must be in [0, 2], got -0.05"),
        ("sam", 3.0, "train.sam: must be in [0, 2], got 3.0"),
    ],
)
def test_bad_values_name_the_key(key: str, value, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {key: value}})
    assert str(e.value).startswith(words) and "\n" not in str(e.value)


def test_levers_off_by_default_add_no_metric_and_no_state(data: FER2013, tmp_path: Path) -> None:
    cfg = RunConfig.from_dict(run_config())
    assert cfg.train.ema == 0.0 and cfg.train.sam == 0.0
    result = train(cfg, data, out_dir=tmp_path)
    assert all(list(h) == list(METRIC_KEYS) for h in result["history"])
    assert list(pd.read_csv(tmp_path / "metrics.csv").columns) == list(METRIC_KEYS)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt.get("ema") is None
    assert_same_state(torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"], ckpt["model"])


@pytest.mark.parametrize("arch", list_models())
def test_ema_leaves_training_bit_identical_and_is_the_saved_model(
    arch: str, data: FER2013, tmp_path: Path
) -> None:
    off = train(run_config(arch), data, out_dir=tmp_path / "off")["history"]
    on = train(run_config(arch, train={"ema": 0.9}), data, out_dir=tmp_path / "on")["history"]
    # The live weights trained exactly as without the average: same losses, rates, PublicTest accuracy...
    for a, b in zip(off, on, strict=True):
        assert b["live_val_acc"] == a["val_acc"]
        assert (b["train_loss"], b["train_acc"], b["lr"]) == (a["train_loss"], a["train_acc"], a["lr"])
    live_off = torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)
    ckpt = torch.load(tmp_path / "on" / "checkpoint.pt", weights_only=True)
    assert_same_state(ckpt["model"], live_off["model"])  # ...and the same weights and optimiser state
    assert_same_state(ckpt["optimizer"]["state"][0], live_off["optimizer"]["state"][0])
    # model.pt holds the average (what evaluate, predict, export and ensembles load), not the live weights.
    saved = torch.load(tmp_path / "on" / "model.pt", weights_only=True)["state_dict"]
    averaged = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k != "n_averaged"}
    assert_same_state(saved, averaged)
    assert int(ckpt["ema"]["n_averaged"]) == 2 * 4  # one update per step: 2 epochs of 4 steps
    assert any(not torch.equal(saved[k], ckpt["model"][k]) for k in saved if saved[k].is_floating_point())
    model, meta = load_model(tmp_path / "on", device="cpu")
    assert_same_state(model.state_dict(), saved)
    assert meta["metrics"]["live_val_acc"] == on[-1]["live_val_acc"]
    csv = pd.read_csv(tmp_path / "on" / "metrics.csv")
    assert list(csv.columns) == [*METRIC_KEYS, "live_val_acc"] and len(csv) == 2


def test_the_plateau_schedule_steps_on_the_trained_weights_with_ema(
    data: FER2013, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The average is scored, but the learning rate follows the trained weights: training stays the same."""
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    seen: list[float] = []  # what the schedule stepped on, epoch by epoch
    step = plateau.step

    def recording_step(self, metrics, *args, **kwargs):
        seen.append(float(metrics))
        return step(self, metrics, *args, **kwargs)

    monkeypatch.setattr(plateau, "step", recording_step)
    keys = {"schedule": "plateau", "patience": 0}
    off = train(run_config(train=keys), data)["history"]
    stepped_off, seen[:] = list(seen), []
    on = train(run_config(train={**keys, "ema": 0.9}), data)["history"]
    assert seen == stepped_off == [h["val_loss"] for h in off]
    assert [h["val_loss"] for h in on] != stepped_off  # the average's loss, which the schedule did not use


def test_ema_scores_are_the_averaged_weights(data: FER2013, tmp_path: Path) -> None:
    """val_acc is of model.pt's (averaged) weights: scoring the saved model again gives the same."""
    from fer_tune.training.trainer import evaluate_split

    last = train(run_config(epochs=1, train={"ema": 0.5}), data, out_dir=tmp_path)["history"][-1]
    model, meta = load_model(tmp_path, device="cpu")
    val = data.split("PublicTest")
    x, y = torch.from_numpy(val.images), torch.from_numpy(val.labels)
    scored = evaluate_split(model, x, y, (meta["mean"], meta["std"]), meta["input_size"])
    assert scored["accuracy"] == last["val_acc"] and scored["loss"] == pytest.approx(last["val_loss"])


def test_ema_without_public_test_reports_nan_live_accuracy() -> None:
    history = train(run_config(epochs=1, train={"ema": 0.9}), make_fer({"Training": 10}))["history"]
    assert math.isnan(history[0]["live_val_acc"]) and math.isnan(history[0]["val_acc"])


@pytest.mark.parametrize("train_keys", [{"ema": 0.9}, {"sam": 0.1}, {"ema": 0.8, "sam": 0.1}])
def test_resume_equals_the_uninterrupted_run(train_keys: dict, data: FER2013, tmp_path: Path) -> None:
    cfg = run_config(train={**train_keys, "schedule": "cosine"})
    straight = train(cfg, data, out_dir=tmp_path / "straight")["history"]
    resumed = resumed_after_epoch_1(cfg, data, tmp_path)["history"]
    assert without_timing(resumed) == without_timing(straight)
    for name in ("model.pt", "checkpoint.pt"):
        a = torch.load(tmp_path / "straight" / name, weights_only=True)
        b = torch.load(tmp_path / "resumed" / name, weights_only=True)
        for key in ("state_dict", "model", "ema"):
            if a.get(key) is not None:
                assert_same_state(a[key], b[key])


@pytest.mark.parametrize("arch", list_models())
def test_sam_trains_finite_and_differs_from_plain_steps(arch: str, data: FER2013) -> None:
    plain = train(run_config(arch), data)["history"]
    sam = train(run_config(arch, train={"sam": 0.5}), data)["history"]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in sam)
    # The first forward of every step is unperturbed; only what the weights became differs.
    assert sam[-1]["train_loss"] != plain[-1]["train_loss"]


@pytest.mark.parametrize(
    ("train_keys", "aug"),
    [
        ({"sam": 0.05, "grad_clip": 0.5}, {"mixup": 0.2}),
        ({"sam": 0.05, "grad_clip": 1.0, "label_smoothing": 0.1, "loss": "focal"}, {"cutmix": 1.0}),
        ({"sam": 0.05, "optimizer": "adamw", "schedule": "onecycle"}, {"views": 2}),
    ],
)
def test_sam_with_mixing_clipping_and_other_keys_trains(train_keys: dict, aug: dict, data: FER2013) -> None:
    history = train(run_config(train=train_keys, aug=aug), data)["history"]
    assert all(math.isfinite(h["train_loss"]) for h in history)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_sam_and_ema_train_in_half_precision(precision: str, data: FER2013) -> None:
    """fp16 (what `precision: auto` gives on older GPUs) goes through the gradient scaler; on CPU here."""
    keys = {"precision": precision, "sam": 0.05, "ema": 0.9, "grad_clip": 1.0}
    history = train(run_config(train=keys), data, device="cpu")["history"]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)


def test_sam_with_a_teacher_trains(data: FER2013, tmp_path: Path) -> None:
    train(run_config(epochs=1), data, out_dir=tmp_path / "teacher")
    cfg = run_config(epochs=1, train={"sam": 0.1, "teacher": str(tmp_path / "teacher"), "distill_alpha": 0.5})
    assert math.isfinite(train(cfg, data)["history"][0]["train_loss"])


def _tiny_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(x), y)


def test_sam_gradient_is_taken_at_the_perturbed_weights_and_nothing_else_changes() -> None:
    torch.manual_seed(0)
    model = build_model({"arch": "cnn", **EXTREMES["cnn"]["small"], "batchnorm": True}).train()
    x, y = torch.randn(8, 1, 48, 48), torch.randint(0, 7, (8,))
    rho = 0.3
    _tiny_step(model, x, y).backward()
    weights = {k: v.clone() for k, v in model.state_dict().items()}  # with the first pass's running stats
    g = {n: p.grad.clone() for n, p in model.named_parameters()}
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g.values()]))
    sam_second_pass(model, rho, lambda: _tiny_step(model, x, y))
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert_same_state(model.state_dict(), weights)  # weights and running statistics restored exactly
    # The reference: the gradient at w + rho * g / ||g||, computed by hand on a copy.
    ref = build_model({"arch": "cnn", **EXTREMES["cnn"]["small"], "batchnorm": True}).train()
    ref.load_state_dict(weights)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.add_(g[n] * (rho / (norm + 1e-12)))
    _tiny_step(ref, x, y).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-6)
        assert not torch.equal(got[n], g[n])


def test_sam_skips_the_step_through_the_scaler_when_the_first_gradient_overflowed() -> None:
    """fp16: an overflow in the first (scaled) gradient leaves the weights alone and lowers the scale, as a
    plain fp16 step does; a finite one steps."""
    torch.manual_seed(0)
    model = build_model({"arch": "cnn", **EXTREMES["cnn"]["small"]}).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    x, y = torch.randn(4, 1, 48, 48), torch.randint(0, 7, (4,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler.scale(_tiny_step(model, x, y)).backward()
    next(model.parameters()).grad.view(-1)[0] = math.inf  # what an fp16 overflow leaves
    sam_second_pass(model, 0.05, lambda: _tiny_step(model, x, y), scaler)
    assert_same_state(model.state_dict(), before)  # no perturbation was applied, nothing left changed
    optimizer_step(model, opt, 1.0, scaler)
    assert_same_state(model.state_dict(), before)
    assert scaler.get_scale() == 2.0**7
    opt.zero_grad(set_to_none=True)
    scaler.scale(_tiny_step(model, x, y)).backward()  # a finite step goes through
    sam_second_pass(model, 0.05, lambda: _tiny_step(model, x, y), scaler)
    optimizer_step(model, opt, 1.0, scaler)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("key", ["ema", "sam"])
def test_fused_trials_refuse_the_levers(key: str) -> None:
    plain = RunConfig.from_dict(run_config())
    lever = RunConfig.from_dict(run_config(train={key: 0.5}))
    check_fusable([plain, plain])
    with pytest.raises(ConfigError, match=rf"^train\.{key}: member 1 uses it; fused members cannot"):
        check_fusable([plain, lever])
