"""The Ray Tune trainable of a search: one `fer_trial` per sampled config, on the resources its family
asks for."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from fer_tune.base import DataError
from fer_tune.data import FER2013
from fer_tune.search.cpu_share import CpuShare
from fer_tune.search.space import Space
from fer_tune.search.trial_checkpoints import good_checkpoint

DIVERGED_NOTE = "diverged.txt"  # in a trial's working folder: its non-finite-loss error, not to be retried


# What trials see: they train on Training and are selected on PublicTest. PrivateTest never reaches them.
TRIAL_SPLITS = ("Training", "PublicTest")


def fer_trial(config: dict[str, Any], data: FER2013, resources: TrialResources) -> None:
    """The Ray Tune trainable: train the sampled run config, reporting and checkpointing every epoch.

    Args:
        config: the sampled run config (a nested mapping).
        data: the Training and PublicTest rows, from Ray's object store.
        resources: what the trial asked Ray for (its CPUs, and its model family's GPU share).

    Raises:
        FloatingPointError: a non-finite loss; a retry of the trial fails at once with the same message.
        DeviceError: the trial was given a GPU that CUDA cannot use.
    """
    import ray.tune

    from fer_tune.training import trainer, trial_device  # trainer.train looked up per call: tests wrap it

    cpus_per_trial, gpus_per_trial = resources.cpus, resources.gpus_for(config)
    # A trial given a GPU trains on it or fails with one line; it never falls back to the CPU silently.
    device = trial_device(gpus_per_trial)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")

    node = ray.get_runtime_context().get_node_id()  # trials.csv tells on which node each trial ran
    share = CpuShare()  # what this trial got of the CPU it wanted, per epoch (fer_tune.search.cpu_share)
    threads = max(1, round(cpus_per_trial))
    # More threads than reserved CPUs (cpus_per_trial 0.5: two trials a core) wait by design: its share.
    reserved = min(1.0, cpus_per_trial / threads) if cpus_per_trial > 0 else 1.0  # 0: no figure to expect

    def report(metrics: dict[str, Any], folder: Path) -> None:
        metrics = {**metrics, "cuda_visible_devices": visible, "device": str(device), "node_id": node}
        got = share.since_last()
        if got is not None:
            metrics["cpu_share"] = min(1.0, got / reserved)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(folder)))

    kwargs = dict(
        device=device,
        threads=threads,
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
            trainer.train(config, data, **kwargs)
        else:
            with good_checkpoint(checkpoint) as folder:  # a cut checkpoint: the one before it
                trainer.train(config, data, resume=folder, **kwargs)
    except FloatingPointError as e:
        with contextlib.suppress(OSError):  # without the note a retry only repeats the epoch
            diverged.write_text(str(e))
        raise


def check_selectable(data: FER2013, path: str | Path) -> None:
    """A search selects configs on PublicTest: without it (or without Training) it cannot start.

    Args:
        data: the dataset.
        path: where it came from, for the message.

    Raises:
        DataError: the data lacks Training or PublicTest.
    """
    missing = [u for u in TRIAL_SPLITS if u not in data.splits]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(missing)} images; a search trains on Training and selects on "
            f"PublicTest, so it needs both (this data has {', '.join(data.splits) or 'no images'})"
        )


def make_trainable(space: Space, data: FER2013) -> Any:
    """`fer_trial` bound to the data (without PrivateTest) and to the space's resources, for `tune.Tuner`.

    Args:
        space: the search space, its resources filled in.
        data: the dataset; only Training and PublicTest go to the trials.

    Returns:
        The trainable, with its per-family resource request.
    """
    from ray import tune

    r = space.resources
    resources = TrialResources(r.cpus_per_trial, r.gpus_per_trial, r.gpu_shares)
    # PrivateTest stays in the driver: no trial can score on it.
    fn = tune.with_parameters(fer_trial, data=data.split(*TRIAL_SPLITS), resources=resources)
    return tune.with_resources(fn, resources)


class TrialResources:
    """A trial's resource request from its config: the GPU share of its model family (picklable for Ray).

    Args:
        cpus: CPUs per trial.
        gpus: the GPU share of a family without its own.
        shares: family name -> its GPU share; None for none.
    """

    def __init__(self, cpus: float, gpus: float, shares: dict[str, float] | None) -> None:
        self.cpus, self.gpus, self.shares = cpus, gpus, dict(shares or {})

    def gpus_for(self, config: dict[str, Any]) -> float:
        """The GPU share of a trial of this config's model family.

        Args:
            config: the trial's sampled run config.

        Returns:
            The family's share, else `gpus`.
        """
        return self.shares.get((config.get("model") or {}).get("arch"), self.gpus)

    def __call__(self, config: dict[str, Any]) -> Any:
        from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

        return resource_dict_to_pg_factory({"cpu": self.cpus, "gpu": self.gpus_for(config)})


def trial_dirname(trial: Any) -> str:
    """The folder name of a trial in its experiment (`tune.TuneConfig(trial_dirname_creator=...)`).

    Args:
        trial: Ray's Trial.

    Returns:
        `trial_<trial id>`.
    """
    return f"trial_{trial.trial_id}"
