"""`fer-tune retrain`: seeds, splits, honesty notes and the export -> retrain round trip, on tiny data."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import make_fer
from test_report import tiny_search_fixture  # noqa: F401  (the tiny search both files use)

from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.training import RunConfig, load_model, retrain

TINY = {
    "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0, "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.0},
    "augment": {"rotation": 0.0},
    "seed": 3,
}
PROVENANCE = {"search": "results/tiny", "trial_id": "abc_00001", "rank": 1, "best_val_acc": 0.5}


@pytest.fixture(scope="module")
def full_data():
    """All three Usage splits, as in a user's fer2013.csv."""
    return make_fer({"Training": 12, "PublicTest": 4, "PrivateTest": 4}, seed=1)


def _write(path, config, provenance=None):
    d = RunConfig.from_dict(config).to_dict() | ({"provenance": provenance} if provenance else {})
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def test_two_seeds_on_every_split(tmp_path, full_data, capsys):
    best = _write(tmp_path / "best.yaml", TINY, PROVENANCE)
    out = tmp_path / "final"
    m = retrain(best, data=full_data, out_dir=out, seeds=2, device="cpu")
    assert "PrivateTest is absent" not in capsys.readouterr().out

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["splits"] == ["Training", "PublicTest", "PrivateTest"] and saved["private_test"]
    assert saved["seeds"] == [3, 4] and set(saved["per_seed"]) == {"seed_3", "seed_4"}
    assert saved["provenance"] == PROVENANCE and saved["notes"] == []
    for split in ("PublicTest", "PrivateTest"):
        for key in ("accuracy", "macro_f1"):
            s = saved["summary"][split][key]
            assert len(s["values"]) == 2 and 0 <= s["mean"] <= 1 and s["std"] >= 0
            assert s["values"] == [saved["per_seed"][f"seed_{k}"][split][key] for k in (3, 4)]
    assert m["summary"] == saved["summary"]
    # the two seeds are also one model: each seed and their ensemble, without and with flip and ten-crop TTA
    ev = saved["evaluation"]
    assert ev["members"] == ["seed_3", "seed_4"] and ev["ttas"] == ["none", "flip", "tencrop"]
    assert set(ev["results"]) == {"seed_3", "seed_4", "ensemble"}
    for name in ev["results"]:  # ten-crop on the held-out splits only
        assert set(ev["results"][name]["tencrop"]) == {"PublicTest", "PrivateTest"}
        assert set(ev["results"][name]["flip"]) == {"Training", "PublicTest", "PrivateTest"}
    assert (
        ev["results"]["seed_3"]["none"]["PrivateTest"]["accuracy"]
        == saved["per_seed"]["seed_3"]["PrivateTest"]["accuracy"]
    )
    for split in saved["splits"]:
        assert (out / f"confusion_{split}.png").read_bytes()[:4] == b"\x89PNG"

    # each seed folder is a complete model folder (fer-tune evaluate reads it) trained on its own seed
    for seed in (3, 4):
        _, meta = load_model(out / f"seed_{seed}")
        assert meta["config"] == RunConfig.from_dict({**TINY, "seed": seed}).to_dict()
        assert meta["epoch"] == 2  # the last epoch: no split chose it
        assert (out / f"seed_{seed}" / "confusion_PrivateTest.png").exists()

    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written.pop("provenance") == PROVENANCE
    assert written == RunConfig.from_dict(TINY).to_dict()


def test_without_private_test_and_trained_on_public_test_says_so(tmp_path, tiny_data, capsys):
    best = _write(tmp_path / "best.yaml", TINY)
    out = tmp_path / "final"
    with pytest.warns(UserWarning, match="not held out"):  # fer_tune.training.trainer says it too
        m = retrain(best, data=tiny_data, out_dir=out, epochs=1, train_on="Training+PublicTest", device="cpu")
    stdout = capsys.readouterr().out
    assert "PrivateTest is absent" in stdout and "not held out" in stdout
    assert m["splits"] == ["Training", "PublicTest"] and not m["private_test"]
    assert not m["public_test_held_out"] and len(m["notes"]) == 2
    assert "std" not in m["summary"]["PublicTest"]["accuracy"]  # one seed: no spread to report
    assert m["config"]["train"]["epochs"] == 1 and m["config"]["train"]["train_on"] == "Training+PublicTest"
    assert "provenance" not in yaml.safe_load((out / "config.yaml").read_text())


