"""Run, interrupt and resume a hyperparameter search with Ray Tune (Optuna TPE or GP, or random/grid; ASHA).

`run_search` parses the space and the data before Ray starts, puts the parsed dataset in Ray's object store
once (`tune.with_parameters`), and runs one `fer_trial` per sampled config. The search folder
`results/<name>/` (owned by `fer_tune.search.folder`) is Ray's experiment folder plus `fer_tune.json` (what
`resume_search` and `extend_search` need), the Optuna study in `optuna.db`, and the results files written by
`fer_tune.search.results`. `extend_search` adds trials to a search as a new phase in the same folder and
study.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fer_tune.base import ConfigError, DataError, check_writable
from fer_tune.data import FER2013
from fer_tune.search.cluster import ray_session
from fer_tune.search.cpu_share import share_line, typical_share
from fer_tune.search.folder import FOLDER_ENV, SearchFolder, SearchState, command_line
from fer_tune.search.job_budget import JobBudget, add_spent, clock, split_budget, write_budget
from fer_tune.search.recovery import check_experiment_state, check_target, interrupts
from fer_tune.search.resources import SearchResources, fill_resources
from fer_tune.search.sampler import choose_sampler
from fer_tune.search.space import Space, load_space
from fer_tune.search.state import Phase
from fer_tune.search.study import STUDY_DB_ENV
from fer_tune.search.trainable import check_selectable, make_trainable
from fer_tune.search.tuner import build_tuner, progress_columns
from fer_tune.search.wandb_runs import WandbTracking


@dataclass
class Outcome:
    """What a search run left: its folder and the exit status (0 done, 1 every trial failed, 130
    interrupted).

    Args:
        folder: the local search folder (for a remote search, its mirror).
        status: the exit status the command returns.
    """

    folder: Path
    status: int


def run_search(
    space: Space | str | Path,
    data: FER2013 | str | Path,
    resources: SearchResources | None = None,
    *,
    name: str | None = None,
    results: str | Path = "results",
    wandb_project: str | None = None,
    wandb_mode: str | None = None,
    verbose: bool = False,
    retrain: int | None = None,
    warm_start: Sequence[str | Path] = (),
) -> Outcome:
    """Run a search of `space` (a Space, or a bundled name or YAML path) on `data` (FER2013, or a path) into
    `results/<name>/`. The space and data are checked before Ray starts.

    With `retrain` and a time budget, the budget covers the search and the retrain that follows it
    (`retrain_best`): the search stops after `1 - search.retrain_share` of it, and `budget.json` records the
    split and the search's time (`fer_tune.search.job_budget`).

    Args:
        space: a parsed space, a bundled space's name or a space YAML file.
        data: the dataset, or a path `load_fer2013` reads.
        resources: the cluster and GPU share per trial; None for all of this machine, the space's share.
        name: the search's name; None for `<space name>-<date>-<time>`.
        results: the folder (or object-store URI) searches go in.
        wandb_project: log each trial to this Weights & Biases project; None for `$WANDB_PROJECT`, or
            none (`fer-tune` when `wandb_mode` is given).
        wandb_mode: `online` or `offline`; None for `$WANDB_MODE`, else `online`.
        verbose: Ray's own progress output instead of fer-tune's live view.
        retrain: the seeds `--retrain N` will train after the search; None for no retrain.
        warm_start: earlier search folders (`--warm-start`) whose finished trials the study starts from, with
            the space's `search.warm_start` (`fer_tune.search.warm_start`).

    Returns:
        The search folder and the exit status.

    Raises:
        ConfigError: a bad space or flags, the folder holds a search already, or a warm-start folder is
            missing, not a search or ranks by another metric.
        DataError: the data cannot be read, or lacks the splits trials train and validate on.
        DeviceError: more GPUs asked for than torch sees.
        OutputError: the results folder cannot be written.
    """
    started = time.time()  # the job's clock: Ray's start and the data's parse count against its budget
    res = resources or SearchResources()
    space = space if isinstance(space, Space) else load_space(space, gpus_per_trial=res.gpus_per_trial)
    job = split_budget(space.search.time_budget_s, space.search.retrain_share, retrain)
    if job is not None:  # the search runs under its share; the retrain gets what is left when it ends
        search = dataclasses.replace(space.search, time_budget_s=job.search_s)
        space = dataclasses.replace(space, search=search)
    if res.gpus_per_trial is not None:
        space.resources.gpus_per_trial = res.gpus_per_trial
    if res.gpus == 0:
        if res.gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial: {res.gpus_per_trial} with --gpus 0 (CPU only)")
        space.resources.gpus_per_trial, space.resources.gpu_shares = 0.0, None
    if res.gpus and res.address is None:
        import ray

        if not ray.is_initialized():  # fer-tune will start Ray: it must not promise GPUs torch cannot use
            from fer_tune.training.device import check_gpu_count

            check_gpu_count(res.gpus)
    check_target(results, name)
    # A folder or a URI (s3://...), test-written before data and Ray.
    folder = SearchFolder.create(results, name or f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}")
    # Locked before the folder is found new: of two searches of one name started together, one runs and the
    # other stops here, naming it, having written nothing.
    with folder.lock(new=True, hint="or choose another --name"):
        try:
            outcome = _run_new(folder, space, data, res, wandb_project, wandb_mode, verbose, job, warm_start)
        finally:
            counted = add_spent(folder.path, time.time() - started)  # interrupted too: a resume adds its own
        if counted:
            folder.sync_up()  # a remote search: the store's budget.json holds the search's time too
        return outcome


def _run_new(
    folder: SearchFolder,
    space: Space,
    data: FER2013 | str | Path,
    res: SearchResources,
    wandb_project: str | None,
    wandb_mode: str | None,
    verbose: bool,
    job: JobBudget | None = None,
    warm_start: Sequence[str | Path] = (),
) -> Outcome:
    """The body of `run_search`, under the folder's lock."""
    from fer_tune.search.warm_start import start_from

    folder.clear_mirror()  # a remote search: what an earlier search of that URI left on this machine
    if folder.is_search():
        raise ConfigError(
            f"--name: {folder.path} holds a search already; continue it with fer-tune --resume {folder.path}"
        )
    # `--wandb-mode offline|online` alone asks for logging: it goes to the project "fer-tune".
    asked = wandb_mode in ("online", "offline")
    wandb_project = wandb_project or os.environ.get("WANDB_PROJECT") or ("fer-tune" if asked else None)
    wandb_mode = wandb_mode or os.environ.get("WANDB_MODE", "online")
    _check_tracking({"name": folder.name, "wandb_project": wandb_project, "wandb_mode": wandb_mode})
    space, warm = start_from(space, warm_start, folder.path)  # before the data and Ray: a wrong folder fails
    sampler = choose_sampler(space.search)
    if space.search.algorithm == "auto":  # a choice fer-tune made: say it before the search starts
        print(f"fer-tune: {sampler.why}")
    data, data_path = _load(data)
    with ray_session(res.address, res.cpus, res.gpus, verbose) as cluster:
        fill_resources(space, cluster, gpus_flag=res.gpus_per_trial)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.write_space(space)
        now = datetime.now().isoformat(timespec="seconds")
        command = command_line()
        state = SearchState(
            name=folder.name,
            space=space.source,
            data=data_path,
            started=now,
            cpus=res.cpus,
            gpus=res.gpus,
            wandb_project=wandb_project,
            wandb_mode=wandb_mode,
            command=command,
            study=folder.name if space.search.uses_study else None,
            phases=[
                Phase(
                    1,
                    space.source,
                    space.search.num_samples,
                    now,
                    command=command,
                    sampler=sampler.name,
                    sampler_why=sampler.why,
                )
            ],
            warm_start=[w.record() for w in warm],
        )
        folder.write_state(state)
        if job is not None:
            write_budget(folder.path, job)
            print(
                f"fer-tune: time budget {clock(job.total_s)} for the search and the retrain of {job.seeds} "
                f"seed{'s' if job.seeds > 1 else ''}: the search stops after {clock(job.search_s)}, the "
                "retrain gets what is left "
                f"(search.retrain_share {job.retrain_share:g})"
            )
        tuner = build_tuner(space, data, folder, cluster, state, warm=warm, job=job)
        return Outcome(folder.path, _fit(tuner, space, folder, state, verbose))


