"""`InSpaceSampler`: Optuna's TPE sampler that learns only from the study trials of the space it samples."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from optuna import Study
from optuna.samplers import BaseSampler, TPESampler
from optuna.trial import FrozenTrial

from fer_tune.search.internals import study_trials


class InSpaceSampler(BaseSampler):
    """Optuna's TPE learning only from the trials the current phase's space could have proposed.

    `fer-tune extend` with a narrower space keeps earlier trials outside it in the study (and the results),
    but they must not steer the sampler: TPE is shown the study without them (`outside`: trial numbers).

    Args:
        seed: seeds TPE; None for a random seed.
        outside: numbers of the study trials TPE must not see.
    """

    def __init__(self, seed: int | None, outside: Iterable[int] = ()) -> None:
        self._tpe = TPESampler(seed=seed)
        self._outside = frozenset(outside)

    def _view(self, study: Study) -> Any:
        return _StudyView(study, self._outside) if self._outside else study

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, Any]:
        """TPE's, on the study without the hidden trials (Optuna's `BaseSampler` interface).

        Args:
            study: the study.
            trial: the trial being sampled.

        Returns:
            Parameter name -> distribution, as TPE infers it.
        """
        return self._tpe.infer_relative_search_space(self._view(study), trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, Any]
    ) -> dict[str, Any]:
        """TPE's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial being sampled.
            search_space: what `infer_relative_search_space` returned.

        Returns:
            Parameter name -> sampled value.
        """
        return self._tpe.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, name: str, distribution: Any) -> Any:
        """TPE's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial being sampled.
            name: the parameter's name.
            distribution: its Optuna distribution.

        Returns:
            The sampled value.
        """
        return self._tpe.sample_independent(self._view(study), trial, name, distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """TPE's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the trial about to be sampled.
        """
        self._tpe.before_trial(self._view(study), trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: Any, values: Any) -> None:
        """TPE's, on the study without the hidden trials.

        Args:
            study: the study.
            trial: the finished trial.
            state: its `TrialState`.
            values: its objective values; None when it failed.
        """
        self._tpe.after_trial(self._view(study), trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed TPE's random number generator."""
        self._tpe.reseed_rng()


class _StudyView:
    """A study whose trial lists leave out some trial numbers (everything else is the study's).

    TPE reads trials through Optuna's private `Study._get_trials`, so the view defines it too: see
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
