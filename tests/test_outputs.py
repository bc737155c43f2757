"""Output folders (`--out`, `--results`) are test-written before any data is parsed or Ray starts.

Tests run as root here, which passes any permission check, so an unwritable folder is a path under a regular
file (`Not a directory`) and a full disk is an `fsync` that fails with ENOSPC.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml
from conftest import make_fer

import fer_tune.data.fer2013
import fer_tune.training.retraining
from fer_tune.base import OutputError, check_writable
from fer_tune.cli import main
from fer_tune.training import train

TINY = {
    "model": {"arch": "cnn", "kernels": [8], "head_width": 0},
    "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0},
}
COMMANDS = ["train", "evaluate", "retrain", "search"]


@pytest.fixture
def no_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a dataset is parsed: the output check must come first."""

    def parsed(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data was parsed before the output folder was checked")

    monkeypatch.setattr(fer_tune.data.fer2013, "load_fer2013", parsed)
    monkeypatch.setattr(fer_tune.training.retraining, "load_fer2013", parsed)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train(TINY, make_fer({"Training": 5, "PublicTest": 2}), out_dir=out)
    return out


def command(name: str, tmp_path: Path, model_dir: Path, out: Path) -> list[str]:
    """The command with a good config or model, an absent data path and `out` as its output folder."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    data = str(tmp_path / "absent.csv")
    return {
        "train": ["train", str(cfg), "--data", data, "--out", str(out)],
        "evaluate": ["evaluate", str(model_dir), "--data", data, "--out", str(out)],
        "retrain": ["retrain", str(cfg), "--data", data, "--out", str(out)],
        "search": ["--space", "smoke", "--data", data, "--gpus", "0", "--results", str(out)],
    }[name]


def one_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize("name", COMMANDS)
def test_output_under_a_file_fails_first_with_one_line(
    name: str, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, no_parse: None
) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "out"
    assert main(command(name, tmp_path, model_dir, out)) == 2
    flag = "--results" if name == "search" else "--out"
    assert one_line(capsys) == f"fer-tune: error: {flag} {out}: cannot write there: Not a directory"


@pytest.mark.parametrize("name", COMMANDS)
def test_full_disk_fails_first_with_one_line(
    name: str,
    model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    no_parse: None,
    full_disk: None,
) -> None:
    out = tmp_path / "new" / "out"
    assert main(command(name, tmp_path, model_dir, out)) == 2
    assert one_line(capsys).endswith(f" {out}: cannot write there: No space left on device")
    assert list(out.iterdir()) == []  # the probe file is gone


def test_an_existing_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("keep")
    with pytest.raises(OutputError, match=r"^--out .*/f: cannot write there: a file, not a folder$"):
        check_writable(tmp_path / "f", "--out")
    assert (tmp_path / "f").read_text() == "keep"


def test_a_writable_folder_is_created_and_left_clean(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_report_out_is_checked_before_anything_is_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fer_tune.analysis.report as report

    monkeypatch.setattr(report, "_load", lambda d: (None, None))  # the results: never looked at
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "report"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert one_line(capsys) == f"fer-tune: error: --out {out}: cannot write there: Not a directory"
