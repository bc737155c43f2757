"""Run, interrupt and resume a hyperparameter search with Ray Tune (Optuna TPE or random/grid, ASHA).

`run_search` parses the space and the data before Ray starts, puts the parsed dataset in Ray's object store
once (`tune.with_parameters`), and runs one `fer_trial` per sampled config. The search folder
`results/<name>/` (owned by `fer_tune.folder`) is Ray's experiment folder plus `fer_tune.json` (what
`resume_search` and `extend_search` need), the Optuna study in `optuna.db`, and the results files written by
`fer_tune.results`. `extend_search` adds trials to a search as a new phase in the same folder and study.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fer_tune.data import FER2013
from fer_tune.errors import ConfigError, DataError, check_writable
from fer_tune.faults import check_experiment_state, check_target, good_checkpoint, interrupts
from fer_tune.folder import FOLDER_ENV, STUDY_DB_ENV, Phase, SearchFolder, SearchState, command_line
from fer_tune.spaces import Dist, Space, load_space
from fer_tune.tracking import WandbTracking

KAGGLE = (
    "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-recognition-challenge"
)
DATA_CANDIDATES = ("fer2013.csv", "icml_face_data.csv", "fer2013")
DIVERGED_NOTE = "diverged.txt"  # in a trial's working folder: its non-finite-loss error, not to be retried
# What trials see: they train on Training and are selected on PublicTest. PrivateTest never reaches them.
TRIAL_SPLITS = ("Training", "PublicTest")


def find_data(flag: str | None, space_data: str | None) -> Path:
    """`--data`, else `$FER_TUNE_DATA`, else the space's `data:`, else FER2013 in the working directory."""
    for given, what in (
        (flag, "--data"),
        (os.environ.get("FER_TUNE_DATA"), "$FER_TUNE_DATA"),
        (space_data, "data:"),
    ):
        if given:
            path = Path(given).expanduser()
            if not path.exists():
                raise DataError(f"{path}: no such file or folder (from {what})")
            return path.resolve()
    for name in DATA_CANDIDATES:
        if Path(name).exists():
            return Path(name).resolve()
    raise DataError(
        f"no FER2013 data: no --data, $FER_TUNE_DATA or data: in the space, and no "
        f"{', '.join(DATA_CANDIDATES)} "
        f"in {Path.cwd()}; FER2013 is at {KAGGLE}"
    )


def fer_trial(config: dict[str, Any], data: FER2013, resources: TrialResources) -> None:
    """The Ray Tune trainable: train the sampled run config, reporting and checkpointing every epoch.

    `resources` is what the trial asked Ray for (its CPUs, and its model family's GPU share).
    """
    import ray.tune

    from fer_tune.device import trial_device
    from fer_tune.train import train

    cpus_per_trial, gpus_per_trial = resources.cpus, resources.gpus_for(config)
    # A trial given a GPU trains on it or fails with one line; it never falls back to the CPU silently.
    device = trial_device(gpus_per_trial)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    node = ray.get_runtime_context().get_node_id()  # trials.csv tells on which node each trial ran

    def report(metrics: dict[str, Any], folder: Path) -> None:
        metrics = {**metrics, "cuda_visible_devices": visible, "device": str(device), "node_id": node}
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(folder)))

    kwargs = dict(
        device=device,
        threads=max(1, round(cpus_per_trial)),
        report=report,
        gpu_fraction=gpus_per_trial if gpus_per_trial < 1 else None,
    )
    # A non-finite loss recurs from the same checkpoint (seeded, RNG state restored), and Ray retries every
    # failure alike (--max-failures): the first one leaves a note in the trial's working folder, and a retry
    # that finds it fails at once with the same error instead of re-running the epochs up to it.
    diverged = Path(ray.tune.get_context().get_trial_dir()) / DIVERGED_NOTE
    if diverged.is_file():
        raise FloatingPointError(diverged.read_text())
    checkpoint = ray.tune.get_checkpoint()
    try:
        if checkpoint is None:
            train(config, data, **kwargs)
        else:
            with good_checkpoint(checkpoint) as folder:  # a cut checkpoint: the one before it
                train(config, data, resume=folder, **kwargs)
    except FloatingPointError as e:
        with contextlib.suppress(OSError):  # without the note a retry only repeats the epoch
            diverged.write_text(str(e))
        raise


@dataclass
class SearchResources:
    """The machine a search runs on: Ray's cluster, and an explicit GPU share per trial.

    `gpus_per_trial` (`--gpus-per-trial`) overrides the space's, and is never dropped for lack of GPUs: a
    space's own share is (the same space runs on a CPU-only machine).
    """

    cpus: int | None = None  # CPUs Ray may use (default: all)
    gpus: float | None = None  # GPUs Ray may use (0: CPU only; default: all visible)
    address: str | None = None  # a running Ray cluster: auto or ray://host:port
    gpus_per_trial: float | str | None = None


