"""benchmarks/bench_levers.py without training on FER2013: each arm's config, the table's baseline and
paired differences from synthetic records, and a real two-epoch run on tiny data that a rerun keeps."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from fer_tune.data import FER2013
from fer_tune.training import RunConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import bench_levers
finally:
    sys.path.pop(0)

RECIPE = RunConfig.from_yaml(bench_levers.DEFAULT_CONFIG)


def record(arm: str, seed: int, acc: float, sec: float = 40.0, **extra) -> dict:
    return {
        "arm": arm,
        "seed": seed,
        "val_acc": acc,
        "live_val_acc": None,
        "snapshot_val_acc": None,
        "epoch_seconds_median": sec,
        "acc_none": acc,
        "acc_tencrop": acc + 0.002,
        "ms_per_image_none": 1.0,
        "ms_per_image_tencrop": 9.0,
        **extra,
    }


@pytest.mark.parametrize("arm", sorted(bench_levers.ARMS))
def test_each_arm_is_the_recipe_with_one_lever(arm: str) -> None:
    cfg = bench_levers.arm_config(RECIPE, arm, epochs=8, seed=3)
    assert cfg.train.epochs == 8 and cfg.seed == 3
    changed = {
        (section, key)
        for section in ("train", "augment")
        for key, value in cfg.to_dict()[section].items()
        if key != "epochs" and value != RECIPE.to_dict()[section][key]
    }
    assert changed == {(s, k) for s, keys in bench_levers.ARMS[arm][0].items() for k in keys}
    assert cfg.model == RECIPE.model


def test_the_baseline_is_the_ema_runs_live_weights_and_differences_are_paired() -> None:
    records = [
        record("ema", 0, 0.59, live_val_acc=0.60),
        record("ema", 1, 0.58, live_val_acc=0.62),
        record("mixup", 0, 0.61, sec=44.0),
        record("mixup", 1, 0.60, sec=36.0),
        record("snapshots", 0, 0.57, snapshot_val_acc=0.605),
    ]
    listed = bench_levers.rows(records)
    rows = {r["lever"].split(":")[0].split(" (")[0]: r for r in listed}
    assert rows["recipe"]["acc"] == [0.60, 0.62]
    assert rows["ema"]["diff"] == pytest.approx([-0.01, -0.04])
    assert rows["mixup"]["diff"] == pytest.approx([0.01, -0.02])
    assert rows["mixup"]["ratio"] == pytest.approx([1.1, 0.9])
    ensemble, last = (r for r in listed if r["lever"].startswith("snapshots"))  # in that order
    assert ensemble["acc"] == [0.605] and ensemble["diff"] == pytest.approx([0.005])
    assert last["acc"] == [0.57] and last["diff"] == pytest.approx([-0.03])
    assert rows["ten-crop TTA"]["diff"] == pytest.approx([0.002] * 5)  # every model, with its centre view
    text = bench_levers.table(records, "header")
    assert "| recipe (baseline) | 0 1 | 61.00 ± 1.41 |" in text
    assert "| -0.50 (+1.00, -2.00) | 40.0 | 1.00x |" in text  # mixup: points, and its time to the baseline's


def test_a_base_arm_is_the_baseline_when_there_is_one() -> None:
    records = [
        record("base", 0, 0.61),
        record("ema", 0, 0.59, live_val_acc=0.60),
        record("sam", 0, 0.63, 80.0),
    ]
    rows = bench_levers.rows(records)
    assert rows[0]["acc"] == [0.61]
    sam = next(r for r in rows if r["lever"].startswith("sam"))
    assert sam["diff"] == pytest.approx([0.02]) and sam["ratio"] == pytest.approx([2.0])


def test_a_finished_run_is_kept_and_a_rerun_skips_it(tmp_path: Path, tiny_data: FER2013) -> None:
    """Two epochs of a tiny cnn on the shared tiny data; the second call reads the record, trains nothing."""
    tiny = RunConfig.from_dict({"model": {"arch": "cnn", "kernels": [8]}, "train": {"epochs": 2}})
    args = argparse.Namespace(epochs=2, threads=1)
    runs = tmp_path / "runs"
    runs.mkdir()
    first = bench_levers.run_one("ema", 0, tiny, tiny_data, args, runs)
    assert first["live_val_acc"] is not None and (runs / "ema-s0.json").is_file()
    assert 0 <= first["acc_tencrop"] <= 1 and first["ms_per_image_tencrop"] > 0
    (runs / "ema-s0" / "model.pt").unlink()  # a rerun that trained or scored again would need it
    assert bench_levers.run_one("ema", 0, tiny, tiny_data, args, runs) == json.loads(
        (runs / "ema-s0.json").read_text()
    )