def test_cli_retrain_reads_a_csv_and_bad_config_is_one_line(tmp_path, tiny_data, capsys):
    csv = save_csv(tiny_data, tmp_path / "fer2013.csv")
    best = _write(tmp_path / "best.yaml", TINY)
    assert (
        main(["retrain", str(best), "--data", str(csv), "--out", str(tmp_path / "o"), "--epochs", "1"]) == 0
    )
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["seeds"] == [3]

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "lrr": 0.1}}))
    capsys.readouterr()
    assert main(["retrain", str(bad), "--data", str(csv), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.yaml" in err and "train.lrr" in err and "\n" not in err
    assert (
        main(["retrain", str(best), "--data", str(csv), "--out", str(tmp_path / "o3"), "--seeds", "0"]) == 2
    )


@pytest.mark.ray
@pytest.mark.slow
def test_export_then_retrain_round_trip(tiny_search, tmp_path, full_data):
    from fer_tune.search import export_config

    best = export_config(tiny_search, rank=1, out=tmp_path / "best.yaml")
    exported = yaml.safe_load(best.read_text())
    provenance = exported.pop("provenance")
    m = retrain(best, data=full_data, out_dir=tmp_path / "final", device="cpu")
    assert m["provenance"] == provenance and m["config"] == exported
    assert m["splits"] == ["Training", "PublicTest", "PrivateTest"]
    assert set(m["per_seed"][f"seed_{exported['seed']}"]) == {"Training", "PublicTest", "PrivateTest"}
    _, meta = load_model(tmp_path / "final" / f"seed_{exported['seed']}")
    assert meta["config"] == exported
    written = yaml.safe_load((tmp_path / "final" / "config.yaml").read_text())
    assert written.pop("provenance") == provenance and written == exported


@pytest.mark.slow
def test_parallel_seeds_train_what_sequential_seeds_train(tmp_path, full_data):
    """--jobs 2: two seeds in two processes give the models one process gives, one after the other."""
    csv = save_csv(full_data, tmp_path / "fer2013.csv")
    # fp32: each job gets its share of the cores, and bf16 kernels (CPUs with AMX) round differently with
    # another number of threads; fp32 ones give the same models.
    best = _write(tmp_path / "best.yaml", {**TINY, "train": {**TINY["train"], "precision": "fp32"}})
    assert main(["retrain", str(best), "--data", str(csv), "--seeds", "2", "--out", str(tmp_path / "a")]) == 0
    argv = ["retrain", str(best), "--data", str(csv), "--seeds", "2", "--jobs", "2"]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert a["per_seed"] == b["per_seed"] and set(b["per_seed"]) == {"seed_3", "seed_4"}


def test_a_retrain_that_crashed_in_its_third_seed_resumes_to_the_same_metrics(
    tmp_path, full_data, monkeypatch, capsys
):
    import fer_tune.training.trainer as train_module

    config = _write(tmp_path / "best.yaml", TINY)
    whole = retrain(config, data=full_data, out_dir=tmp_path / "whole", seeds=3, device="cpu")

    real_epoch = train_module.run_epoch

    def crash_in_seed_5(model, opt, sched, plateau, d, cfg, epoch, *rest):
        if cfg.seed == 5 and epoch == 2:
            raise KeyboardInterrupt  # the machine went down in the third seed's second epoch
        return real_epoch(model, opt, sched, plateau, d, cfg, epoch, *rest)

    out = tmp_path / "crashed"
    monkeypatch.setattr(train_module, "run_epoch", crash_in_seed_5)
    with pytest.raises(KeyboardInterrupt):
        retrain(config, data=full_data, out_dir=out, seeds=3, device="cpu")
    monkeypatch.setattr(train_module, "run_epoch", real_epoch)
    assert not (out / "metrics.json").exists()
    finished = {s: (out / f"seed_{s}" / "model.pt").stat().st_mtime_ns for s in (3, 4)}
    assert len((out / "seed_5" / "metrics.csv").read_text().splitlines()) == 2

    resumed = retrain(config, data=full_data, out_dir=out, seeds=3, device="cpu", resume=True)
    assert "seed 5: continuing from" in capsys.readouterr().out
    # finished seeds were not trained again; the result is the uninterrupted run's
    assert {s: (out / f"seed_{s}" / "model.pt").stat().st_mtime_ns for s in (3, 4)} == finished
    assert resumed["per_seed"] == whole["per_seed"] and resumed["summary"] == whole["summary"]
    assert resumed["evaluation"]["results"] == whole["evaluation"]["results"]


def test_cli_train_resume_continues_a_run(tmp_path, tiny_data, capsys):
    csv = save_csv(tiny_data, tmp_path / "fer.csv")
    config = _write(tmp_path / "run.yaml", TINY)
    run = tmp_path / "run"
    assert main(["train", str(config), "--data", str(csv), "--out", str(run), "--epochs", "1"]) == 0
    # --epochs changes the config: the checkpoint of a 1-epoch run is not continued as a 2-epoch one
    assert main(["train", "--resume", str(run), "--data", str(csv), "--epochs", "2"]) == 2
    assert "differs from the config of the checkpoint" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--data", str(csv)]) == 0  # finished: nothing to do
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert main(["train", "--resume", str(tmp_path / "none"), "--data", str(csv)]) == 2
    assert "no checkpoint.pt there to continue from" in capsys.readouterr().err
    assert main(["train", "--data", str(csv)]) == 2