@dataclass
class Outcome:
    """What a search run left: its folder and the exit status (0 done, 1 every trial failed, 130
    interrupted)."""

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
) -> Outcome:
    """Run a search of `space` (a Space, or a bundled name or YAML path) on `data` (FER2013, or a path) into
    `results/<name>/`. The space and data are checked before Ray starts."""
    res = resources or SearchResources()
    space = space if isinstance(space, Space) else load_space(space, gpus_per_trial=res.gpus_per_trial)
    if res.gpus_per_trial is not None:
        space.resources.gpus_per_trial = res.gpus_per_trial
    if res.gpus == 0:
        if res.gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial: {res.gpus_per_trial} with --gpus 0 (CPU only)")
        space.resources.gpus_per_trial, space.resources.gpu_shares = 0.0, None
    if res.gpus and res.address is None:
        import ray

        if not ray.is_initialized():  # fer-tune will start Ray: it must not promise GPUs torch cannot use
            from fer_tune.device import check_gpu_count

            check_gpu_count(res.gpus)
    check_target(results, name)
    # A folder or a URI (s3://...), test-written before data and Ray.
    folder = SearchFolder.create(results, name or f"{space.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if folder.is_search():
        raise ConfigError(
            f"--name: {folder.path} holds a search already; continue it with fer-tune --resume {folder.path}"
        )
    # `--wandb-mode offline|online` alone asks for logging: it goes to the project "fer-tune".
    asked = wandb_mode in ("online", "offline")
    wandb_project = wandb_project or os.environ.get("WANDB_PROJECT") or ("fer-tune" if asked else None)
    wandb_mode = wandb_mode or os.environ.get("WANDB_MODE", "online")
    _check_tracking({"name": folder.name, "wandb_project": wandb_project, "wandb_mode": wandb_mode})
    data, data_path = _load(data)
    with _ray(res.address, res.cpus, res.gpus, verbose) as cluster:
        _fill_resources(space, cluster, gpus_flag=res.gpus_per_trial)
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
            study=folder.name if space.search.algorithm == "optuna" else None,
            phases=[Phase(1, space.source, space.search.num_samples, now, command=command)],
        )
        folder.write_state(state)
        tuner = _tuner(space, data, folder, cluster, state)
        return Outcome(folder.path, _fit(tuner, space, folder, state, verbose))


def _load(data: FER2013 | str | Path) -> tuple[FER2013, str]:
    """The dataset and the path recorded for resume (a FER2013 given as an object records its source)."""
    from fer_tune.data import load_fer2013

    if isinstance(data, FER2013):
        _check_selectable(data, data.source)
        return data, data.source
    loaded = load_fer2013(data)
    _check_selectable(loaded, data)
    return loaded, str(Path(data).resolve())


def resume_search(
    path: str | Path, *, retry_errored: bool = False, address: str | None = None, verbose: bool = False
) -> int:
    """`fer-tune --resume DIR`: continue an interrupted search (its latest phase) where its saved state left
    it."""
    from ray import tune

    folder = SearchFolder.open(path)
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
    with _ray(address, state.cpus, state.gpus, verbose):
        # The trainable must have the name it had: re-wrap the same function around freshly loaded data.
        tuner = tune.Tuner.restore(
            folder.experiment_location(phase),
            _trainable(space, data),
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


def _check_selectable(data: FER2013, path: str | Path) -> None:
    """A search selects configs on PublicTest: without it (or without Training) it cannot start."""
    missing = [u for u in TRIAL_SPLITS if u not in data.splits]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(missing)} images; a search trains on Training and selects on "
            f"PublicTest, so it needs both (this data has {', '.join(data.splits) or 'no images'})"
        )


# -- building the Tuner --------------------------------------------------------------------------------------


@contextmanager
def _ray(
    address: str | None, cpus: int | None, gpus: float | None, verbose: bool = False
) -> Iterator[dict[str, float]]:
    """Join `address`, reuse a running Ray (tests), or start a local one; yields the cluster's resources."""
    import ray

    from fer_tune.live import quiet_ray

    started = False
    if not ray.is_initialized():
        level = quiet_ray(verbose)
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        else:
            num_gpus = None if gpus is None else (int(gpus) if float(gpus).is_integer() else gpus)
            ray.init(
                num_cpus=cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=level,
            )
        started = True
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()


