"""Snapshot ensembles (`train.snapshots`): validation, the restarting cosine, the snapshot files and their
score, exact resume, the retrain report, and training unchanged without them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import make_fer

from fer_tune.base import ConfigError
from fer_tune.data import FER2013
from fer_tune.training import (
    METRIC_KEYS,
    RunConfig,
    TrainConfig,
    build_schedulers,
    evaluate_ensemble,
    load_model,
    load_models,
    model_files,
    predict_logits,
    retrain,
    train,
)
from fer_tune.training.ensemble import Ensemble, load
from fer_tune.training.fused import check_fusable

pytestmark = pytest.mark.usefixtures("one_thread")

TIMING = ("epoch_seconds", "images_per_second")


def tiny(epochs: int = 6, snapshots: int = 3, **train_keys) -> dict:
    """A 4-kernel cnn, fp32 (the scores must not depend on the CPU's bf16), no augmentation."""
    return {
        "model": {"arch": "cnn", "kernels": [4], "head_width": 0},
        "train": {
            "epochs": epochs,
            "snapshots": snapshots,
            "batch_size": 16,
            "warmup_epochs": 0,
            "precision": "fp32",
            **train_keys,
        },
        "augment": {"crop": 0, "rotation": 0, "hflip": False},
        "seed": 1,
    }


@pytest.fixture(scope="module")
def data() -> FER2013:
    """6 Training, 3 PublicTest and 3 PrivateTest images per class: 2 steps an epoch at batch size 16."""
    return make_fer({"Training": 6, "PublicTest": 3, "PrivateTest": 3})


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    a, b = without_timing(a), without_timing(b)
    assert [list(h) for h in a] == [list(h) for h in b]
    for x, y in zip(a, b, strict=True):
        assert all(same(x[k], y[k]) for k in x), (x, y)


def public_accuracy(model: torch.nn.Module, meta: dict, data: FER2013) -> float:
    part = data.split("PublicTest")
    pred = predict_logits(model, meta, torch.from_numpy(part.images)).argmax(1).numpy()
    return float((pred == part.labels).mean())


# ------------------------------------------------------------------------------------------ the key


@pytest.mark.parametrize(
    ("train_keys", "message"),
    [
        ({"snapshots": 1}, r"^train\.snapshots: must be 0 \(off\) or >= 2, got 1$"),
        ({"snapshots": -2}, r"^train\.snapshots: must be 0 \(off\) or >= 2, got -2$"),
        ({"epochs": 5, "snapshots": 2}, r"^train\.snapshots: must divide train\.epochs=5"),
        ({"schedule": "step"}, r"^train\.snapshots: needs train\.schedule cosine .*got 'step'"),
        ({"schedule": "onecycle"}, r"^train\.snapshots: needs train\.schedule cosine"),
        (
            {"warmup_epochs": 2},
            r"^train\.warmup_epochs: must be below one snapshot cycle \(epochs/snapshots = 2\)",
        ),
        ({"ema": 0.9}, r"^train\.snapshots: cannot be combined with train\.ema"),
    ],
)
def test_bad_snapshot_configs_fail_naming_the_key(train_keys: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        RunConfig.from_dict(tiny(**train_keys))
    assert "\n" not in str(e.value)


def test_the_default_warmup_fits_one_cycle_and_snapshots_off_keep_it() -> None:
    assert TrainConfig(epochs=10, snapshots=10).warmup_epochs == pytest.approx(0.2)  # a fifth of a cycle
    assert TrainConfig(epochs=10, snapshots=2).warmup_epochs == 1.0
    assert TrainConfig(epochs=10).warmup_epochs == 1.0 and TrainConfig(epochs=3).warmup_epochs == 0.6
    assert TrainConfig().snapshots == 0


def test_fused_trials_refuse_snapshots() -> None:
    cfgs = [RunConfig.from_dict(tiny(snapshots=0)), RunConfig.from_dict(tiny())]
    with pytest.raises(ConfigError, match=r"^train\.snapshots: member 1 keeps snapshots"):
        check_fusable(cfgs)


# ------------------------------------------------------------------------------------------ the schedule


def lr_trace(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.lr)
    sched, plateau = build_schedulers(opt, cfg, steps_per_epoch)
    assert plateau is None
    lrs = []
    for _ in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def falling(lrs: list[float]) -> bool:
    return all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))


