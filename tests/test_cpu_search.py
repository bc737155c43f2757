"""The CPU story: the bundled `cpu` space, search-then-retrain in one command, and the search benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import make_fer
from test_report import TINY_SPACE

from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.models import model_stats
from fer_tune.search import load_space
from fer_tune.training import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_space_fits_a_cpu_evening() -> None:
    space = load_space("cpu")
    # one 100-minute budget for the job: with --retrain, the search stops after 45 minutes
    assert space.search.time_budget_s == 100 * 60 and space.search.algorithm == "optuna"
    assert space.search.time_budget_s * (1 - space.search.retrain_share) == pytest.approx(45 * 60)
    assert space.resources.cpus_per_trial == 2 and not space.resources.gpus_per_trial
    assert space.search.scheduler == "asha" and space.max_epochs() == 12
    assert space.search.stuck_epochs == 3  # a trial collapsed to one class cannot hold the one 2-core slot
    # ASHA's rungs (2, 6) leave most configs at 2 epochs: many configs fit 45 minutes
    assert space.search.grace_period * space.search.reduction_factor < space.max_epochs()
    # the final model trains longer than the search ranks configs (at most: as many as fit the budget)
    assert space.search.retrain_epochs == 45 > space.max_epochs()
    archs = set()
    for config in space.sample(n=8, seed=3):
        cfg = RunConfig.from_dict(config)
        archs.add(cfg.model.arch)
        stats = model_stats(cfg.model, cfg.augment.crop)
        # every draw trains on 2 cores (3 seeds x 25 epochs fit an evening) and its model.pt is under 16 MB
        assert stats["params"] < 3e6 and stats["macs"] < 30e6, (config["model"], stats)
        assert cfg.augment.crop == 40 and cfg.train.train_on == "Training"
    assert archs == {"cnn", "vgg"}
    # the two recipes tried first lie in the space and build valid configs
    assert [p["model"]["arch"] for p in space.search.points_to_evaluate] == ["vgg", "vgg"]


def test_warmup_default_fits_one_epoch() -> None:
    """A default the user never wrote must not fail: `epochs: 1` with the default warm-up and schedule."""
    cfg = RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {"epochs": 1}})
    assert cfg.train.schedule == "cosine" and 0 < cfg.train.warmup_epochs < 1
    assert RunConfig.from_dict({"model": {"arch": "cnn"}}).train.warmup_epochs == 1.0
    written = RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {"epochs": 1, "warmup_epochs": 0.5}})
    assert written.train.warmup_epochs == 0.5
    with pytest.raises(Exception, match="train.warmup_epochs: must be in"):
        RunConfig.from_dict({"model": {"arch": "cnn"}, "train": {"epochs": 1, "warmup_epochs": 1.0}})


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cpu_search")
    return save_csv(make_fer({"Training": 14, "PublicTest": 5}, seed=4), root / "fer2013.csv")


@pytest.mark.ray
@pytest.mark.slow
def test_search_then_retrain_in_one_command(ray_cluster, small_csv, tmp_path, capsys, monkeypatch) -> None:
    # the search ranks configs at 3 epochs; its final model trains for 2 (the space's retrain_epochs); it
    # starts from a given recipe (its other keys sampled)
    # the output engine an earlier search in this process chose: Ray's default verbosity dumps every result
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    point = "  points_to_evaluate:\n    - {model: {kernels: [8, 16]}, train: {lr: 0.0123}}\n"
    text = TINY_SPACE.replace("search:\n", "search:\n  retrain_epochs: 2\n" + point)
    (tmp_path / "tiny.yaml").write_text(text)
    argv = ["--space", str(tmp_path / "tiny.yaml"), "--data", str(small_csv), "--gpus", "0"]
    argv += ["--results", str(tmp_path / "results"), "--retrain", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Result for" not in out
    (folder,) = (tmp_path / "results").iterdir()  # the generated name: space name and time
    assert folder.name.startswith("tiny-") and f"-> {folder / 'final'}" in out
    final = folder / "final"
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["train_on"] == "Training"
    assert metrics["provenance"]["search"].endswith(folder.name) and metrics["provenance"]["rank"] == 1
    params = [json.loads(p.read_text()) for p in folder.glob("trial_*/params.json")]
    assert len(params) == 4
    assert [c["model"]["kernels"] for c in params if c["train"]["lr"] == 0.0123] == [[8, 16]]
    best = RunConfig.from_yaml(folder / "best_config.yaml").to_dict()
    assert best["train"]["epochs"] == 3 and metrics["config"]["train"]["epochs"] == 2
    assert not (folder / "budget.json").exists()  # no time budget: retrain_epochs, as before the budget
    best["train"]["epochs"] = 2
    assert metrics["config"] == best
    assert set(metrics["evaluation"]["results"]) == {"seed_0", "seed_1", "ensemble"}
    assert (final / "seed_1" / "model.pt").is_file()
    # the ensemble is a model fer-tune evaluate reads
    assert main(["evaluate", str(final), "--data", str(small_csv), "--device", "cpu"]) == 0
    assert "2 members and their ensemble" in capsys.readouterr().out


def test_retrain_needs_a_positive_number_of_seeds(capsys) -> None:
    assert main(["--space", "smoke", "--retrain", "0"]) == 2
    assert "argument --retrain: must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.long
def test_bench_search_quick_budget_on_tiny_data(small_csv, tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_search
    finally:
        sys.path.pop(0)
    (tmp_path / "tiny.yaml").write_text(TINY_SPACE)
    out = tmp_path / "bench"
    argv = ["--data", str(small_csv), "--budget", "1m", "--space", str(tmp_path / "tiny.yaml")]
    assert bench_search.main([*argv, "--out", str(out), "--num-samples", "2", "--cpus", "2"]) == 0
    record = json.loads((out / "bench_search.json").read_text())
    arms = {a["name"]: a for a in record["arms"]}
    assert set(arms) == {"warm", "cold", "random", "hand"} and record["budget_s"] == 60
    assert arms["hand"]["epochs"] >= 1 and arms["warm"]["trials"] == arms["random"]["trials"] == 2
    assert all(a["repeat"] == 0 for a in arms.values())
    assert set(record["paired_to_random"]) == {"warm", "cold", "hand"}
    for arm in arms.values():
        curve = arm["curve"]
        assert curve and all(0 <= t <= 60 for t, _ in curve), arm["name"]
        assert [acc for _, acc in curve] == sorted(acc for _, acc in curve)  # best so far never falls
        assert arm["best"] == curve[-1]
    table = (out / "table.md").read_text()
    assert all(f"| {name} |" in table for name in arms) and "n < 2: no noise estimate" in table
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # random search really is random and unscheduled
    assert "algorithm: random" in (out / "spaces" / "random-r0.yaml").read_text()
    # a rerun finds every run finished: nothing runs again
    assert bench_search.main([*argv, "--out", str(out), "--num-samples", "2", "--cpus", "2"]) == 0
    assert json.loads((out / "bench_search.json").read_text())["arms"] == record["arms"]


def test_bench_random_arm_is_the_cpu_space_from_chance(tmp_path) -> None:
    """The random arm samples the same space, without its starting points (from chance)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_search
    finally:
        sys.path.pop(0)
    cpu = load_space("cpu")
    random = load_space(bench_search.random_space(Path(cpu.source), tmp_path))
    assert random.search.algorithm == "random" and random.search.scheduler == "none"
    assert cpu.search.points_to_evaluate and not random.search.points_to_evaluate
    assert random.groups == cpu.groups
