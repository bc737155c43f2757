"""The resources of a search: the cluster it asks for, each trial's CPU and GPU share, how many run at
once."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fer_tune.base import ConfigError, check, shown
from fer_tune.search.space import Space
from fer_tune.search.space_options import _check_gpu_share, _is_number


@dataclass
class SearchResources:
    """The machine a search runs on: Ray's cluster, and an explicit GPU share per trial.

    `gpus_per_trial` (`--gpus-per-trial`) overrides the space's, and is never dropped for lack of GPUs: a
    space's own share is (the same space runs on a CPU-only machine).

    Args:
        cpus: CPUs Ray may use (`--cpus`); None for all.
        gpus: GPUs Ray may use (`--gpus`); 0 for CPU only, None for all visible.
        address: a running Ray cluster (`auto` or `ray://host:port`); None to start one on this machine.
        gpus_per_trial: each trial's GPU share, or `auto` to measure it; None for the space's.
    """

    cpus: int | None = None  # CPUs Ray may use (default: all)
    gpus: float | None = None  # GPUs Ray may use (0: CPU only; default: all visible)
    address: str | None = None  # a running Ray cluster: auto or ray://host:port
    gpus_per_trial: float | str | None = None

    def __post_init__(self) -> None:
        # Before Ray: it reads --cpus 0 as a cluster without a CPU (KeyError 'CPU' later), refuses -1 with a
        # traceback, and leaves a trial asking for -1 GPUs pending forever.
        c, g, share = self.cpus, self.gpus, self.gpus_per_trial
        ok = c is None or (isinstance(c, int) and not isinstance(c, bool) and c >= 1 and _is_number(c))
        check(ok, "--cpus", f"must be an integer >= 1, got {shown(c)}")
        check(g is None or (_is_number(g) and g >= 0), "--gpus", f"must be a number >= 0, got {shown(g)}")
        if share != "auto" and share is not None:
            check(
                _is_number(share) and share >= 0,
                "--gpus-per-trial",
                f"must be a number >= 0 or auto, got {shown(share)}",
            )
            if share > 0:
                _check_gpu_share(share, "--gpus-per-trial")


def fill_resources(space: Space, cluster: dict[str, float], gpus_flag: float | str | None = None) -> None:
    """Default to one GPU per trial when the cluster has GPUs, measure `auto`; fail now on what cannot run.

    Args:
        space: the search space; its `resources` are filled in place.
        cluster: Ray's cluster resources (`{"CPU": ..., "GPU": ...}`).
        gpus_flag: the `--gpus-per-trial` value; None when not given.

    Raises:
        ConfigError: a trial asks for more GPUs or CPUs than the cluster has.
        DeviceError: `auto` with no GPU visible to torch.
    """
    r, gpus = space.resources, cluster.get("GPU", 0)
    if r.gpus_per_trial is None:
        r.gpus_per_trial = 1.0 if gpus > 0 else 0.0
    if gpus == 0 and (r.gpus_per_trial == "auto" or r.gpus_per_trial > 0) and gpus_flag in (None, "auto"):
        # The space's GPU share is for GPU machines: without one, the same space runs on CPU.
        print(f"fer-tune: no GPU in the Ray cluster; trials run on CPU ({space.source} asks for GPUs)")
        r.gpus_per_trial, r.gpu_shares = 0.0, None
    if r.gpus_per_trial == "auto":
        measure_shares(space)
    if r.gpus_per_trial > gpus:
        raise ConfigError(
            f"resources.gpus_per_trial: {r.gpus_per_trial:g} but the Ray cluster has {gpus:g} GPUs "
            "(--gpus 0 runs on CPU)"
        )
    cpus = cluster.get("CPU", 0)  # a cluster of no CPU has no "CPU" key
    if r.cpus_per_trial > cpus:
        raise ConfigError(f"resources.cpus_per_trial: {r.cpus_per_trial:g} but the Ray cluster has {cpus:g}")


def measure_shares(space: Space) -> None:
    """`gpus_per_trial: auto`: probe each family's heaviest sampled config on this machine's GPU.

    Args:
        space: the search space; `resources.gpu_shares` and `gpus_per_trial` are set in place (shares the
            space gives win over measured ones).

    Raises:
        DeviceError: torch sees no GPU.
    """
    import torch

    from fer_tune.base import DeviceError
    from fer_tune.search.packing import auto_shares

    if not torch.cuda.is_available():
        raise DeviceError(
            "--gpus-per-trial auto: the packing probe runs on this machine's GPU, and torch sees none here; "
            "give a share (--gpus-per-trial 0.25)"
        )
    r = space.resources
    r.gpu_shares = {**auto_shares(space.sample(n=4, seed=space.search.seed)), **(r.gpu_shares or {})}
    r.gpus_per_trial = max(r.gpu_shares.values())  # for families the probe did not see (none, normally)


def trial_slots(space: Space, cluster: dict[str, float]) -> int:
    """Trials that fit on the cluster at once: how far ahead the search algorithm may propose.

    Args:
        space: the search space, its resources filled in (`fill_resources`).
        cluster: Ray's cluster resources (`{"CPU": ..., "GPU": ...}`).

    Returns:
        At least 1, at most the space's total trials.
    """
    r = space.resources
    share = min([r.gpus_per_trial, *(r.gpu_shares or {}).values()])  # the most trials a GPU can hold
    cpu = math.floor(cluster.get("CPU", 0) / r.cpus_per_trial + 1e-9) if r.cpus_per_trial else math.inf
    gpu = math.floor(cluster.get("GPU", 0) / share + 1e-9) if share else math.inf
    return max(1, int(min(cpu, gpu, space.total_trials())))