def _load(data: FER2013 | str | Path) -> tuple[FER2013, str]:
    """The dataset and the path recorded for resume (a FER2013 given as an object records its source)."""
    from fer_tune.data import load_fer2013

    if isinstance(data, FER2013):
        check_selectable(data, data.source)
        return data, data.source
    loaded = load_fer2013(data)
    check_selectable(loaded, data)
    return loaded, str(Path(data).resolve())


def resume_search(
    path: str | Path, *, retry_errored: bool = False, address: str | None = None, verbose: bool = False
) -> int:
    """`fer-tune --resume DIR`: continue an interrupted search (its latest phase) where its saved state left
    it. Under a budget that covers a retrain (`budget.json`), this command's time counts against it.

    Args:
        path: the search folder, local or a URI.
        retry_errored: run errored trials again from their last checkpoint (also in a finished search).
        address: a running Ray cluster's address; None to start one on this machine.
        verbose: Ray's own progress output instead of fer-tune's live view.

    Returns:
        The exit status: 0 done (or nothing to resume), 1 every trial failed, 130 interrupted.

    Raises:
        DataError: not a search, no saved Ray Tune state, a damaged state file, or unreadable data.
        OutputError: the search folder cannot be written.
    """
    started = time.time()
    folder = SearchFolder.open(path, download=False)
    with folder.lock():  # one command at a time writes a search
        folder.download()  # a remote search: into its mirror, once the lock is held
        try:
            code = _resume(folder, retry_errored, address, verbose)
        finally:
            counted = add_spent(folder.path, time.time() - started)  # when the budget covers a retrain
        if counted:
            folder.sync_up()
        return code


