"""Outputs never overwrite their sources (docs/faults.md): an output path that is a file the command reads,
lies in a search folder, or is a folder of another kind is refused with one line naming the flag, the path
and why, before anything is written (and before the data is parsed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_fer, one_line, snapshot
from test_predict import save_untrained

import fer_tune.data.fer2013
import fer_tune.training.retraining
from fer_tune.base import check_output, folder_kind
from fer_tune.cli import main
from fer_tune.data import save_csv
from fer_tune.training import RunConfig, retrain

RESULTS = Path(__file__).resolve().parents[1] / "results"
TINY = {
    "model": {"arch": "cnn", "kernels": [8], "head_width": 0},
    "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
    "augment": {"crop": 44},
    "seed": 0,
}


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a dataset is parsed: the refusal must come first."""

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was parsed before the output was checked")

    monkeypatch.setattr(fer_tune.data.fer2013, "load_fer2013", parsed)
    monkeypatch.setattr(fer_tune.training.retraining, "load_fer2013", parsed)


@pytest.fixture
def search(tmp_path: Path) -> Path:
    """A copy of the committed CPU smoke search: a real search folder export and report read."""
    return Path(shutil.copytree(RESULTS / "smoke-cpu", tmp_path / "smoke-cpu"))


@pytest.fixture
def final(tmp_path: Path) -> Path:
    """A retrain folder of two seeds, as `fer-tune retrain` leaves it (untrained weights)."""
    root = tmp_path / "final"
    for seed in (0, 1):
        save_untrained({**TINY, "seed": seed}, root / f"seed_{seed}")
    (root / "config.yaml").write_text("# resolved by fer-tune retrain; seeds 0..1\n" + yaml.safe_dump(TINY))
    (root / "metrics.json").write_text('{"per_seed": {}}\n')
    return root


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


# -- export and export-model: never over a file they read ----------------------------------------------------


def test_export_into_its_own_search_folder_is_refused(search: Path, capsys: pytest.CaptureFixture) -> None:
    before = snapshot(search)
    assert main(["export", str(search), "-o", str(search / "space.yaml")]) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: -o {search / 'space.yaml'}: lies in the search folder {search}, whose files "
        "belong to that search; write outside it"
    )
    assert snapshot(search) == before
    assert main(["report", str(search), "--out", str(search.parent / "report")]) == 0  # still reads


@pytest.mark.parametrize("member", ["seed_0/model.pt", "seed_1/model.pt"])
def test_export_model_over_the_model_it_reads_is_refused(
    final: Path, member: str, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(final)
    argv = ["export-model", str(final), "--format", "torchscript", "-o", str(final / member)]
    assert main(argv) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: -o {final / member}: is {final / member}, which this command reads; writing it "
        "would lose it"
    )
    assert snapshot(final) == before
    run = final / "seed_0"  # a run folder and its own model.pt, as a relative path too
    assert main(["export-model", str(run), "--format", "torchscript", "-o", str(run / "model.pt")]) == 2
    assert "which this command reads" in one_line(capsys)
    assert snapshot(final) == before


def test_export_model_beside_the_model_is_fine(final: Path, capsys: pytest.CaptureFixture) -> None:
    out = final / "seed_0" / "model.torchscript.pt"
    assert main(["export-model", str(final / "seed_0"), "--format", "torchscript", "-o", str(out)]) == 0
    assert out.is_file()


# -- train, retrain, evaluate: never into a folder of another kind -------------------------------------------


def test_train_into_a_retrain_folder_is_refused(
    final: Path, config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_parse: None
) -> None:
    before = snapshot(final)
    data = str(tmp_path / "fer2013.csv")
    assert main(["train", str(config), "--data", data, "--out", str(final), "--epochs", "1"]) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: --out {final}: a retrain folder (it holds seed_<s>/ folders); this command writes "
        "a run folder there and would mix or replace its files: give a new folder"
    )
    seed = final / "seed_0"  # one of its seeds is part of it, not a run of its own
    assert main(["train", str(config), "--data", data, "--out", str(seed)]) == 2
    assert f"--out {seed}: a retrain folder (a seed of the retrain folder {final})" in one_line(capsys)
    assert snapshot(final) == before


def test_train_over_its_own_config_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, no_parse: None
) -> None:
    run = save_untrained(TINY, tmp_path / "run")
    RunConfig.from_dict(TINY).to_yaml(run / "config.yaml")
    before = snapshot(run)
    argv = ["train", str(run / "config.yaml"), "--data", str(tmp_path / "d.csv"), "--out", str(run)]
    assert main(argv) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: --out {run}: holds config.yaml, which this command reads and would write over; "
        "give another --out"
    )
    assert snapshot(run) == before


def test_retrain_into_a_run_folder_is_refused(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_parse: None
) -> None:
    run = save_untrained(TINY, tmp_path / "run")
    before = snapshot(run)
    assert main(["retrain", str(config), "--data", str(tmp_path / "d.csv"), "--out", str(run)]) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: --out {run}: a run folder (it holds model.pt); this command writes a retrain "
        "folder there and would mix or replace its files: give a new folder"
    )
    assert snapshot(run) == before


