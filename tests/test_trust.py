"""A search folder is data: `report` and `export` read its JSON, CSV and text files and never unpickle Ray's
state (its `experiment_state-*.json` embeds cloudpickled objects; `tuner.pkl` and the searcher state are
pickles). A folder from elsewhere must not be able to run code on the machine that reports on it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import yaml

from fer_tune.cli import main

SMOKE = Path(__file__).resolve().parents[1] / "results" / "smoke-cpu"


class _Plant:
    """Unpickling this creates `path` (as malicious code would do anything else)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(folder: Path, marker: Path) -> None:
    payload = pickle.dumps(_Plant(marker))
    fallback = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}  # Ray's JSON fallback (hex)
    for state in folder.glob("experiment_state-*.json"):
        doc = json.loads(state.read_text())
        for entry in doc["trial_data"]:
            meta = json.loads(entry[0])
            meta["storage"] = fallback
            entry[0] = json.dumps(meta)
        doc["runner_data"]["planted"] = fallback
        state.write_text(json.dumps(doc))
    for pkl in [
        folder / "tuner.pkl",
        *folder.glob("searcher-state-*.pkl"),
        *folder.glob("trial_*/params.pkl"),
    ]:
        pkl.write_bytes(payload)


def test_report_and_export_never_unpickle_the_search_folder(tmp_path: Path, capsys) -> None:
    folder = Path(shutil.copytree(SMOKE, tmp_path / "smoke-cpu"))
    marker = tmp_path / "code-ran"
    _plant(folder, marker)
    # The planted pickle works: loading any of these files runs it.
    pickle.loads((folder / "tuner.pkl").read_bytes())
    assert marker.exists()
    marker.unlink()

    assert main(["report", str(folder), "--out", str(tmp_path / "report")]) == 0
    assert main(["export", str(folder), "-o", str(tmp_path / "best.yaml")]) == 0
    assert not marker.exists(), "reading the search folder unpickled a file from it"
    assert "10 trials" in (tmp_path / "report" / "report.md").read_text()
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert best["provenance"]["trial_id"] == "5e563191" and best["model"]["arch"] == "cnn"