def _fill_resources(space: Space, cluster: dict[str, float], gpus_flag: float | str | None = None) -> None:
    """Default to one GPU per trial when the cluster has GPUs, measure `auto`; fail now on what cannot run."""
    r, gpus = space.resources, cluster.get("GPU", 0)
    if r.gpus_per_trial is None:
        r.gpus_per_trial = 1.0 if gpus > 0 else 0.0
    if gpus == 0 and (r.gpus_per_trial == "auto" or r.gpus_per_trial > 0) and gpus_flag in (None, "auto"):
        # The space's GPU share is for GPU machines: without one, the same space runs on CPU.
        print(f"fer-tune: no GPU in the Ray cluster; trials run on CPU ({space.source} asks for GPUs)")
        r.gpus_per_trial, r.gpu_shares = 0.0, None
    if r.gpus_per_trial == "auto":
        _measure_shares(space)
    if r.gpus_per_trial > gpus:
        raise ConfigError(
            f"resources.gpus_per_trial: {r.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs "
            "(--gpus 0 runs on CPU)"
        )
    if r.cpus_per_trial > cluster.get("CPU", 0):
        raise ConfigError(
            f"resources.cpus_per_trial: {r.cpus_per_trial:g} but the Ray cluster has {cluster['CPU']:g}"
        )


def _measure_shares(space: Space) -> None:
    """`gpus_per_trial: auto`: probe each family's heaviest sampled config on this machine's GPU."""
    import torch

    from fer_tune.errors import DeviceError
    from fer_tune.packing import auto_shares

    if not torch.cuda.is_available():
        raise DeviceError(
            "--gpus-per-trial auto: the packing probe runs on this machine's GPU, and torch sees none here; "
            "give a share (--gpus-per-trial 0.25)"
        )
    r = space.resources
    r.gpu_shares = {**auto_shares(space.sample(n=4, seed=space.search.seed)), **(r.gpu_shares or {})}
    r.gpus_per_trial = max(r.gpu_shares.values())  # for families the probe did not see (none, normally)


def _slots(space: Space, cluster: dict[str, float]) -> int:
    """Trials that fit on the cluster at once: how far ahead the search algorithm may propose."""
    r = space.resources
    share = min([r.gpus_per_trial, *(r.gpu_shares or {}).values()])  # the most trials a GPU can hold
    cpu = math.floor(cluster.get("CPU", 0) / r.cpus_per_trial + 1e-9) if r.cpus_per_trial else math.inf
    gpu = math.floor(cluster.get("GPU", 0) / share + 1e-9) if share else math.inf
    return max(1, int(min(cpu, gpu, space.total_trials())))


def _trainable(space: Space, data: FER2013) -> Any:
    from ray import tune

    r = space.resources
    resources = TrialResources(r.cpus_per_trial, r.gpus_per_trial, r.gpu_shares)
    # PrivateTest stays in the driver: no trial can score on it.
    fn = tune.with_parameters(fer_trial, data=data.split(*TRIAL_SPLITS), resources=resources)
    return tune.with_resources(fn, resources)


class TrialResources:
    """A trial's resource request from its config: the GPU share of its model family (picklable for Ray)."""

    def __init__(self, cpus: float, gpus: float, shares: dict[str, float] | None) -> None:
        self.cpus, self.gpus, self.shares = cpus, gpus, dict(shares or {})

    def gpus_for(self, config: dict[str, Any]) -> float:
        """The GPU share of a trial of this config's model family."""
        return self.shares.get((config.get("model") or {}).get("arch"), self.gpus)

    def __call__(self, config: dict[str, Any]) -> Any:
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        return resource_dict_to_pg_factory({"cpu": self.cpus, "gpu": self.gpus_for(config)})