@pytest.mark.parametrize("command", ["train", "retrain", "evaluate"])
@pytest.mark.parametrize("where", ["", "final", "trial_346a8d90"])
def test_outputs_in_a_search_folder_are_refused(
    command: str,
    where: str,
    search: Path,
    config: Path,
    final: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_parse: None,
) -> None:
    out = search / where if where else search
    before = snapshot(search)
    data = str(tmp_path / "d.csv")
    source = str(final / "seed_0") if command == "evaluate" else str(config)
    assert main([command, source, "--data", data, "--out", str(out)]) == 2
    why = "is a search folder" if not where else f"lies in the search folder {search}"
    assert one_line(capsys) == (
        f"fer-tune: error: --out {out}: {why}, whose files belong to that search; write outside it"
    )
    assert snapshot(search) == before


def test_evaluate_into_another_models_folder_is_refused(
    final: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_parse: None
) -> None:
    before = snapshot(final)
    data = str(tmp_path / "d.csv")
    assert main(["evaluate", str(final / "seed_0"), "--data", data, "--out", str(final)]) == 2
    assert f"--out {final}: a retrain folder (it holds seed_<s>/ folders)" in one_line(capsys)
    assert main(["evaluate", str(final / "seed_0"), "--data", data, "--out", str(final / "seed_1")]) == 2
    assert f"--out {final / 'seed_1'}: a retrain folder (a seed of the retrain folder" in one_line(capsys)
    assert snapshot(final) == before


def test_a_search_into_a_search_or_run_folder_is_refused(
    search: Path, final: Path, data_csv: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["--space", "smoke", "--data", str(data_csv), "--gpus", "0"]
    before = snapshot(search)
    assert main([*argv, "--results", str(search), "--name", "nested"]) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: --results {search}: is a search folder, whose files belong to that search; "
        "write outside it"
    )
    assert snapshot(search) == before
    before = snapshot(final)
    assert main([*argv, "--results", str(final.parent), "--name", "final"]) == 2
    assert one_line(capsys).startswith(f"fer-tune: error: --name final: {final} is a retrain folder")
    assert snapshot(final) == before


# -- retrain --resume: refused before config.yaml is rewritten -----------------------------------------------


def test_retrain_resume_with_another_config_is_refused_before_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, one_thread: None
) -> None:
    data = make_fer({"Training": 8, "PublicTest": 2})
    csv = save_csv(data, tmp_path / "fer2013.csv")
    mine, other = tmp_path / "mine.yaml", tmp_path / "other.yaml"
    mine.write_text(yaml.safe_dump(TINY))
    other.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "lr": 0.5}}))
    out = tmp_path / "out"
    retrain(mine, data=data, out_dir=out, device="cpu")
    capsys.readouterr()
    before = snapshot(out)

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was parsed before the checkpoints were checked")

    with monkeypatch.context() as m:
        m.setattr(fer_tune.training.retraining, "load_fer2013", parsed)
        argv = ["retrain", str(other), "--data", str(csv), "--out", str(out), "--resume"]
        assert main(argv) == 2
        line = one_line(capsys)
    assert line.startswith(
        "fer-tune: error: train.lr: differs from the config of the checkpoint being resumed"
    )
    assert str(out / "seed_0" / "checkpoint.pt") in line
    assert snapshot(out) == before  # config.yaml still says what seed_0 was trained with
    # Its own config.yaml continues it: that file is read, and written again unchanged.
    argv = ["retrain", str(out / "config.yaml"), "--data", str(csv), "--out", str(out), "--resume"]
    assert main(argv) == 0
    assert "seed 0: continuing from" in capsys.readouterr().out
    assert RunConfig.from_yaml(out / "config.yaml") == RunConfig.from_yaml(mine)


# -- predict: never an annotated copy over a photo -----------------------------------------------------------


def test_predict_over_its_own_photo_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    run = save_untrained(TINY, tmp_path / "run")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(photos / "face.png")
    before = snapshot(photos)
    assert main(["predict", str(run), str(photos / "face.png"), "--no-detect", "--out", str(photos)]) == 2
    assert one_line(capsys) == (
        f"fer-tune: error: --out {photos}: the annotated copy of {photos / 'face.png'} would be written over "
        f"{photos / 'face.png'}, which this command reads; give another --out"
    )
    assert snapshot(photos) == before


# -- the check itself ----------------------------------------------------------------------------------------


def test_folder_kinds_and_a_new_folder(final: Path, search: Path, tmp_path: Path) -> None:
    assert folder_kind(search) == ("search", "it holds fer_tune.json")
    assert folder_kind(final)[0] == folder_kind(final / "seed_0")[0] == "retrain"
    assert folder_kind(save_untrained(TINY, tmp_path / "run")) == ("run", "it holds model.pt")
    assert folder_kind(tmp_path / "new") is None
    assert check_output(tmp_path / "new" / "out", "--out", writes=(), kind="run") == tmp_path / "new" / "out"
    assert not (tmp_path / "new").exists()  # checking writes nothing