@pytest.mark.parametrize("warmup", [0.0, 0.5])
def test_the_lr_restarts_at_the_peak_and_anneals_to_near_zero_every_cycle(warmup: float) -> None:
    cfg = TrainConfig(epochs=6, snapshots=3, lr=1.0, warmup_epochs=warmup)
    lrs = lr_trace(cfg, steps_per_epoch=10)  # cycles of 2 epochs = 20 steps
    warm = round(warmup * 10)
    assert lrs[0] == pytest.approx(0.1 if warm else 1.0)  # the warm-up from lr/10, first cycle only
    assert lrs[warm] == pytest.approx(1.0) and falling(lrs[warm:20])
    for start in (20, 40):  # every later cycle: the whole cosine, from the peak
        assert lrs[start] == pytest.approx(1.0)
        assert lrs[start : start + 20] == pytest.approx(
            [(1 + math.cos(math.pi * t / 20)) / 2 for t in range(20)]
        )
    for end in (19, 39, 59):  # the last step of each cycle, after which a snapshot is kept
        assert lrs[end] < 0.015


def test_without_snapshots_the_cosine_is_one_cycle() -> None:
    lrs = lr_trace(TrainConfig(epochs=6, lr=1.0, warmup_epochs=0), steps_per_epoch=4)
    assert lrs[0] == 1.0 and falling(lrs)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x, y = a.state_dict(), b.state_dict()
    return list(x) == list(y) and all(torch.equal(x[k], y[k]) for k in x)


# ------------------------------------------------------------------------------------------ training


