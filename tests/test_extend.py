"""`fer-tune extend` and the library API on the session's Ray: one folder, one study, every phase reported."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import make_fer
from optuna.trial import TrialState

from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.search import SearchFolder, SearchResources, parse_space, run_search
from fer_tune.search.conversion import outside
from fer_tune.search.ray_trials import ray_trials

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(400)]


def space_doc(lr: dict, kernels: dict | int, num_samples: int = 8) -> dict:
    return {
        "search": {"num_samples": num_samples, "scheduler": "none", "seed": 0},
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [kernels, 8], "head_width": 0, "pool_size": 1},
        "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "lr": lr},
        "augment": {"crop": 0, "rotation": 0},
    }


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_extend_a_finished_search_with_a_narrower_space(ray_cluster, tmp_path: Path, capsys) -> None:
    wide = parse_space(space_doc({"loguniform": [1e-3, 0.2]}, {"choice": [4, 8]}), name="wide", source="wide")
    data = make_fer({"Training": 20, "PublicTest": 6})
    # The library API: a Space and a FER2013, no argparse namespace.
    outcome = run_search(wide, data, SearchResources(gpus=0), name="ext", results=tmp_path / "results")
    folder = SearchFolder(outcome.folder)
    assert outcome.status == 0 and folder.db_path.is_file()
    assert len(folder.load_study().trials) == 8
    csv_before = (folder / "trials.csv").read_text()
    first = {p.name: p.read_text() for p in folder.path.glob("trial_*/result.json")}

    narrow = write(tmp_path / "narrow.yaml", space_doc({"loguniform": [0.01, 0.05]}, 8, num_samples=3))
    csv = save_csv(data, tmp_path / "fer2013.csv")  # the search's data was in memory: extend is given it
    assert (
        main(["extend", str(folder), "--num-samples", "8", "--space", str(narrow), "--data", str(csv)]) == 0
    )

    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 16 and sorted(trials["phase"].value_counts().tolist()) == [8, 8]
    study = folder.load_study()
    assert len(study.trials) == 16 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(trials["trial_id"])
    assert [t.user_attrs["phase"] for t in study.trials] == [1] * 8 + [2] * 8
    # Phase 2's trials lie in the narrower space; the earlier ones outside it are recorded, and kept.
    narrow_space = folder.read_space(2)
    configs = {t["trial_id"]: t["config"] for t in ray_trials(folder)}
    state = folder.read_state()
    assert [p.number for p in state.phases] == [1, 2] and state.finished
    phase1 = set(trials[trials["phase"] == 1]["trial_id"])
    assert set(state.phases[1].outside) == {t for t in phase1 if outside(narrow_space, configs[t])}
    assert state.phases[1].outside  # lr from [1e-3, 0.2] and a width of 4 or 8: some fell outside
    assert all(outside(narrow_space, configs[t]) is None for t in set(trials["trial_id"]) - phase1)
    assert {p.name: p.read_text() for p in folder.path.glob("trial_*/result.json")} == first  # untouched
    assert csv_before != (folder / "trials.csv").read_text()
    # best_config.yaml and the report cover both phases; the report marks each trial's phase.
    best = yaml.safe_load((folder / "best_config.yaml").read_text())["provenance"]["trial_id"]
    assert best == trials.sort_values("best_val_acc", ascending=False, kind="stable")["trial_id"].iloc[0]
    assert main(["report", str(folder)]) == 0
    text = (folder / "report" / "report.md").read_text()
    assert "| trial | phase |" in text and "phase 2: 8 trials from" in text


def test_extend_refuses_what_it_cannot_continue(ray_cluster, tmp_path: Path, capsys) -> None:
    data = make_fer({"Training": 20, "PublicTest": 6})
    doc = space_doc({"loguniform": [1e-3, 0.2]}, {"choice": [4, 8]}, num_samples=2)
    random = parse_space({**doc, "search": {**doc["search"], "algorithm": "random"}}, name="r", source="r")
    results = tmp_path / "results"
    assert run_search(random, data, SearchResources(gpus=0), name="rand", results=results).status == 0
    assert (
        run_search(parse_space(doc), data, SearchResources(gpus=0), name="opt", results=results).status == 0
    )
    opt = SearchFolder(results / "opt")
    state_before = (opt / "fer_tune.json").read_text()
    # An integer parameter where the study has a categorical one.
    changed = write(tmp_path / "changed.yaml", space_doc({"loguniform": [1e-3, 0.2]}, {"randint": [4, 8]}))
    other_metric = space_doc({"loguniform": [1e-3, 0.2]}, 8)
    other_metric["search"]["metric"] = "val_loss"
    cases = [
        (["extend", str(tmp_path), "--num-samples", "2"], "fer_tune.json: no such file"),
        (["extend", str(results / "rand"), "--num-samples", "2"], "search.algorithm random"),
        (
            ["extend", str(opt), "--num-samples", "2", "--space", str(changed)],
            "model.kernels.0: randint here",
        ),
        (
            [
                "extend",
                str(opt),
                "--num-samples",
                "2",
                "--space",
                str(write(tmp_path / "m.yaml", other_metric)),
            ],
            "ranks by val_acc (max)",
        ),
        (["extend", str(opt), "--num-samples", "0"], "--num-samples: must be >= 1"),
        (  # wider than the search's: its help says narrower, and the report's distributions are phase 1's
            [
                "extend",
                str(opt),
                "--num-samples",
                "2",
                "--space",
                str(write(tmp_path / "w.yaml", space_doc({"loguniform": [1e-3, 0.5]}, {"choice": [4, 8]}))),
            ],
            "train.lr: loguniform [0.001, 0.5] reaches 0.5, outside the search's loguniform [0.001, 0.2]",
        ),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    # Nothing written by the refused extensions.
    assert (opt / "fer_tune.json").read_text() == state_before
    assert not (opt / "phase2").exists() and len(opt.load_study().trials) == 2
    assert json.loads(state_before)["study"] == "opt"
