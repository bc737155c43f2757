"""The Optuna sampler of a search: `search.algorithm` optuna (TPE), gp (GPSampler) or auto (one of them by the
planned trial count), behind `InSpaceSampler`, with warm starts and points tried first."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.samplers import GPSampler, TPESampler
from optuna.trial import TrialState

from fer_tune.cli import main
from fer_tune.search import InSpaceSampler, Phase, SearchFolder, SearchState, load_space, parse_space, tuner
from fer_tune.search import sampler as sampler_module
from fer_tune.search.internals import optuna_study
from fer_tune.search.sampler import AUTO_GP_BELOW, choose_sampler
from fer_tune.search.warm_start import WARM_TRIAL, add_warm_trials, read_warm_starts
from fer_tune.training import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "results" / "smoke-cpu"  # 10 trials of the smoke space: 5 ran all 5 epochs, 5 stopped early
TINY = {"model": {"arch": "cnn", "kernels": [8], "dropout": {"uniform": [0.0, 0.5]}}, "train": {"epochs": 2}}

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("algorithm", ["gp", "auto"])
def test_gp_and_auto_are_study_algorithms(algorithm: str) -> None:
    """They take what an Optuna search takes (recipes tried first, earlier searches) and round-trip."""
    search_block = {"algorithm": algorithm, "points_to_evaluate": [{"model": {"dropout": 0.1}}]}
    space = parse_space({**TINY, "search": {**search_block, "warm_start": ["x"]}})
    assert space.search.algorithm == algorithm and space.search.uses_study
    assert parse_space(space.to_dict()).search == space.search  # space.yaml keeps what was written: auto
    assert not parse_space({**TINY, "search": {"algorithm": "random"}}).search.uses_study


@pytest.mark.parametrize(
    ("algorithm", "num_samples", "name"),
    [
        ("auto", 1, "gp"),  # with scheduler none (below): every trial runs all its epochs
        ("auto", 60, "gp"),  # the cpu space's
        ("auto", AUTO_GP_BELOW - 1, "gp"),
        ("auto", AUTO_GP_BELOW, "tpe"),
        ("auto", 1000, "tpe"),
        ("optuna", 5, "tpe"),  # what a space names, whatever its trial count
        ("gp", 1000, "gp"),
        ("random", 5, "random"),
        ("grid", 1, "grid"),
    ],
)
def test_auto_chooses_gp_below_the_planned_trial_bound(algorithm: str, num_samples: int, name: str) -> None:
    block = {"algorithm": algorithm, "num_samples": num_samples, "scheduler": "none"}
    space = parse_space({**TINY, "search": block})
    choice = choose_sampler(space.search)
    assert choice.name == name
    assert choice.why.startswith("sampler: ") and "\n" not in choice.why and len(choice.why) < 200
    if algorithm == "auto":  # says why: the count against the bound, and whose guidance
        assert f"search.algorithm auto: {num_samples} planned trials" in choice.why
        assert "GPSampler" in choice.why if name == "gp" else "TPESampler" in choice.why
        assert "Optuna recommends GP for up to 500 trials, TPE for 100-1000" in choice.why


@pytest.mark.parametrize("num_samples", [1, 60, 1000])
def test_auto_chooses_tpe_when_trials_are_stopped_early(num_samples: int) -> None:
    """GP learns only from trials that ran all their epochs; under ASHA most do not."""
    space = parse_space({**TINY, "search": {"algorithm": "auto", "num_samples": num_samples}})
    assert space.search.scheduler == "asha"
    choice = choose_sampler(space.search)
    assert choice.name == "tpe" and "search.scheduler asha stops trials early" in choice.why


def test_the_sampler_kinds_and_their_arguments() -> None:
    tpe, gp = InSpaceSampler(seed=3).inner, InSpaceSampler(seed=3, kind="gp").inner
    assert type(tpe) is TPESampler and type(gp) is GPSampler
    with pytest.raises(ValueError, match="no Optuna sampler 'cmaes'"):
        InSpaceSampler(seed=0, kind="cmaes")


def _proposals(sampler: InSpaceSampler, space: Any, warm: list, n: int) -> list[dict[str, Any]]:
    """`n` configs the sampler proposes after the cpu reference's 21 warm trials and 7 scored at random."""
    study = optuna.create_study(direction="maximize", sampler=sampler)
    add_warm_trials(study, warm)
    suggest, rng = space.define_by_run(), random.Random(0)
    for _ in range(7):  # GP models COMPLETE trials only, from 10 on: the reference has 3
        trial = study.ask()
        suggest(trial)
        study.tell(trial, rng.uniform(0.4, 0.6))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial))
        study.tell(trial, rng.uniform(0.4, 0.6))
    return out


