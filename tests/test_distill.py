"""Distillation (`train.teacher`): the loss, the teacher's input, what a teacher changes, errors, the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_fer

from fer_tune.base import ConfigError, DataError
from fer_tune.cli import main
from fer_tune.data import FER2013, save_image_folder
from fer_tune.training import RunConfig, distill_loss, load_model, load_teacher, retrain, train

pytestmark = pytest.mark.usefixtures("one_thread")

NO_AUG = {"hflip": False, "rotation": 0, "crop": 0, "scale": 0, "erasing": 0, "mixup": 0, "cutmix": 0}


def tiny(epochs: int = 2, train: dict | None = None, aug: dict | None = None) -> dict:
    return {
        "model": {"arch": "cnn", "kernels": [8, 16], "head_width": 0},
        "train": {"epochs": epochs, "batch_size": 16, "warmup_epochs": 0, "lr": 0.02, **(train or {})},
        "augment": {**NO_AUG, "hflip": True, "crop": 44, **(aug or {})},
        "seed": 1,
    }


@pytest.fixture(scope="module")
def teachers(tiny_data: FER2013, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A retrain folder of 2 seeds (their ensemble is the teacher) trained on the tiny data."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = out / "teacher.yaml"
    cfg.write_text(yaml.safe_dump(tiny(3)))
    retrain(cfg, data=tiny_data, out_dir=out / "final", seeds=2)
    return out / "final"


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_model(folder / "model.pt")[0].state_dict()


def test_distill_loss_is_the_scaled_kl_and_zero_for_the_teachers_own_answer() -> None:
    s, t = torch.randn(8, 7), torch.randn(8, 7)
    assert distill_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    p_t, p_s = (t / 3).softmax(1), (s / 3).softmax(1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * 9
    assert distill_loss(s, t, 3.0).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert distill_loss(s, t, 3.0).item() > 0


def test_the_teacher_sees_its_own_normalisation(teachers: Path) -> None:
    """A student standardised by other statistics hands the teacher the pixels it was trained on."""
    model, meta = load_model(teachers / "seed_1" / "model.pt")
    pixels = torch.randint(0, 256, (4, 1, 44, 44)).float()
    own = model((pixels - meta["mean"]) / meta["std"])
    teacher = load_teacher(teachers / "seed_1", meta["input_size"], ("Training",), torch.device("cpu"))
    teacher.standardise_for(90.0, 40.0)
    assert teacher.scale != 1.0 and not any(p.requires_grad for p in teacher.parameters())
    torch.testing.assert_close(teacher((pixels - 90.0) / 40.0), own, atol=1e-4, rtol=1e-4)


def test_alpha_zero_changes_nothing_and_alpha_one_ignores_the_labels(
    tiny_data: FER2013, teachers: Path, tmp_path: Path
) -> None:
    teach = {"teacher": str(teachers)}
    wrong = FER2013(tiny_data.images, (tiny_data.labels + 3) % 7, tiny_data.usage, "shuffled labels")
    runs = {
        "plain": (tiny(), tiny_data),
        "alpha 0": (tiny(train={**teach, "distill_alpha": 0.0}), tiny_data),
        "alpha 1": (tiny(train={**teach, "distill_alpha": 1.0}), tiny_data),
        "alpha 1, wrong labels": (tiny(train={**teach, "distill_alpha": 1.0}), wrong),
    }
    w = {}
    for name, (cfg, data) in runs.items():
        train(cfg, data, out_dir=tmp_path / name)
        w[name] = weights(tmp_path / name)
    # The teacher is built without touching the student's random state: alpha 0 trains the same weights.
    for k, v in w["plain"].items():
        torch.testing.assert_close(w["alpha 0"][k], v, rtol=0, atol=0)
    # With alpha 1 all the student learns is the teacher's: the labels play no part.
    for k, v in w["alpha 1"].items():
        torch.testing.assert_close(w["alpha 1, wrong labels"][k], v, rtol=0, atol=0)
    assert any(not torch.equal(w["plain"][k], v) for k, v in w["alpha 1"].items())


def test_a_student_learns_the_teachers_answers_without_labels(tiny_data: FER2013, teachers: Path) -> None:
    """Only the teacher's probabilities to go by (alpha 1, labels all wrong), the student still learns the
    classes: it agrees with the teacher, and so scores far above chance on PublicTest."""
    training = tiny_data.usage == "Training"
    labels = np.where(training, (tiny_data.labels + 3) % 7, tiny_data.labels)  # PublicTest keeps its own
    wrong = FER2013(tiny_data.images, labels, tiny_data.usage, "wrong training labels")
    cfg = tiny(6, train={"teacher": str(teachers), "distill_alpha": 1.0, "distill_temperature": 1.0})
    student = train(cfg, wrong)
    teacher_acc = load_model(teachers / "seed_1" / "model.pt")[1]["best_val_acc"]
    assert teacher_acc > 0.5
    assert student["history"][-1]["val_acc"] > 0.5  # measured with the true labels; chance is 1/7


def test_resume_of_a_distilled_run_equals_the_uninterrupted_one(
    tiny_data: FER2013, teachers: Path, tmp_path: Path
) -> None:
    cfg = tiny(2, train={"teacher": str(teachers)}, aug={"mixup": 0.3})
    straight = train(cfg, tiny_data, out_dir=tmp_path / "straight")["history"]

    def report_then_die(metrics: dict, folder: Path) -> None:
        raise Stop

    with pytest.raises(Stop):
        train(cfg, tiny_data, out_dir=tmp_path / "cut", report=report_then_die)
    resumed = train(cfg, tiny_data, resume=tmp_path / "cut")["history"]
    timing = ("epoch_seconds", "images_per_second")
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed] == [
        {k: v for k, v in h.items() if k not in timing} for h in straight
    ]
    assert RunConfig.from_yaml(tmp_path / "straight" / "config.yaml").train.teacher == str(teachers)


class Stop(Exception):
    pass


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("distill_alpha", 1.5, r"train\.distill_alpha: must be in \[0, 1\]"),
        ("distill_temperature", 0.0, r"train\.distill_temperature: must be in \(0, 100\]"),
    ],
)
def test_bad_distillation_settings_name_the_key(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(tiny(train={key: value}))


def test_a_teacher_of_another_input_size_names_the_key(tiny_data: FER2013, teachers: Path) -> None:
    with pytest.raises(ConfigError, match=r"^train\.teacher: .* takes 44 px faces, this run 48 px"):
        train(tiny(train={"teacher": str(teachers)}, aug={"crop": 0}), tiny_data)


def test_a_teacher_inside_the_retrain_folder_is_refused(teachers: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny()))
    with pytest.raises(ConfigError, match=r"lies in the output folder .*: training would overwrite it"):
        retrain(cfg, data=tmp_path / "never-read", out_dir=teachers.parent, teacher=teachers)


def test_cli_distils_and_a_missing_teacher_is_one_line_before_the_data(
    tiny_data: FER2013, teachers: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(tiny(1)))
    absent = tmp_path / "no-teacher"
    for cmd in (
        ["train", str(cfg), "--out", str(tmp_path / "o")],
        ["retrain", str(cfg), "--out", str(tmp_path / "r")],
    ):
        assert main([*cmd, "--data", str(tmp_path / "no-data"), "--teacher", str(absent)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(absent) in err and "no-data" not in err

    data = save_image_folder(make_fer({"Training": 8, "PublicTest": 3}), tmp_path / "data")
    assert (
        main(
            ["train", str(cfg), "--data", str(data), "--out", str(tmp_path / "s"), "--teacher", str(teachers)]
        )
        == 0
    )
    _, meta = load_model(tmp_path / "s" / "model.pt")
    assert meta["config"]["train"]["teacher"] == str(teachers)
    assert np.isfinite(meta["best_val_acc"])


def test_a_missing_teacher_in_a_config_is_a_data_error(tiny_data: FER2013, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no-teacher: no such model file or folder"):
        train(tiny(train={"teacher": str(tmp_path / "no-teacher")}), tiny_data)


def test_the_teacher_stays_frozen_in_eval_mode(
    tiny_data: FER2013, teachers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fer_tune.training.trainer as train_module

    built = []

    def spy(*args, **kwargs):
        built.append(load_teacher(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(train_module, "load_teacher", spy)
    result = train(tiny(2, train={"teacher": str(teachers)}), tiny_data)
    (teacher,) = built
    assert not any(m.training for m in teacher.modules())  # batch-norm statistics and dropout frozen
    saved = {
        f"members.{i}.{k}": v
        for i, s in enumerate((1, 2))
        for k, v in weights(teachers / f"seed_{s}").items()
    }
    for k, v in teacher.model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    assert result["history"][-1]["epoch"] == 2


def test_a_teacher_trained_on_public_test_is_refused_for_a_held_out_student(
    tiny_data: FER2013, teachers: Path, tmp_path: Path
) -> None:
    with pytest.warns(UserWarning, match="PublicTest is trained on"):
        train(tiny(1, train={"train_on": "Training+PublicTest"}), tiny_data, out_dir=tmp_path / "saw")
    with pytest.raises(ConfigError, match=r"^train\.teacher: .*saw was trained on PublicTest"):
        train(tiny(1, train={"teacher": str(tmp_path / "saw")}), tiny_data)
    with pytest.warns(
        UserWarning, match="PublicTest is trained on"
    ):  # a student not held out either: allowed
        train(tiny(1, train={"teacher": str(tmp_path / "saw"), "train_on": "Training+PublicTest"}), tiny_data)


def test_cli_train_refuses_a_teacher_in_its_output_folder(
    teachers: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tmp_path / "student.yaml"
    cfg.write_text(yaml.safe_dump(tiny(1)))
    args = ["train", str(cfg), "--data", str(tmp_path / "no-data"), "--out", str(teachers), "--teacher"]
    assert main([*args, str(teachers / "seed_1")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.teacher" in err and "would overwrite it" in err


def test_a_relative_teacher_in_a_ray_trial_is_found_from_the_drivers_folder(
    tiny_data: FER2013, teachers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a trial's own folder
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(teachers.parent))  # what Ray sets for its trials
    result = train(tiny(1, train={"teacher": teachers.name}), tiny_data, out_dir=tmp_path / "s")
    assert load_model(tmp_path / "s")[1]["teacher"]["members"] == ["seed_1", "seed_2"]
    assert result["history"][-1]["epoch"] == 1
