"""Searches saved by earlier fer-tune versions (the committed ones under results/) still report, resume and
extend: their pickles name classes by the modules they had then (`fer_tune.hooks.BestEpochOptunaSearch`,
`fer_tune.live.LiveReporter`, ...), which `fer_tune.search.legacy_names` maps to where they live now."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fer_tune.cli import main
from fer_tune.search import legacy_names
from fer_tune.search.study import STUDY_DB_ENV

RESULTS = Path(__file__).resolve().parents[1] / "results"
# Every committed search whose Ray state was pickled (tuner.pkl) by an earlier fer-tune.
SAVED = sorted(p.parent.name for p in RESULTS.glob("*/tuner.pkl"))


class NamesRecorded(pickle.Unpickler):
    """An unpickler that records every fer_tune name the pickle asks for."""

    def __init__(self, file, names: set[tuple[str, str]]) -> None:
        super().__init__(file)
        self.names = names

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "fer_tune":
            self.names.add((module, name))
        return super().find_class(module, name)


def test_the_committed_searches_are_the_ones_checked() -> None:
    assert {"smoke-cpu", "smoke-extend", "reference", "cpu-reference", "cpu-amx"} <= set(SAVED)


@pytest.mark.parametrize("name", SAVED)
def test_every_name_a_committed_search_pickled_resolves(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's pickles of the search (tuner.pkl, searcher-state-*.pkl, each phase's) load, without Ray."""
    copy = tmp_path / name  # the pickled study storage reopens this copy's optuna.db, never the committed one
    for src in RESULTS.joinpath(name).rglob("*"):
        if src.is_file() and (src.name in ("optuna.db", "tuner.pkl") or src.match("searcher-*.pkl")):
            dest = copy / src.relative_to(RESULTS / name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest)
    monkeypatch.setenv(STUDY_DB_ENV, str(copy / "optuna.db"))
    legacy_names.install()
    names: set[tuple[str, str]] = set()
    pickles = sorted(copy.rglob("*.pkl"))
    assert any(p.name == "tuner.pkl" for p in pickles) and any(p.name.startswith("searcher") for p in pickles)
    for path in pickles:
        with open(path, "rb") as f:  # a committed search: trusted
            NamesRecorded(f, names).load()
    assert names, "no fer_tune object in the pickles: nothing checked"
    moved = {(module, attr) for module, attrs in legacy_names.MOVED.items() for attr in attrs}
    for module, attr in names - moved:  # a name that never moved is still where the pickle says
        assert module.startswith(("fer_tune.search.", "fer_tune.base.")), (module, attr)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_search_saved_before_the_layout_reports_resumes_and_extends(
    ray_cluster, tmp_path: Path, data_csv: Path, capsys: pytest.CaptureFixture
) -> None:
    """results/smoke-extend (two phases, saved with the flat modules): report, resume, extend by one trial."""
    copy = Path(shutil.copytree(RESULTS / "smoke-extend", tmp_path / "smoke-extend"))
    before = pd.read_csv(copy / "trials.csv")

    assert main(["report", str(copy), "--out", str(tmp_path / "report")]) == 0
    assert "| trial | phase |" in (tmp_path / "report" / "report.md").read_text()

    capsys.readouterr()
    assert main(["resume", str(copy)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    # As if the driver had died after its last trial: Ray restores the pickled tuner and searcher state.
    state = json.loads((copy / "fer_tune.json").read_text())
    state.update(finished=False, ended=None, data=str(data_csv))  # its data: the tiny set, not the real one
    state["phases"][-1].update(finished=False, ended=None)
    (copy / "fer_tune.json").write_text(json.dumps(state, indent=2))
    assert main(["--resume", str(copy)]) == 0
    assert f"fer-tune: resuming {copy}" in capsys.readouterr().out
    state = json.loads((copy / "fer_tune.json").read_text())
    assert state["finished"] and state["phases"][-1]["finished"]
    after = pd.read_csv(copy / "trials.csv")
    assert sorted(after["trial_id"]) == sorted(before["trial_id"])  # no trial added or run again
    assert after.set_index("trial_id")["epochs"].to_dict() == before.set_index("trial_id")["epochs"].to_dict()

    # One more trial of one epoch, in phase 2's space.
    space = yaml.safe_load((copy / "phase2" / "space.yaml").read_text())
    space["train"]["epochs"] = 1
    (tmp_path / "one-epoch.yaml").write_text(yaml.safe_dump(space))
    argv = ["extend", str(copy), "--num-samples", "1", "--space", str(tmp_path / "one-epoch.yaml")]
    assert main([*argv, "--data", str(data_csv)]) == 0
    state = json.loads((copy / "fer_tune.json").read_text())
    assert [p["number"] for p in state["phases"]] == [1, 2, 3] and state["phases"][2]["num_samples"] == 1
    assert state["finished"]
    trials = pd.read_csv(copy / "trials.csv")
    assert len(trials) == len(before) + 1 and (trials["phase"] == 3).sum() == 1
    new = trials[trials["phase"] == 3]
    assert new[["status", "stop_reason", "epochs"]].values.tolist() == [["TERMINATED", "completed", 1]], new.T