def test_snapshot_files_load_and_their_ensemble_is_snapshot_val_acc(
    data: FER2013, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    history = train(tiny(), data, out_dir=tmp_path, progress=True)["history"]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch=")]
    assert len(lines) == len(history) and all("snapshot_val_acc=" in ln for ln in lines)  # `fer-tune train`'s
    files = model_files(tmp_path / "snapshots")
    assert [f.name for f in files] == ["snapshot_1.pt", "snapshot_2.pt", "snapshot_3.pt"]
    for k, file in enumerate(files, 1):
        _, meta = load_model(file)
        assert meta["snapshot"] == {"index": k, "of": 3, "epoch": 2 * k} and meta["epoch"] == 2 * k
        assert_same_history([meta["metrics"]], [history[2 * k - 1]])
    last, _ = load_model(files[-1])
    final, _ = load_model(tmp_path)  # model.pt: the last epoch's weights, the last snapshot
    assert same_weights(last, final)

    scores = [h["snapshot_val_acc"] for h in history]
    assert all(math.isnan(s) for s in scores[:3]) and all(math.isfinite(s) for s in scores[3:])
    assert scores[4] == scores[3]  # between cycle ends the snapshots, and so their score, are the same
    members = load_models(tmp_path / "snapshots")
    meta = members[0][2]
    two = Ensemble([m for _, m, _ in members[:2]]).eval()
    assert public_accuracy(two, meta, data) == scores[3]  # epoch 4 ends cycle 2: snapshots 1-2
    ensemble, meta = load(tmp_path / "snapshots")  # the folder is one model, as predict loads it
    assert meta["members"] == ["snapshot_1", "snapshot_2", "snapshot_3"]
    assert public_accuracy(ensemble, meta, data) == scores[5]
    evaluation = evaluate_ensemble(tmp_path / "snapshots", data, ttas=("none",))  # `fer-tune evaluate DIR`
    assert evaluation["results"]["ensemble"]["none"]["PublicTest"]["accuracy"] == scores[5]

    csv = pd.read_csv(tmp_path / "metrics.csv")
    assert list(csv.columns) == [*METRIC_KEYS, "snapshot_val_acc"]
    assert csv["snapshot_val_acc"].iloc[3:].tolist() == scores[3:]


class Stop(Exception):
    pass


def test_resume_after_one_snapshot_gives_identical_snapshots_and_metrics(
    data: FER2013, tmp_path: Path
) -> None:
    straight = train(tiny(), data, out_dir=tmp_path / "straight")["history"]

    def report_then_die(metrics: dict, folder: Path) -> None:
        if metrics["epoch"] == 3:  # snapshot 1 kept at epoch 2, cycle 2 half done
            shutil.copytree(folder, tmp_path / "ray_checkpoint")  # as Ray would; no out_dir
            raise Stop

    with pytest.raises(Stop):
        train(tiny(), data, report=report_then_die)
    assert len(torch.load(tmp_path / "ray_checkpoint" / "checkpoint.pt")["snapshots"]["weights"]) == 1
    resumed = train(tiny(), data, resume=tmp_path / "ray_checkpoint", out_dir=tmp_path / "resumed")["history"]
    assert_same_history(straight, resumed)
    for k in (1, 2, 3):  # snapshot 1 rebuilt from checkpoint.pt, 2 and 3 trained after the resume
        a, _ = load_model(tmp_path / "straight" / "snapshots" / f"snapshot_{k}.pt")
        b, _ = load_model(tmp_path / "resumed" / "snapshots" / f"snapshot_{k}.pt")
        assert same_weights(a, b), k


def test_snapshots_off_leave_training_as_it_was(data: FER2013, tmp_path: Path) -> None:
    cfg = tiny(epochs=2, snapshots=0)
    del cfg["train"]["snapshots"]
    history = train(cfg, data, out_dir=tmp_path / "default")["history"]
    explicit = train(tiny(epochs=2, snapshots=0), data, out_dir=tmp_path / "off")["history"]
    assert_same_history(history, explicit)
    assert all(list(h) == list(METRIC_KEYS) for h in history)  # no snapshot_val_acc
    assert not (tmp_path / "off" / "snapshots").exists()
    assert "snapshots" not in torch.load(tmp_path / "off" / "checkpoint.pt")
    assert list(pd.read_csv(tmp_path / "off" / "metrics.csv").columns) == list(METRIC_KEYS)


def test_without_publictest_snapshot_val_acc_is_nan(tmp_path: Path) -> None:
    history = train(tiny(epochs=2, snapshots=2), make_fer({"Training": 6}))["history"]
    assert all(math.isnan(h["snapshot_val_acc"]) for h in history)


def test_snapshot_files_sort_by_number(tmp_path: Path) -> None:
    for k in (10, 2, 1):
        (tmp_path / f"snapshot_{k}.pt").touch()
    (tmp_path / "snapshot_x.pt").touch()
    assert [f.name for f in model_files(tmp_path)] == ["snapshot_1.pt", "snapshot_2.pt", "snapshot_10.pt"]


# ------------------------------------------------------------------------------------------ retrain


def test_retrain_reports_each_seeds_snapshot_ensemble(data: FER2013, tmp_path: Path, capsys) -> None:
    config = tmp_path / "best.yaml"
    config.write_text(yaml.safe_dump(tiny(epochs=4, snapshots=2)))
    report = retrain(config, data=data, out_dir=tmp_path / "final", device="cpu")
    scores = report["runs"]["seed_1"]["snapshot_ensemble"]
    assert set(scores) == {"Training", "PublicTest", "PrivateTest"}
    history = pd.read_csv(tmp_path / "final" / "seed_1" / "metrics.csv")
    assert scores["PublicTest"]["accuracy"] == history["snapshot_val_acc"].iloc[-1]
    assert scores["PrivateTest"]["n"] == 21 and 0 <= scores["PrivateTest"]["accuracy"] <= 1
    written = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert written["runs"]["seed_1"]["snapshot_ensemble"] == scores
    assert written["snapshot_summary"]["PrivateTest"]["accuracy"]["mean"] == scores["PrivateTest"]["accuracy"]
    out = capsys.readouterr().out
    assert "snapshot ensembles (mean softmax of each seed's 2 snapshots, tta=none):" in out
