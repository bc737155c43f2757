"""`--gpus-per-trial auto`: the packing rule, the per-family probe, and a search packed by it on logical GPUs.

The probe itself (`measure_packing`) needs a GPU: it is measured on one by `benchmarks/bench_packing.py`
(figures in docs/benchmarks.md) and exercised by the `gpu`-marked test below; here a fake probe stands in
for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_fer

from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.search.packing import PackingResult, auto_shares, choose_share, measure_packing

GiB = 2**30


def result(speeds: dict[int, float], footprint_gib: float = 1.0, total_gib: float = 80.0) -> PackingResult:
    return PackingResult(
        {"arch": "cnn"},
        128,
        48,
        "auto",
        speeds,
        int(footprint_gib * GiB) - GiB // 2,
        GiB // 2,
        int(total_gib * GiB),
        "Fake H100",
    )


@pytest.mark.parametrize(
    ("speeds", "footprint", "share"),
    [
        ({1: 1000, 2: 1900, 4: 3500, 8: 3600}, 1.0, 0.25),  # 8 adds 3%: stop at 4
        ({1: 1000, 2: 1900, 4: 3500, 8: 6000}, 1.0, 0.125),
        ({1: 1000, 2: 1050, 4: 4000, 8: 8000}, 1.0, 1.0),  # 2 gains too little: never look further
        ({1: 1000, 2: 1900, 4: 3500, 8: 6000}, 30.0, 0.5),  # memory: 2 x 30 GiB fits in 90% of 80, 4 not
        ({1: 1000, 2: 1900}, 80.0, 1.0),  # one trial already fills the GPU
    ],
)
def test_share_packs_while_throughput_rises_and_memory_fits(speeds, footprint, share) -> None:
    assert choose_share(result(speeds, footprint)) == share


def test_each_family_is_probed_once_with_its_heaviest_config() -> None:
    calls = []

    def probe(model, *, batch_size, input_size, precision):
        calls.append((model["arch"], model["kernels"], batch_size, input_size))
        return result({1: 100, 2: 190, 4: 200})

    configs = [
        {"model": {"arch": "cnn", "kernels": [8]}, "train": {"batch_size": 64}},
        {"model": {"arch": "cnn", "kernels": [64, 128]}, "train": {"batch_size": 64}},
        {"model": {"arch": "cnn", "kernels": [64, 128]}, "train": {"batch_size": 32}},
        {"model": {"arch": "resnet", "kernels": [16]}, "augment": {"crop": 40, "views": 4}},
    ]
    shares = auto_shares(configs, probe=probe, log=lambda line: None)
    assert shares == {"cnn": 0.5, "resnet": 0.5}
    # augment.views copies each image: the model sees batch_size x views images a step
    assert calls == [("cnn", [64, 128], 64, 48), ("resnet", [16], 128 * 4, 40)]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_auto_packs_trials_by_the_measured_share(ray_cluster, fake_cuda, monkeypatch, tmp_path: Path) -> None:
    """On 2 logical GPUs, a probe that says "4 per GPU" lets 8 trials run at once, at most 4 per GPU."""
    from fer_tune.search import packing

    fake_cuda(count=2)  # the driver's probe runs on "its GPU"; trials train on CPU (the test cluster says so)
    probed = []

    def fake_probe(model, **kwargs):
        probed.append(model["arch"])
        return result({1: 100, 2: 190, 4: 370, 8: 380})

    monkeypatch.setattr(packing, "measure_packing", fake_probe)
    csv = save_csv(make_fer({"Training": 10, "PublicTest": 4}), tmp_path / "fer2013.csv")
    space = {
        "search": {"num_samples": 8, "scheduler": "none"},
        "resources": {"cpus_per_trial": 0.25, "gpus_per_trial": "auto"},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}], "head_width": 0, "pool_size": 1},
        "train": {"epochs": 1, "batch_size": 16, "warmup_epochs": 0},
        "augment": {"crop": 0, "rotation": 0},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(space))
    argv = ["--space", str(tmp_path / "s.yaml"), "--data", str(csv), "--gpus", "2"]
    assert main([*argv, "--results", str(tmp_path / "r"), "--name", "auto"]) == 0
    folder = tmp_path / "r" / "auto"
    assert probed == ["cnn"]
    written = yaml.safe_load((folder / "space.yaml").read_text())["resources"]
    assert written["gpu_shares"] == {"cnn": 0.25}
    first = [json.loads(p.read_text().splitlines()[0]) for p in folder.glob("trial_*/result.json")]
    assert len(first) == 8 and len({r["pid"] for r in first}) == 8  # all 8 at once
    devices = [r["cuda_visible_devices"] for r in first]
    assert max(devices.count(d) for d in set(devices)) <= 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_probe_measures_every_k() -> None:
    r = measure_packing({"arch": "cnn", "kernels": [16, 32], "head_width": 0}, ks=(1, 2), seconds=1.0)
    assert set(r.images_per_second) == {1, 2} and min(r.images_per_second.values()) > 0
    assert r.peak_reserved_bytes > 0 and r.total_bytes > r.footprint()