@pytest.mark.slow  # 5-12 s: GP fits its model five times
def test_gp_models_the_cpu_spaces_categorical_and_conditional_parameters(monkeypatch) -> None:
    """The cpu space has choices (arch, optimizer, scale) and keys of one family only: GP models the ones
    every complete trial has and draws the others at random, quietly; its proposals are valid run configs."""
    modelled: list[set[str]] = []
    relative = GPSampler.sample_relative

    def spy(self: GPSampler, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        params = relative(self, study, trial, search_space)
        modelled.append(set(params))
        return params

    monkeypatch.setattr(GPSampler, "sample_relative", spy)
    space = load_space("cpu")
    warm = read_warm_starts(space)
    configs = _proposals(InSpaceSampler(seed=0, kind="gp"), space, warm, n=2)
    shared = {"model/arch", "train/optimizer", "train/lr", "augment/scale"}
    assert len(modelled) >= 2 and modelled[-1] >= shared
    assert not any(name.startswith("model/families/") for name in modelled[-1])  # conditional: at random
    for config in configs:
        RunConfig.from_dict(config)
    # Seeded: the same proposal again.
    assert _proposals(InSpaceSampler(seed=0, kind="gp"), space, warm, n=1) == configs[:1]


def test_a_gp_sampler_pickles_and_an_older_pickled_sampler_loads(tmp_path: Path) -> None:
    """Ray pickles the searcher, sampler included, into tuner.pkl and its state: GP's fitted model too. A
    sampler pickled before GP held TPE as `_tpe`."""
    sampler = InSpaceSampler(seed=0, kind="gp", outside=[4])
    space = load_space("cpu")
    _proposals(sampler, space, read_warm_starts(space), n=1)
    again = pickle.loads(pickle.dumps(sampler))
    assert type(again.inner) is GPSampler and again._outside == frozenset({4})
    older = InSpaceSampler(seed=0).__dict__.copy()
    older["_tpe"] = older.pop("_inner")
    loaded = InSpaceSampler.__new__(InSpaceSampler)
    loaded.__setstate__(older)
    assert type(loaded.inner) is TPESampler and not hasattr(loaded, "_tpe")


@pytest.mark.parametrize(
    ("algorithm", "num_samples", "kind"),
    [
        ("gp", 3, GPSampler),
        ("auto", 3, GPSampler),
        ("auto", AUTO_GP_BELOW, TPESampler),
        ("optuna", 3, TPESampler),
    ],
)
def test_the_runners_searcher_samples_with_the_chosen_sampler_after_warm_trials_and_points(
    tmp_path: Path, monkeypatch, tiny_data, algorithm: str, num_samples: int, kind: type
) -> None:
    """The runner's own Tuner (Ray's Tuner captured, no cluster): the study the searcher asks holds the warm
    trials, then the recipe tried first, and samples with the sampler `search.algorithm` chose."""
    built: dict[str, Any] = {}
    monkeypatch.setattr("ray.tune.Tuner", lambda trainable, **kwargs: built.update(kwargs) or built)
    monkeypatch.setattr(tuner, "make_trainable", lambda space, data: "trainable")
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    point = {"model": {"kernels": [16, 32]}, "train": {"lr": 0.01}}
    raw["search"] |= {"algorithm": algorithm, "num_samples": num_samples, "points_to_evaluate": [point]}
    raw["search"]["scheduler"] = "none"  # auto picks GP only when no trial is stopped early
    raw["resources"]["gpus_per_trial"] = 0  # a CPU cluster
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))
    space = load_space(tmp_path / "space.yaml")
    folder = SearchFolder(tmp_path / "s")
    folder.path.mkdir()
    phases = [Phase(1, space.source, num_samples, "now")]
    state = SearchState("s", space.source, "data", "now", study="s", phases=phases)
    tuner.build_tuner(space, tiny_data, folder, {"CPU": 2.0}, state, warm=read_warm_starts(space, [SMOKE]))
    searcher = built["tune_config"].search_alg.searcher
    study = optuna_study(searcher)
    assert type(study.sampler.inner) is kind
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 5 and len(study.trials) == 11
    assert all(WARM_TRIAL in t.user_attrs for t in study.trials[:10])
    config = searcher.suggest("t1")  # the recipe first: its keys given, the rest sampled
    assert config["model"]["kernels"] == [16, 32] and config["train"]["lr"] == 0.01


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_gp_search_warm_started_from_a_committed_search(
    ray_cluster, data_csv: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """The smoke space with `algorithm: gp`, told results/smoke-cpu's 10 trials (5 complete): GP proposes
    its trials from its model (its start-up lowered to 2 complete trials), Ray runs them, and the search
    records and prints which sampler it used."""
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    monkeypatch.setattr(sampler_module, "STARTUP_TRIALS", 2)  # read when the driver builds the sampler
    proposed: list[dict[str, Any]] = []
    relative = GPSampler.sample_relative

    def spy(self: GPSampler, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
        params = relative(self, study, trial, search_space)
        proposed.append(params)
        return params

    monkeypatch.setattr(GPSampler, "sample_relative", spy)
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw["search"] |= {"algorithm": "gp", "num_samples": 2, "max_concurrent": 1}
    raw["resources"]["gpus_per_trial"] = 0
    (tmp_path / "gp.yaml").write_text(yaml.safe_dump(raw))
    argv = ["--space", str(tmp_path / "gp.yaml"), "--data", str(data_csv), "--gpus", "0"]
    argv += ["--results", str(tmp_path / "r"), "--name", "gp", "--warm-start", str(SMOKE)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fer-tune: warm start: 10 trials from " in out
    assert out.count("fer-tune: sampler: Optuna's GPSampler (search.algorithm gp)") == 1  # under the summary
    folder = SearchFolder(tmp_path / "r" / "gp")
    state = json.loads((folder / "fer_tune.json").read_text())
    assert state["phases"][0]["sampler"] == "gp" and "GPSampler" in state["phases"][0]["sampler_why"]
    study = folder.load_study()
    own = [t for t in study.trials if "ray_trial_id" in t.user_attrs]
    assert len(study.trials) == 12 and len(own) == 2 and all(t.state.is_finished() for t in own)
    assert len([p for p in proposed if p]) >= 2  # each trial's shared parameters came from GP's model
