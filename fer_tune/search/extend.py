"""`fer-tune extend DIR --num-samples N`: grow a finished (or interrupted) search by a new phase.

A phase is a new Ray experiment (`results/<name>/phase<N>/`: Ray's `Tuner.restore` cannot change a
finished experiment's space or sample count) that shares the search's folder and its Optuna study, so TPE
starts from every earlier trial. See `fer_tune.search.folder` for the layout.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

from fer_tune.base import MAX_TRIALS, ConfigError, DataError, FerTuneError, check, check_writable, shown
from fer_tune.data import FER2013
from fer_tune.search.cluster import ray_session
from fer_tune.search.folder import SearchFolder, command_line
from fer_tune.search.ray_trials import ray_trials
from fer_tune.search.runner import Outcome, _check_tracking, _fit, _load
from fer_tune.search.sampler import choose_sampler
from fer_tune.search.space import Resources, Space, load_space, parse_duration
from fer_tune.search.state import Phase
from fer_tune.search.tuner import build_tuner


def extend_search(
    path: str | Path,
    num_samples: int,
    *,
    space: str | Path | None = None,
    time_budget: str | float | None = None,
    address: str | None = None,
    data: FER2013 | str | Path | None = None,
    verbose: bool = False,
) -> Outcome:
    """`fer-tune extend DIR --num-samples N`: N more trials in the same folder and Optuna study, so TPE starts
    from every earlier trial; `space` may narrow ranges and fix values, not widen them (`conversion.widens`).
    Earlier trials the new space could not have proposed stay in the results but are hidden from the sampler.
    `data` defaults to the search's (give it when the search was run on a FER2013 held in memory).

    Args:
        path: the search folder, local or a URI.
        num_samples: how many trials the new phase adds, at least 1.
        space: a space file for the new phase (narrowed ranges, fixed values, its own resources); None keeps
            the last phase's.
        time_budget: the new phase's wall-clock budget (`2h`, `90m`, seconds); None for none.
        address: a running Ray cluster's address; None to start one on this machine.
        data: the dataset or its path; None for the data the search used.
        verbose: Ray's own progress output instead of fer-tune's live view.

    Returns:
        The search folder and how the phase ended.

    Raises:
        ConfigError: the search has no Optuna study, `num_samples` outside 1..`MAX_TRIALS`, or the new space
            ranks by another metric, changes a parameter's kind or samples outside the search's space.
        DataError: the search has no optuna.db, or the data cannot be read.
        OutputError: the search folder cannot be written.
    """
    folder = SearchFolder.open(path, download=False)
    with folder.lock():  # one command at a time writes a search
        folder.download()  # a remote search: into its mirror, once the lock is held
        return _extend(folder, num_samples, space, time_budget, address, data, verbose)


def _extend(
    folder: SearchFolder,
    num_samples: int,
    space: str | Path | None,
    time_budget: str | float | None,
    address: str | None,
    data: FER2013 | str | Path | None,
    verbose: bool,
) -> Outcome:
    """The body of `extend_search`, under the folder's lock."""
    from optuna.trial import TrialState

    from fer_tune.search.conversion import outside
    from fer_tune.search.internals import set_trial_user_attr
    from fer_tune.search.searcher import LOST

    state = folder.read_state()
    before = folder.read_space()
    if not state.study or not before.search.uses_study:
        raise ConfigError(
            f"{folder.space_path(1)}: search.algorithm {before.search.algorithm}: extend continues an Optuna "
            "study, and this search has none"
        )
    if not folder.db_path.is_file():
        raise DataError(
            f"{folder.db_path}: no such file; the search predates optuna.db and cannot be extended"
        )
    ok = isinstance(num_samples, int) and not isinstance(num_samples, bool) and 1 <= num_samples <= MAX_TRIALS
    check(ok, "--num-samples", f"must be >= 1 and at most {MAX_TRIALS}, got {shown(num_samples)}")
    budget = parse_duration(time_budget, "--time-budget")
    new = _extension_space(before, space, num_samples, budget, folder)
    check_writable(folder.path, "search folder")
    data, _ = _load(state.data if data is None else data)
    study = folder.load_study()
    trials = study.get_trials(deepcopy=False)  # once: every trial's params and values from optuna.db
    numbers = {t.user_attrs.get("ray_trial_id"): t.number for t in trials}
    out = {t["trial_id"]: why for t in ray_trials(folder) if (why := outside(new, t["config"]))}
    # Earlier searches' trials the study started from (fer_tune.search.warm_start): hidden alike.
    warm = [t.number for t in trials if _warm_outside(new, t.user_attrs)]
    for t in (t for t in trials if t.state == TrialState.RUNNING):
        # An interrupted phase that is extended instead of resumed: its trials never end.
        set_trial_user_attr(study, t, LOST, f"phase {state.phase.number} extended, not resumed")
        study.tell(t.number, state=TrialState.FAIL)
    number = state.phase.number + 1
    now = datetime.now().isoformat(timespec="seconds")
    sampler = choose_sampler(new.search)  # auto: by this phase's --num-samples
    if new.search.algorithm == "auto":  # a choice fer-tune made: say it before the phase starts
        print(f"fer-tune: {sampler.why}")
    state.phases.append(
        Phase(
            number,
            new.source,
            num_samples,
            now,
            command=command_line(),
            outside=sorted(out),
            sampler=sampler.name,
            sampler_why=sampler.why,
        )
    )
    state.finished, state.ended = False, None
    _check_tracking(state.to_dict())
    with ray_session(address, state.cpus, state.gpus, verbose) as cluster:
        folder.write_space(new, number)
        folder.write_state(state)
        hidden = [numbers[t] for t in out if t in numbers] + warm
        print(
            f"fer-tune: extending {folder.path} by {num_samples} trials (phase {number}); "
            f"{len(hidden)} earlier trials lie outside {new.source} and do not steer the sampler"
        )
        tuner = build_tuner(new, data, folder, cluster, state, hidden=hidden)
        return Outcome(folder.path, _fit(tuner, new, folder, state, verbose))


