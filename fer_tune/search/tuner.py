"""Ray's `Tuner` of a search phase: the searcher (Optuna with its warm start and given points, or
random/grid), ASHA, the stoppers (the time budget, the retrain's reserve, stuck trials) and the driver's
callbacks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fer_tune.data import FER2013
from fer_tune.search.folder import SearchFolder, SearchState
from fer_tune.search.internals import optuna_study
from fer_tune.search.job_budget import JobBudget
from fer_tune.search.resources import trial_slots
from fer_tune.search.sampler import InSpaceSampler, choose_sampler
from fer_tune.search.space import Dist, Space
from fer_tune.search.trainable import TRIAL_SPLITS, make_trainable, trial_dirname
from fer_tune.search.wandb_runs import WandbTracking

if TYPE_CHECKING:  # imported where used: reading earlier searches needs pandas
    from fer_tune.search.warm_start import WarmStart


def progress_columns(space: Space, limit: int = 8) -> list[str]:
    """Varied keys every trial's config has: Ray's reporter raises KeyError on a key a trial lacks (a key
    of one model family in a trial of another).

    Args:
        space: the search space.
        limit: the most keys to return.

    Returns:
        Keys in Ray's `/` spelling (`train/lr`), in the space's order.
    """
    model = space.groups.get("model", {})
    arch = model.get("arch")
    archs = list(arch.args) if isinstance(arch, Dist) else []

    def in_every_trial(key: str) -> bool:
        parts = key.split("/")
        if parts[0] != "model" or not space.families or parts[1] in model:
            return True
        return all(parts[1] in space.families.get(a, {}) for a in archs)

    return [k for k in space.varied_keys() if in_every_trial(k)][:limit]


def build_tuner(
    space: Space,
    data: FER2013,
    folder: SearchFolder,
    cluster: dict[str, float],
    state: SearchState,
    hidden: list[int] | None = None,
    warm: Sequence[WarmStart] = (),
    job: JobBudget | None = None,
) -> Any:
    """Ray's Tuner of the state's latest phase; `hidden`: study trials its sampler must not learn from;
    `warm`: earlier searches' trials the new study starts from; `job`: the budget it shares with a retrain."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.stopper import CombinedStopper

    from fer_tune.search.budget_stopper import BudgetStopper
    from fer_tune.search.conversion import point_params
    from fer_tune.search.progress import LiveReporter
    from fer_tune.search.searcher import BestEpochOptunaSearch
    from fer_tune.search.stop_log import StopLog
    from fer_tune.search.stuck_stopper import StuckStopper
    from fer_tune.search.warm_start import add_warm_trials

    s = space.search
    slots = s.max_concurrent or trial_slots(space, cluster)
    if s.uses_study:
        phase = state.phase.number
        searcher = BestEpochOptunaSearch(
            space=space.define_by_run(),
            metric=s.metric,
            mode=s.mode,
            # Each phase its own seed: the same one would replay the earlier phase's random start-up trials.
            sampler=InSpaceSampler(
                seed=s.seed + phase - 1, outside=hidden or (), kind=choose_sampler(s).name
            ),
            storage=folder.storage(),
            study_name=state.study,
            phase=phase,
        )
        search_alg = ConcurrencyLimiter(searcher, slots)
        study = optuna_study(searcher)
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5
            warnings.simplefilter("ignore")
            study.set_metric_names([s.metric])  # the dashboard shows val_acc
        if phase == 1 and not study.trials:  # a new search (a resume restores its study, warm trials and all)
            add_warm_trials(study, warm)  # told before any trial is asked: the first proposal uses them
            # Not Ray's points_to_evaluate: OptunaSearch would enqueue them again into the study it reopens.
            for point in s.points_to_evaluate:
                study.enqueue_trial(point_params(space, point))
        param_space: dict[str, Any] = {}
    else:
        search_alg = BasicVariantGenerator(random_state=s.seed, max_concurrent=slots)
        param_space = space.param_space()
    scheduler = None
    if s.scheduler == "asha":
        max_t = s.max_t or space.max_epochs()
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=max_t,
            grace_period=min(s.grace_period, max_t),
            reduction_factor=s.reduction_factor,
        )
    # Ray's TimeoutStopper stops running trials too; StopLog records them as stopped by the time budget.
    reserve = None
    if job is not None and s.time_budget_s:  # the search leaves the retrain its fewest epochs
        from fer_tune.search.retrain_reserve import RetrainReserve

        retrain_s = job.total_s - job.search_s
        reserve = RetrainReserve(
            folder.path, job.seeds, retrain_s, data.sizes(), s.retrain_epochs, s.metric, s.mode
        )
    stopper = BudgetStopper(s.time_budget_s, reserve) if s.time_budget_s else None
    stop: Any = stopper
    if s.stuck_epochs:
        import numpy as np

        # What trials see (PrivateTest stays out of every decision); labels only: no copy of the images.
        labels = data.labels[np.isin(data.usage, TRIAL_SPLITS)]
        chance = float(np.bincount(labels).max() / max(len(labels), 1)) + 0.05
        stop = StuckStopper(s.stuck_epochs, chance)
        stop = CombinedStopper(stopper, stop) if stopper is not None else stop
    callbacks: list[Any] = [
        StopLog(stopper, search_alg if s.uses_study else None, trial_timeout_s=s.trial_timeout_s)
    ]
    if reserve is not None:
        callbacks.append(reserve)
    tracking = WandbTracking.from_state(state.to_dict())
    if tracking is not None:
        from fer_tune.search.wandb_runs import WandbRuns

        callbacks.append(WandbRuns(tracking))  # one run per trial, written by the driver (see wandb_runs.py)
    storage_path, experiment_name = folder.ray_storage(state.phase.number)
    return tune.Tuner(
        make_trainable(space, data),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=s.num_samples,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a finished trial's worker (torch imported, data fetched) runs the next one
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            stop=stop,
            callbacks=callbacks,
            progress_reporter=LiveReporter(),  # draws the view _fit installs (fer_tune.search.progress)
            # Ray's default depends on RAY_AIR_NEW_OUTPUT when this is built: "0" (set by _fit, so for any
            # later search in this process or its children) makes it 3, every trial's result every 5 s.
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
