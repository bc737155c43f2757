"""The Optuna sampler of a search: TPE or GP, chosen by `search.algorithm` (`choose_sampler`), and shown
only the study trials of the space it samples (`InSpaceSampler`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna import Study
from optuna.samplers import BaseSampler, GPSampler, TPESampler
from optuna.trial import FrozenTrial

from fer_tune.search.internals import study_trials

if TYPE_CHECKING:
    from fer_tune.search.space_options import SearchSettings

# `search.algorithm: auto` takes GPSampler for a search of fewer planned trials (`search.num_samples`) than
# this, TPESampler from it on. Not measured on FER2013 yet. Optuna's published guidance, the row "Recommended
# budgets (#trials)" of the table in its samplers reference (optuna.readthedocs.io/en/stable/reference/
# samplers/index.html, docs/source/reference/samplers/index.rst in its repository, unchanged from v4.6 to
# v5.0.0-rc1; the installed package's docstrings give no budget): TPESampler 100-1000 trials, GPSampler up
# to 500 (10-100 is BoTorchSampler's). Below 100 only GP's range holds a search; from 100 TPE's does too,
# and TPE stays: a proposal costs it O(dn log n) against GP's O(n^3), and it learns from the trials ASHA
# stopped, which GP never sees. Optuna's own AutoSampler (OptunaHub, samplers/auto_sampler) goes further:
# TPE for any space with a categorical or conditional parameter (every bundled space has both).
# `benchmarks/bench_search.py --arms warm,gp,random` measures GP against TPE on FER2013: change the rule
# (this constant and `choose_sampler`) when it has.
AUTO_GP_BELOW = 100
# Configs sampled at random before the model proposes: Optuna's default for both samplers. TPE counts every
# finished trial, pruned ones too; GP only the COMPLETE ones (those that ran all their epochs).
STARTUP_TRIALS = 10
SAMPLER_NAMES = {"tpe": "Optuna's TPESampler", "gp": "Optuna's GPSampler"}


@dataclass(frozen=True)
class SamplerChoice:
    """The sampler of a search and why.

    Args:
        name: `tpe` or `gp` (an Optuna study's sampler), `random` or `grid` (Ray's search algorithms).
        why: one line saying which and why (`sampler: Optuna's GPSampler (search.algorithm auto: ...)`).
    """

    name: str
    why: str


def choose_sampler(search: SearchSettings) -> SamplerChoice:
    """The sampler `search.algorithm` names; for `auto`, GP below `AUTO_GP_BELOW` planned trials when no
    trial is stopped early (`search.scheduler: none`), else TPE.

    Args:
        search: the search block; `num_samples` is the planned trial count (of this phase, for an extension).

    Returns:
        The choice and its one-line reason, which the search prints and records in `fer_tune.json`.
    """
    algorithm, n = search.algorithm, search.num_samples
    if algorithm == "auto":
        if search.scheduler != "none":  # GP learns only from trials that ran all their epochs
            name = "tpe"
            why = (
                f"search.algorithm auto: search.scheduler {search.scheduler} stops trials early, and GP "
                "learns only from those that ran all their epochs"
            )
        else:
            name = "gp" if n < AUTO_GP_BELOW else "tpe"
            rule = f"under {AUTO_GP_BELOW}" if name == "gp" else f"{AUTO_GP_BELOW} or more"
            why = (
                f"search.algorithm auto: {n} planned trials, {rule}, none stopped early; Optuna recommends "
                "GP for up to 500 trials, TPE for 100-1000"
            )
        return SamplerChoice(name, f"sampler: {SAMPLER_NAMES[name]} ({why})")
    name = {"optuna": "tpe"}.get(algorithm, algorithm)
    shown = SAMPLER_NAMES.get(name, f"Ray's {name} search")
    return SamplerChoice(name, f"sampler: {shown} (search.algorithm {algorithm})")


def make_sampler(name: str, seed: int | None) -> BaseSampler:
    """Optuna's sampler of that name, seeded.

    GP is Optuna's defaults but for `warn_independent_sampling`: a parameter that only some configs have (a
    family's own, `model.families.<arch>.*`) is outside the search space GP models (the parameters every
    complete trial has) and is drawn at random, by its `RandomSampler` seeded alike; Optuna would log that
    for every such parameter of every trial. `deterministic_objective` stays False: another training seed
    moves `val_acc` by about a point, so GP fits the noise too.

    Args:
        name: `tpe` or `gp`.
        seed: seeds it; None for a random seed.

    Returns:
        The sampler.
    """
    if name == "gp":
        return GPSampler(
            seed=seed,
            n_startup_trials=STARTUP_TRIALS,
            deterministic_objective=False,
            warn_independent_sampling=False,
        )
    if name == "tpe":
        return TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS)
    raise ValueError(f"no Optuna sampler {name!r}; expected tpe or gp")


class InSpaceSampler(BaseSampler):
    """Optuna's TPE or GP, learning only from the trials the current phase's space could have proposed.

    `fer-tune extend` with a narrower space keeps earlier trials outside it in the study (and the results),
    but they must not steer the sampler: it is shown the study without them (`outside`: trial numbers).

    Args:
        seed: seeds the sampler; None for a random seed.
        outside: numbers of the study trials the sampler must not see.
        kind: `tpe` or `gp` (`make_sampler`).
    """

    def __init__(self, seed: int | None, outside: Iterable[int] = (), kind: str = "tpe") -> None:
        self._inner = make_sampler(kind, seed)
        self._outside = frozenset(outside)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Pickled (in a search's tuner.pkl and searcher state) before GP: the sampler was always TPE, `_tpe`.
        if "_tpe" in state:
            state["_inner"] = state.pop("_tpe")
        self.__dict__.update(state)

    @property
    def inner(self) -> BaseSampler:
        """The Optuna sampler that proposes (`TPESampler` or `GPSampler`)."""
        return self._inner

    def _view(self, study: Study) -> Any:
        return _StudyView(study, self._outside) if self._outside else study

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        """The sampler's, on the study without the hidden trials (Optuna's `BaseSampler` interface).

        Args:
            study: the study.
            trial: the trial being sampled.

        Returns:
            Parameter name -> distribution, as the sampler infers it.
        """
        return self._inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        """The sampler's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial being sampled.
            search_space: what `infer_relative_search_space` returned.

        Returns:
            Parameter name -> sampled value.
        """
        return self._inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        """The sampler's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial being sampled.
            name: the parameter's name.
            distribution: its Optuna distribution.

        Returns:
            The sampled value.
        """
        return self._inner.sample_independent(self._view(study), trial, name, distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """The sampler's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial about to be sampled.
        """
        self._inner.before_trial(self._view(study), trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        """The sampler's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the finished trial.
            state: its `TrialState`.
            values: its objective values; None when it failed.
        """
        self._inner.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed the sampler's random number generators."""
        self._inner.reseed_rng()


class _StudyView:
    """A study whose trial lists leave out some trial numbers (everything else is the study's).

    TPE and GP read trials through Optuna's private `Study._get_trials`, so the view defines it too: see
    `fer_tune.search.internals.OVERRIDES`.
    """

    def __init__(self, study: Study, hidden: frozenset[int]) -> None:
        self._study, self._hidden = study, hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in study_trials(self._study, *args, **kwargs) if t.number not in self._hidden]

    def get_trials(self, *args: Any, **kwargs: Any) -> list[FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if t.number not in self._hidden]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()
