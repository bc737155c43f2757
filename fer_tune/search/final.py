"""The end of a search: its best config retrained with N seeds into `<folder>/final`, as
`fer-tune retrain`; under the job's time budget (`fer_tune.search.job_budget`) for as many epochs as fit."""

from __future__ import annotations

import time
from pathlib import Path

from fer_tune.base import FerTuneError
from fer_tune.data import FER2013, load_fer2013
from fer_tune.search.folder import BEST_CONFIG, SearchFolder
from fer_tune.search.job_budget import (
    JobBudget,
    RetrainPlan,
    job_summary,
    plan_retrain,
    read_budget,
    write_budget,
)
from fer_tune.training import retrain


def retrain_best(folder: str | Path, seeds: int, device: str | None = None) -> Path:
    """Retrain a finished search's `best_config.yaml` with `seeds` seeds on the data the search used.

    Each seed trains on Training, and each seed and their ensemble are scored. Its epochs: when the search
    ran under a time budget that covers the retrain (`budget.json`), as many as fit what the search left of
    it, from the epoch time the search measured (at most the space's `search.retrain_epochs`, else the
    config's own epochs; at least the config's own); otherwise `search.retrain_epochs` (or the config's own
    epochs). Run again after a crash, it goes on where the retrain stopped, with the epochs it planned.

    Args:
        folder: the search folder (a remote search's local mirror).
        seeds: how many seeds to train (`--retrain N`).
        device: `cpu`, `cuda`, or None for cuda when available.

    Returns:
        The folder the seeds were written to, `<folder>/final`.

    Raises:
        FerTuneError: no trial reported an epoch (a budget that ended first), so there is no best config.
    """
    t0 = time.time()
    if not (Path(folder) / BEST_CONFIG).is_file():  # say why, not that a file the user never named is missing
        raise FerTuneError(
            f"{folder}: no trial reported an epoch before the search stopped, so there is no best config to "
            f"retrain; continue the search with: fer-tune --resume {folder} --retrain {seeds}"
        )
    search = SearchFolder(folder)
    data = search.read_state().data  # the data the search used
    epochs = search.read_space().search.retrain_epochs  # None: the best config's own
    out = Path(folder) / "final"
    print(f"retraining the best config of {folder} with {seeds} seeds -> {out}")
    with search.lock():  # no resume or extend rewrites best_config.yaml while its seeds train
        job = read_budget(folder)
        if job is not None:
            data = load_fer2013(data)  # once: the plan counts its faces, the retrain trains on them
            epochs = _planned_epochs(folder, job, seeds, data, epochs, device)
        retrain(
            Path(folder) / BEST_CONFIG,
            data=data,
            out_dir=out,
            epochs=epochs,
            seeds=seeds,
            device=device,
            resume=True,  # run again after a crash, it goes on where the retrain stopped
        )
        if job is not None:
            job.retrain_s = (job.retrain_s or 0.0) + time.time() - t0  # a continued retrain adds its time
            write_budget(folder, job)
            # Again below the scores, where they are read: how the budget was split, why these epochs.
            lines = RetrainPlan.from_dict(job.plan).lines(job) if job.plan is not None else []
            for line in [*lines, job_summary(job)]:
                print(f"fer-tune: {line}")
    return out


def _planned_epochs(
    folder: str | Path, job: JobBudget, seeds: int, data: FER2013, cap: int | None, device: str | None
) -> int | None:
    """The retrain's epochs under the job's budget: a plan made before (a retrain continued after a crash
    trains the epochs its checkpoints were made for), or a new one, written to `budget.json` first."""
    if job.plan is not None and job.plan.get("seeds") == seeds:
        plan = RetrainPlan.from_dict(job.plan)
        print(f"fer-tune: continuing the planned retrain: {plan.seeds} seeds x {plan.epochs} epochs")
        return plan.epochs
    plan = plan_retrain(folder, job, seeds, data, cap, device)
    if plan is None:
        print("fer-tune: the search measured no epoch: the retrain trains its epochs whatever the budget")
        return cap
    job.plan = plan.to_dict()
    write_budget(folder, job)  # before the first epoch: a crashed retrain continues with these epochs
    for line in plan.lines(job):
        print(f"fer-tune: {line}")
    return plan.epochs