def _resume(folder: SearchFolder, retry_errored: bool, address: str | None, verbose: bool) -> int:
    """The body of `resume_search`, under the folder's lock."""
    from ray import tune

    from fer_tune.search import legacy_names

    legacy_names.install()  # a search saved by an earlier fer-tune pickled names that have moved since
    state = folder.read_state()
    if state.finished and not (retry_errored and _has_errors(folder.path)):
        print(f"fer-tune: {folder.path} finished on {state.ended or '?'}; nothing to resume")
        return 0
    phase, experiment = folder.experiment_dirs()[-1]
    space = folder.read_space(phase)
    check_experiment_state(experiment)
    if not tune.Tuner.can_restore(folder.experiment_location(phase)):
        raise DataError(f"{experiment}: no saved Ray Tune state (experiment_state-*.json) to resume from")
    check_writable(folder.path, "search folder")  # Ray writes its state and the trials there
    _check_tracking(state.to_dict())

    data, _ = _load(state.data)
    # Ray unpickles the searcher with the study storage it was saved with: open this folder's database.
    os.environ[STUDY_DB_ENV] = str(folder.db_path)
    with ray_session(address, state.cpus, state.gpus, verbose):
        # The trainable must have the name it had: re-wrap the same function around freshly loaded data.
        tuner = tune.Tuner.restore(
            folder.experiment_location(phase),
            make_trainable(space, data),
            resume_unfinished=True,
            resume_errored=retry_errored,
            restart_errored=False,  # restarted trials get ids OptunaSearch never saw (KeyError in Ray 2.60)
        )
        print(f"fer-tune: resuming {folder.path}" + (" (errored trials too)" if retry_errored else ""))
        return _fit(tuner, space, folder, state, verbose)


def _check_tracking(state: dict[str, Any]) -> None:
    """Fail before the data and Ray when the wandb logging asked for cannot work (online without a key)."""
    tracking = WandbTracking.from_state(state)
    if tracking is not None:
        tracking.check()


# -- running -------------------------------------------------------------------------------------------------


def _fit(tuner: Any, space: Space, folder: SearchFolder, state: SearchState, verbose: bool = False) -> int:
    from fer_tune.search.budget_stopper import budget_fired, forget_budget_fired
    from fer_tune.search.progress import watch
    from fer_tune.search.results import summarize, write_results

    # The legacy output engine is the one that shows CLIReporter's parameter columns.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot the experiment state often: what finished after the last snapshot is redone after a SIGKILL.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ[FOLDER_ENV] = str(folder.path)  # StopLog records stops there (a remote search: the mirror)
    # A searcher unpickled in this process reopens this search's study: never one an earlier search (a resume
    # in the same process, as in the tests or a notebook) left in the environment.
    os.environ[STUDY_DB_ENV] = str(folder.db_path)
    s = space.search
    view = watch(folder.path, s.metric, s.mode, progress_columns(space), s.time_budget_s, verbose)
    resume_line = f"nothing is lost. Continue it with: fer-tune --resume {folder}"
    forget_budget_fired()
    with interrupts(resume_line) as stop:
        with view:
            try:
                grid = tuner.fit()
                stop.loop_ended()
            except Exception:
                from fer_tune.search.recovery import raise_if_storage_fault

                raise_if_storage_fault(folder.path)  # Optuna's commit or Ray's write failed on a full disk
                raise
        folder.sync_down()  # a search in an object store: Ray's trial files, for the tables
        trials, history = write_results(folder.path)  # a second Ctrl-C still absorbed: the tables are whole
    # The budget's stopper (Ray's own copy on a resume) fired: the budget ran out, or the search ended early
    # to leave the retrain its fewest epochs (fer_tune.search.retrain_reserve).
    budget_hit = budget_fired()
    unfinished = grid.num_terminated + grid.num_errors < len(grid)
    interrupted = bool(stop.signals) or unfinished or (len(grid) < space.total_trials() and not budget_hit)
    print(summarize(trials, folder.path))
    if state.phase.sampler_why:  # a phase recorded before fer-tune recorded its sampler has none
        print(f"fer-tune: {state.phase.sampler_why}")
    share = share_line(typical_share(history.get("cpu_share", ())))
    if share is not None:
        print(f"fer-tune: {share}")
    if interrupted:
        folder.sync_up()
        print(f"fer-tune: search interrupted; {resume_line}")
        return 130
    state.finished, state.ended = True, datetime.now().isoformat(timespec="seconds")
    state.phase.finished, state.phase.ended = True, state.ended
    folder.write_state(state)
    folder.sync_up()
    if len(trials) and (trials["status"] == "ERROR").all():
        print("fer-tune: every trial failed; see the stop reasons above and error.txt in each trial folder")
        return 1
    return 0


def _has_errors(folder: Path) -> bool:
    from fer_tune.search.results import load_results

    return bool((load_results(folder)[0]["status"] == "ERROR").any())
