"""Search spaces: the bundled ones sample valid run configs; every invalid space fails before Ray starts."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from fer_tune.base import ConfigError
from fer_tune.cli import main
from fer_tune.data import find_data
from fer_tune.search import Dist, bundled_names, load_space, parse_duration, parse_space
from fer_tune.search import runner as search
from fer_tune.training import RunConfig

TINY = {"model": {"arch": "cnn", "kernels": [8]}, "train": {"epochs": 2, "warmup_epochs": 0}}


def test_bundled_spaces_are_all_there() -> None:
    assert set(bundled_names()) >= {"cnn", "resnet", "cnn_lstm", "attention", "vgg", "all", "smoke"}


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_space_samples_valid_run_configs(name: str) -> None:
    space = load_space(name)
    configs = space.sample(n=5, seed=1)
    assert len(configs) >= 7
    for config in configs:
        RunConfig.from_dict(config)  # raises on an invalid sample
    # Ray's API form and the Optuna define-by-run form both build; the latter survives OptunaSearch's pickle.
    assert set(space.param_space()) >= {"model", "train"}
    pickle.loads(pickle.dumps(space.define_by_run()))


def test_bare_name_and_file_name_resolve_to_the_bundled_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_space("resnet").source == load_space("resnet.yaml").source
    assert Path(load_space("resnet").source).name == "resnet.yaml"


def test_all_space_draws_every_family_with_its_own_keys() -> None:
    space = load_space("all")
    archs = {c["model"]["arch"] for c in space.sample(n=2)}
    assert archs == {"cnn", "resnet", "cnn_lstm", "attention", "vgg"}
    for c in space.sample(n=2):
        model = RunConfig.from_dict(c).model
        if c["model"]["arch"] == "attention":
            assert model.heads in (4, 8)
        assert "families" not in c["model"]


def test_optuna_search_suggests_exactly_the_run_config() -> None:
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("all")
    searcher = OptunaSearch(space=space.define_by_run(), metric="val_acc", mode="max", seed=0)
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        assert set(config) == {"model", "train", "augment", "seed"}  # no Optuna parameter names leak in
        assert RunConfig.from_dict(config).to_dict()["train"]["lr"] == config["train"]["lr"]


def test_per_layer_widths_and_choices_of_lists() -> None:
    raw = {
        "model": {"arch": "cnn", "kernels": [{"choice": [8, 16]}, {"quniform": [16, 64, 16]}]},
        "train": {"epochs": 2, "warmup_epochs": 0, "batch_size": {"choice": [16, 32]}},
    }
    space = parse_space(raw)
    for c in space.sample(n=5):
        assert c["model"]["kernels"][0] in (8, 16) and c["model"]["kernels"][1] in (16, 32, 48, 64)
    raw["model"]["kernels"] = {"choice": [[8], [8, 16]]}
    assert {tuple(c["model"]["kernels"]) for c in parse_space(raw).sample(n=8)} == {(8,), (8, 16)}


def test_grid_with_families_expands_in_ray() -> None:
    from ray.tune.search.variant_generator import generate_variants

    raw = {
        "search": {"algorithm": "grid"},
        "model": {
            "arch": {"grid": ["cnn", "resnet"]},
            "families": {"cnn": {"kernels": {"grid": [[8], [16]]}}, "resnet": {"kernels": [8, 16]}},
        },
        "train": {"epochs": 2, "warmup_epochs": 0, "lr": {"grid": [0.01, 0.1]}},
    }
    space = parse_space(raw)
    variants = [v for _, v in generate_variants(space.param_space())]
    assert len(variants) == space.grid_size() == 6
    for v in variants:
        RunConfig.from_dict(v)


def test_search_block_and_overrides() -> None:
    raw = {
        **TINY,
        "search": {"num_samples": 3, "scheduler": {"type": "asha", "grace_period": 2}, "time_budget": "90m"},
    }
    space = parse_space(raw, num_samples=7, gpus_per_trial=0.25)
    assert space.search.num_samples == 7 and space.search.grace_period == 2
    assert space.search.time_budget_s == 5400 and space.resources.gpus_per_trial == 0.25
    again = parse_space(space.to_dict())  # space.yaml round-trips
    assert again.search == space.search and again.resources == space.resources
    assert [d.path for d in again.dists()] == [d.path for d in space.dists()]


@pytest.mark.parametrize(
    ("text", "seconds"), [("90m", 5400), ("2h", 7200), ("3600s", 3600), ("45", 45), (1.5, 1.5)]
)
def test_parse_duration(text, seconds) -> None:
    assert parse_duration(text) == seconds


INVALID = [
    ("model:\n  arch: cnn\n  kernels: {choise: [8, 16]}\n", "model.kernels", "choise"),
    ("model: {arch: cnn}\ntrain: {lrr: 0.1}\n", "train.lrr", "unknown key"),
    ("model: {arch: {choice: [cnn, nosuch]}}\n", "model.arch", "nosuch"),
    (
        "model:\n  arch: {choice: [cnn, resnet]}\n  families: {nosuch: {}}\n",
        "model.families.nosuch",
        "unknown",
    ),
    ("model: {arch: cnn}\ntrain: {lr: {loguniform: [0.1, 0.001]}}\n", "train.lr", "low"),
    ("model: {arch: cnn}\ntrain: {batch_size: {randint: [64, 8]}}\n", "train.batch_size", "low"),
    ("model: {arch: cnn}\ntrain: {optimizer: {choice: []}}\n", "train.optimizer", "at least one"),
    ("model: {arch: cnn}\ntrain: {lr: -1}\n", "train.lr", "> 0"),
    (
        "model:\n  arch: {choice: [cnn, resnet]}\n  families: {cnn: {kernels: {choice: [[8], [0]]}}}\n",
        "model.families.cnn.kernels",
        "widths",
    ),
    ("model: {arch: cnn}\ntrain: {lr: {grid: [0.1, 0.01]}}\n", "train.lr", "grid"),
    ("model: {arch: cnn}\nsearch: {scheduler: {type: hyperband}}\n", "search.scheduler.type", "hyperband"),
    ("model: {arch: cnn}\nresources: {gpus_per_trial: 0.3}\n", "resources.gpus_per_trial", "divide"),
    ("model: {arch: cnn}\nsearh: {}\n", "searh", "unknown key"),
    ("model: {arch: cnn\n", "", "invalid YAML"),
    # Selection is on PublicTest: a space may not train on it, fixed or sampled.
    ("model: {arch: cnn}\ntrain: {train_on: Training+PublicTest}\n", "train.train_on", "may not train on it"),
    (
        "model: {arch: cnn}\ntrain: {train_on: {choice: [Training, Training+PublicTest]}}\n",
        "train.train_on",
        "may not train on it",
    ),
    ("model: {arch: cnn}\nsearch: {metric: accuracy}\n", "search.metric", "unknown metric 'accuracy'"),
    ("model: {arch: cnn}\nsearch: {metric: val_loss, mode: max}\n", "search.mode", "contradicts"),
    ("model: {arch: cnn}\nsearch: {metric: val_acc, mode: min}\n", "search.mode", "contradicts"),
    ("model: {arch: cnn}\nsearch: {metric: lr}\n", "search.mode", "required"),
    ("model: {arch: cnn}\nsearch: {stuck_epochs: 1}\n", "search.stuck_epochs", "0 or >= 2"),
    ("model: {arch: cnn}\nsearch: {retrain_epochs: 0}\n", "search.retrain_epochs", "must be >= 1"),
    ("model: {arch: cnn}\nsearch: {points_to_evaluate: {lr: 1}}\n", "search.points_to_evaluate", "a list"),
    (
        "model: {arch: cnn}\ntrain: {lr: {loguniform: [0.001, 0.1]}}\n"
        "search: {points_to_evaluate: [{train: {lr: 0.5}}]}\n",
        "search.points_to_evaluate.0.train.lr",
        "0.5 not in loguniform",
    ),
    (
        "model: {arch: cnn}\ntrain: {lr: {loguniform: [0.001, 0.1]}}\n"
        "search: {points_to_evaluate: [{train: {wd: 0.1}}]}\n",
        "search.points_to_evaluate.0.train.wd",
        "not a key this space samples",
    ),
    (
        "model:\n  arch: {choice: [cnn, vgg]}\n  families: {cnn: {dropout: {uniform: [0, 0.5]}}}\n"
        "search: {points_to_evaluate: [{model: {dropout: 0.1}}]}\n",
        "search.points_to_evaluate.0.model.arch",
        "missing",
    ),
    (
        "model: {arch: cnn, dropout: {uniform: [0, 0.5]}}\n"
        "search: {algorithm: random, points_to_evaluate: [{model: {dropout: 0.1}}]}\n",
        "search.points_to_evaluate",
        "needs search.algorithm: optuna, gp or auto, not random",
    ),
    (
        "model: {arch: cnn}\nsearch: {algorithm: bayes}\n",
        "search.algorithm",
        "must be one of ('optuna', 'gp', 'auto', 'random', 'grid'), got 'bayes'",
    ),
]


@pytest.mark.parametrize(("text", "key", "words"), INVALID)
def test_invalid_space_fails_before_ray_with_one_line(
    tmp_path: Path, monkeypatch, capsys, text, key, words
) -> None:
    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started for an invalid space")

    monkeypatch.setattr(search, "ray_session", no_ray)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    (tmp_path / "fer2013.csv").write_text("emotion,pixels,Usage\n")
    assert main(["--space", str(path), "--data", str(tmp_path / "fer2013.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"fer-tune: error: {path}: {key}"), err
    assert words in err


def test_missing_space_file_names_the_bundled_ones(capsys) -> None:
    assert main(["--space", "nosuch_space"]) == 2
    err = capsys.readouterr().err
    assert "nosuch_space: no such search space file" in err and "resnet" in err


def test_missing_data_says_where_it_looked_and_where_fer2013_comes_from(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FER_TUNE_DATA", raising=False)
    with pytest.raises(Exception, match="kaggle.com") as e:
        find_data(None, None)
    assert str(tmp_path) in str(e.value)
    (tmp_path / "icml_face_data.csv").write_text("")
    assert find_data(None, None) == tmp_path / "icml_face_data.csv"
    monkeypatch.setenv("FER_TUNE_DATA", str(tmp_path / "nope.csv"))
    with pytest.raises(Exception, match=r"nope.csv.*FER_TUNE_DATA"):
        find_data(None, "other.csv")


def test_dist_names_are_key_paths() -> None:
    space = parse_space(
        {"model": {"arch": "cnn", "kernels": [{"choice": [8, 16]}]}, "seed": {"choice": [0, 1]}}
    )
    assert {d.name for d in space.dists()} == {"model/kernels/0", "seed"}
    assert isinstance(space.groups["seed"], Dist)
    with pytest.raises(ConfigError, match="^model: missing"):
        parse_space({"train": {}})
    assert yaml.safe_load(yaml.safe_dump(space.to_dict()))["seed"] == {"choice": [0, 1]}


def test_progress_columns_hold_only_keys_every_trial_has() -> None:
    """Ray's CLIReporter raises KeyError on a column a trial's config lacks (seen: all-families spaces)."""
    from fer_tune.search.tuner import progress_columns

    space = load_space("reference")
    columns = progress_columns(space, limit=50)
    assert "model/arch" in columns and "train/lr" in columns and "model/dropout" in columns
    assert "model/blocks_per_stage" not in columns and "model/head_layers" not in columns
    assert "model/kernels" in columns  # both families sample their widths
    assert "model/blocks_per_stage" in space.varied_keys()
