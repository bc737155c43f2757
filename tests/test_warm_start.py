"""A search that starts from earlier searches: their finished trials in its Optuna study before it asks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from conftest import one_line
from optuna.trial import TrialState

from fer_tune.base import ConfigError
from fer_tune.cli import main
from fer_tune.search import InSpaceSampler, SearchFolder, load_space, parse_space
from fer_tune.search import runner as search
from fer_tune.search import warm_start as warm_module
from fer_tune.search.conversion import distribution
from fer_tune.search.extend import _warm_outside
from fer_tune.search.warm_start import WARM_CONFIG, WARM_TRIAL, add_warm_trials, read_warm_starts, start_from

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "cpu-amx"  # 21 trials of the cpu space: 3 of 12 epochs, 18 stopped early
SMOKE = ROOT / "results" / "smoke-cpu"  # 10 trials of the smoke space, from before phases and optuna.db

optuna.logging.set_verbosity(optuna.logging.WARNING)


def cpu_space(tmp_path: Path, **changes: dict) -> Path:
    """The bundled cpu space in `tmp_path`, each group updated by `changes`, without its warm start and
    recipes tried first (a narrower space may not sample their keys)."""
    raw = yaml.safe_load(Path(load_space("cpu").source).read_text())
    raw["search"].pop("warm_start")
    raw["search"].pop("points_to_evaluate")
    for group, values in changes.items():
        raw[group] = values if group == "seed" else {**raw[group], **values}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def reference_trials() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "trials.csv")


def test_the_cpu_space_starts_from_the_reference_search_as_its_own_study_was_told(tmp_path: Path) -> None:
    space = load_space("cpu")
    (warm,) = read_warm_starts(space)
    assert warm.folder == REFERENCE and not warm.absent
    assert (len(warm.trials), warm.outside, warm.unfinished) == (21, [], 0)
    assert "warm start: 21 trials from " in warm.note() and "(3 complete, 18 stopped early)" in warm.note()
    # The reference's own study, as BestEpochOptunaSearch told it (a copy: loading may write to the file).
    db = shutil.copy(REFERENCE / "optuna.db", tmp_path / "optuna.db")
    told = optuna.load_study(study_name="cpu-reference", storage=f"sqlite:///{db}")
    ours = {t.user_attrs[WARM_TRIAL]: t for t in warm.trials}
    assert set(ours) == {t.user_attrs["ray_trial_id"] for t in told.trials}
    dists = {d.name: distribution(d) for d in space.dists()}
    for old in told.trials:
        new = ours[old.user_attrs["ray_trial_id"]]
        assert (new.state, new.params, new.distributions) == (old.state, old.params, old.distributions)
        assert new.value == pytest.approx(old.value)  # the best epoch's; a pruned trial's last
        # Ray withholds the result a scheduler stopped a trial on from the searcher's per-epoch reports.
        assert old.intermediate_values.items() <= new.intermediate_values.items()
        assert all(new.distributions[name] == dists[name] for name in new.params)  # what the new study asks


def test_warm_trials_steer_tpe_from_its_first_proposal() -> None:
    space = load_space("cpu")
    warm = read_warm_starts(space)
    suggest = space.define_by_run()

    def proposals(warm_start: bool) -> list[tuple[str, str]]:
        study = optuna.create_study(direction="maximize", sampler=InSpaceSampler(seed=0))
        assert add_warm_trials(study, warm if warm_start else []) == (21 if warm_start else 0)
        out = []
        for _ in range(10):
            trial = study.ask()
            config = suggest(trial)
            out.append((config["model"]["arch"], config["train"]["optimizer"]))
            study.tell(trial, state=TrialState.FAIL)  # FAIL: no proposal informs the next
        return out

    cold, hot = proposals(False), proposals(True)
    assert hot[0] != cold[0]
    # The reference's three full-length trials are VGGs with AdamW: TPE proposes mostly those; chance not.
    assert hot.count(("vgg", "adamw")) >= 6 > cold.count(("vgg", "adamw"))


def test_trials_outside_a_narrower_space_are_skipped_with_a_note(tmp_path: Path) -> None:
    trials = reference_trials()
    sgd = int((trials["config/train/optimizer"] == "sgd").sum())
    space = load_space(cpu_space(tmp_path, train={"optimizer": "adamw"}))
    (warm,) = read_warm_starts(space, [REFERENCE])
    assert 0 < sgd < 21 and (len(warm.trials), len(warm.outside)) == (21 - sgd, sgd)
    assert all(t.user_attrs[WARM_CONFIG]["train"]["optimizer"] == "adamw" for t in warm.trials)
    assert all("train/optimizer" not in t.params for t in warm.trials)  # fixed here: not a parameter
    note = warm.note()
    assert f"; {sgd} skipped (outside this space: train.optimizer x{sgd}; e.g. train.optimizer 'sgd'" in note

    # A key the new space fixes to another value (trials of 12 epochs measure nothing about 20): all skipped.
    (warm,) = read_warm_starts(load_space(cpu_space(tmp_path, train={"epochs": 20})), [REFERENCE])
    assert not warm.trials and len(warm.outside) == 21 and warm.outside[0] == "train.epochs 12 is not 20"
    # Another training seed repeats a config: the trials still count.
    (warm,) = read_warm_starts(load_space(cpu_space(tmp_path, seed=3)), [REFERENCE])
    assert len(warm.trials) == 21


def test_folders_are_relative_to_the_space_file_and_recorded_relative_to_the_search(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # not where the folders are: the space file's folder is
    raw = yaml.safe_load(cpu_space(tmp_path).read_text())
    deep = tmp_path / "spaces" / "deep"
    deep.mkdir(parents=True)
    raw["search"]["warm_start"] = [os.path.relpath(REFERENCE, deep)]
    (deep / "space.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    new = tmp_path / "results" / "new"
    # The same folder named by the flag too (relative to the working directory): read once.
    recorded, warm = start_from(load_space(deep / "space.yaml"), [os.path.relpath(REFERENCE)], new)
    assert [w.folder.resolve() for w in warm] == [REFERENCE]
    # The search's space.yaml names it as a space file does: relative to itself.
    assert recorded.search.warm_start == [os.path.relpath(REFERENCE, new)]


def test_a_folder_a_bundled_space_names_may_be_absent(tmp_path: Path, monkeypatch, capsys) -> None:
    """An installed package has no results/: the cpu space then starts cold, with a note."""
    bundled = tmp_path / "site-packages" / "fer_tune" / "search_spaces"
    bundled.mkdir(parents=True)
    raw = yaml.safe_load(cpu_space(tmp_path).read_text())
    raw["search"]["warm_start"] = ["../results/cpu-amx"]
    (bundled / "cpu.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    space = load_space(bundled / "cpu.yaml")
    monkeypatch.setattr(warm_module, "bundled_dir", lambda: bundled)
    recorded, warm = start_from(space, [], tmp_path / "results" / "new")
    assert warm == [] and recorded.search.warm_start == []
    out = capsys.readouterr().out
    assert "warm start: " in out and "cpu-amx: not found" in out and "starts without it" in out
    # The same file anywhere else: an error.
    monkeypatch.setattr(warm_module, "bundled_dir", lambda: tmp_path)
    with pytest.raises(ConfigError, match=r"search.warm_start: \.\./results/cpu-amx: no such search"):
        read_warm_starts(space)


@pytest.mark.parametrize(
    ("changes", "folder", "words"),
    [
        ({}, "nosuch", "--warm-start {folder}: no such search folder"),
        ({}, "results/bench-search", "--warm-start {folder}: not a fer-tune search folder (no fer_tune"),
        (
            {"search": {"metric": "val_loss"}},
            "results/cpu-amx",
            "--warm-start {folder}: its trials are ranked by val_acc (max), this search's by val_loss (min)",
        ),
        (
            {"search": {"algorithm": "random"}},
            "results/cpu-amx",
            "--warm-start: needs search.algorithm: optuna",
        ),
    ],
)
def test_a_wrong_warm_start_folder_fails_before_ray_with_one_line(
    tmp_path: Path, monkeypatch, capsys, changes: dict, folder: str, words: str
) -> None:
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(search, "ray_session", no_ray)
    monkeypatch.chdir(ROOT)
    path = cpu_space(tmp_path, **changes)
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n")  # never read: the folder fails first
    argv = ["--space", str(path), "--data", str(tmp_path / "fer2013.csv"), "--results", str(tmp_path / "r")]
    assert main([*argv, "--warm-start", folder]) == 2
    assert f"fer-tune: error: {words.format(folder=folder)}" in one_line(capsys)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # nothing left behind


def test_the_warm_start_key_needs_optuna_and_a_resume_takes_no_warm_start(tmp_path: Path, capsys) -> None:
    raw = {"model": {"arch": "cnn"}, "search": {"algorithm": "random", "warm_start": ["x"]}}
    with pytest.raises(
        ConfigError, match="search.warm_start: needs search.algorithm: optuna, gp or auto, not random"
    ):
        parse_space(raw)
    with pytest.raises(ConfigError, match="search.warm_start: expected a list of search folders"):
        parse_space({"model": {"arch": "cnn"}, "search": {"warm_start": "results/x"}})
    assert load_space("cpu", warm_start=[]).search.warm_start == []  # --no-warm-start
    assert main(["--resume", str(tmp_path), "--warm-start", str(REFERENCE)]) == 2
    assert "--warm-start would be ignored" in one_line(capsys)


def test_an_extension_hides_warm_trials_outside_its_narrower_space(tmp_path: Path) -> None:
    (warm,) = read_warm_starts(load_space("cpu"))
    narrow = load_space(cpu_space(tmp_path, train={"optimizer": "adamw"}))
    hidden = [t for t in warm.trials if _warm_outside(narrow, t.user_attrs)]
    assert {t.user_attrs[WARM_CONFIG]["train"]["optimizer"] for t in hidden} == {"sgd"}
    assert len(hidden) == int((reference_trials()["config/train/optimizer"] == "sgd").sum())
    assert not _warm_outside(narrow, {"ray_trial_id": "abc"})  # the search's own trials: Ray's list decides


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_search_warm_started_from_a_committed_search(ray_cluster, data_csv: Path, tmp_path: Path, capsys):
    """The smoke space from results/smoke-cpu's 10 trials: one new trial; the 10 only in the study."""
    argv = ["--space", "smoke", "--data", str(data_csv), "--gpus", "0", "--num-samples", "1"]
    argv += ["--results", str(tmp_path), "--name", "warm", "--warm-start", str(SMOKE)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fer-tune: warm start: 10 trials from " in out and "(5 complete, 5 stopped early)" in out
    folder = SearchFolder(tmp_path / "warm")
    trials = pd.read_csv(folder / "trials.csv")
    assert len(trials) == 1  # Ray ran only the new trial
    study = folder.load_study()
    warm = [t for t in study.trials if WARM_TRIAL in t.user_attrs]
    own = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(warm) == 10 and [t.number for t in warm] == list(range(10))  # told before the first ask
    assert [t.user_attrs["ray_trial_id"] for t in own] == trials["trial_id"].tolist()
    state = json.loads((folder / "fer_tune.json").read_text())
    assert state["warm_start"] == [
        {"folder": warm[0].user_attrs["warm_start"], "trials": 10, "skipped": 0, "unfinished": 0}
    ]
    (named,) = folder.read_space().search.warm_start  # relative to the search's own space.yaml
    assert (folder.path / named).resolve() == SMOKE