def progress_columns(space: Space, limit: int = 8) -> list[str]:
    """Varied keys every trial's config has: Ray's reporter raises KeyError on a key a trial lacks (a key
    of one model family in a trial of another)."""
    model = space.groups.get("model", {})
    arch = model.get("arch")
    archs = list(arch.args) if isinstance(arch, Dist) else []

    def in_every_trial(key: str) -> bool:
        parts = key.split("/")
        if parts[0] != "model" or not space.families or parts[1] in model:
            return True
        return all(parts[1] in space.families.get(a, {}) for a in archs)

    return [k for k in space.varied_keys() if in_every_trial(k)][:limit]


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _tuner(
    space: Space,
    data: FER2013,
    folder: SearchFolder,
    cluster: dict[str, float],
    state: SearchState,
    hidden: list[int] | None = None,
) -> Any:
    """Ray's Tuner of the state's latest phase; `hidden`: study trials its sampler must not learn from."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.stopper import CombinedStopper

    from fer_tune.hooks import BestEpochOptunaSearch, BudgetStopper, InSpaceSampler, StopLog, StuckStopper
    from fer_tune.live import LiveReporter
    from fer_tune.translate import point_params

    s = space.search
    slots = s.max_concurrent or _slots(space, cluster)
    if s.algorithm == "optuna":
        phase = state.phase.number
        searcher = BestEpochOptunaSearch(
            space=space.define_by_run(),
            metric=s.metric,
            mode=s.mode,
            # Each phase its own seed: the same one would replay the earlier phase's random start-up trials.
            sampler=InSpaceSampler(seed=s.seed + phase - 1, outside=hidden or ()),
            storage=folder.storage(),
            study_name=state.study,
            phase=phase,
        )
        search_alg = ConcurrencyLimiter(searcher, slots)
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5
            warnings.simplefilter("ignore")
            searcher._ot_study.set_metric_names([s.metric])  # the dashboard shows val_acc
        if phase == 1 and not searcher._ot_study.trials:
            # Not Ray's points_to_evaluate: OptunaSearch would enqueue them again into the study it reopens.
            for point in s.points_to_evaluate:
                searcher._ot_study.enqueue_trial(point_params(space, point))
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
    stopper = BudgetStopper(s.time_budget_s) if s.time_budget_s else None
    stop: Any = stopper
    if s.stuck_epochs:
        import numpy as np

        # What trials see (PrivateTest stays out of every decision); labels only: no copy of the images.
        labels = data.labels[np.isin(data.usage, TRIAL_SPLITS)]
        chance = float(np.bincount(labels).max() / max(len(labels), 1)) + 0.05
        stop = StuckStopper(s.stuck_epochs, chance)
        stop = CombinedStopper(stopper, stop) if stopper is not None else stop
    callbacks: list[Any] = [
        StopLog(stopper, search_alg if s.algorithm == "optuna" else None, trial_timeout_s=s.trial_timeout_s)
    ]
    tracking = WandbTracking.from_state(state.to_dict())
    if tracking is not None:
        from fer_tune.tracking import WandbRuns

        callbacks.append(WandbRuns(tracking))  # one run per trial, written by the driver (see tracking.py)
    storage_path, experiment_name = folder.ray_storage(state.phase.number)
    return tune.Tuner(
        _trainable(space, data),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=s.num_samples,
            trial_dirname_creator=_trial_dirname,
            reuse_actors=True,  # a finished trial's worker (torch imported, data fetched) runs the next one
        ),
        run_config=tune.RunConfig(
            name=experiment_name,
            storage_path=storage_path,
            stop=stop,
            callbacks=callbacks,
            progress_reporter=LiveReporter(),  # draws the view _fit installs (fer_tune.live)
            # Ray's default depends on RAY_AIR_NEW_OUTPUT when this is built: "0" (set by _fit, so for any
            # later search in this process or its children) makes it 3, every trial's result every 5 s.
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


# -- running -------------------------------------------------------------------------------------------------


def _fit(tuner: Any, space: Space, folder: SearchFolder, state: SearchState, verbose: bool = False) -> int:
    from fer_tune.live import watch
    from fer_tune.results import summarize, write_results

    # The legacy output engine is the one that shows CLIReporter's parameter columns.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Snapshot the experiment state often: what finished after the last snapshot is redone after a SIGKILL.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ[FOLDER_ENV] = str(folder.path)  # StopLog records stops there (a remote search: the mirror)
    # A searcher unpickled in this process reopens this search's study: never one an earlier search (a resume
    # in the same process, as in the tests or a notebook) left in the environment.
    os.environ[STUDY_DB_ENV] = str(folder.db_path)
    t0 = time.time()
    s = space.search
    view = watch(folder.path, s.metric, s.mode, progress_columns(space), s.time_budget_s, verbose)
    with interrupts() as signals:
        with view:
            try:
                grid = tuner.fit()
            except Exception:
                from fer_tune.faults import raise_if_storage_fault

                raise_if_storage_fault(folder.path)  # Optuna's commit or Ray's write failed on a full disk
                raise
        elapsed = time.time() - t0
        folder.sync_down()  # a search in an object store: Ray's trial files, for the tables
        trials, _ = write_results(folder.path)  # a second Ctrl-C still absorbed: the tables are whole
    budget = space.search.time_budget_s
    budget_hit = budget is not None and elapsed >= budget - 1
    unfinished = grid.num_terminated + grid.num_errors < len(grid)
    interrupted = bool(signals) or unfinished or (len(grid) < space.total_trials() and not budget_hit)
    print(summarize(trials, folder.path))
    if interrupted:
        folder.sync_up()
        print(f"fer-tune: search interrupted; nothing is lost. Continue it with: fer-tune --resume {folder}")
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
    from fer_tune.results import load_results

    return bool((load_results(folder)[0]["status"] == "ERROR").any())