def _warm_outside(space: Space, attrs: dict[str, Any]) -> bool:
    """Whether a study trial is a warm-start trial that `space` could not have proposed."""
    from fer_tune.search.conversion import outside
    from fer_tune.search.warm_start import WARM_CONFIG

    if WARM_CONFIG not in attrs:
        return False
    try:
        return outside(space, attrs[WARM_CONFIG]) is not None
    except FerTuneError:  # no longer a valid run config
        return True


def _extension_space(
    before: Space, path: str | Path | None, num_samples: int, budget: float | None, folder: SearchFolder
) -> Space:
    """The space of an extension: the given file (its resources default to the search's) or the last phase's,
    with `num_samples` and the time budget. It must rank as the study does, keep each parameter's kind, and
    sample nothing outside the search's own space (phase 1's: the report's distributions)."""
    from fer_tune.search.conversion import distribution, widens

    if path is None:
        new = dataclasses.replace(before, search=dataclasses.replace(before.search, time_budget_s=budget))
    else:
        new = load_space(path, time_budget_s=budget)
        if new.resources == Resources():  # none given: the resources the search measured or was given
            new.resources = before.resources
    new.search.num_samples = num_samples
    new.search.warm_start = []  # the study holds phase 1's warm trials: an extension adds none
    where = new.source
    if not new.search.uses_study:
        raise ConfigError(
            f"{where}: search.algorithm: {new.search.algorithm}; an extension continues an Optuna study "
            "(optuna, gp or auto)"
        )
    if (new.search.metric, new.search.mode) != (before.search.metric, before.search.mode):
        raise ConfigError(
            f"{where}: search.metric: {new.search.metric} ({new.search.mode}), but the study of "
            f"{folder.path} ranks by {before.search.metric} ({before.search.mode}); an extension keeps it"
        )
    for phase, _ in folder.experiment_dirs():
        old = {d.name: d for d in folder.read_space(phase).dists()}
        for d in new.dists():
            if d.name in old and type(distribution(d)) is not type(distribution(old[d.name])):
                raise ConfigError(
                    f"{where}: {d.path}: {d.kind} here but {old[d.name].kind} in phase {phase}; one Optuna "
                    "parameter cannot change its kind (start a new search instead)"
                )
    wider = widens(folder.read_space(1), new) if path is not None else None
    if wider:
        raise ConfigError(
            f"{where}: {wider}; an extension narrows the search's space (start a new search to widen it)"
        )
    return new
