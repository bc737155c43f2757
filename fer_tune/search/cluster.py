"""The Ray a search runs on: joined, reused, or started here (and stopped again) with trials at the command's
niceness."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from fer_tune.search.internals import WORKER_NICENESS_ENV


@contextmanager
def ray_session(
    address: str | None, cpus: int | None, gpus: float | None, verbose: bool = False
) -> Iterator[dict[str, float]]:
    """Join `address`, reuse a running Ray (tests), or start a local one; yields the cluster's resources.

    Args:
        address: a running cluster's address; None to start a local Ray (or reuse one already started).
        cpus: the local Ray's CPUs; None for all.
        gpus: the local Ray's GPUs (fractions allowed); None for what Ray finds.
        verbose: Ray's own log lines on the terminal.

    Yields:
        `ray.cluster_resources()`; a Ray this started is shut down on exit.
    """
    import ray

    from fer_tune.search.progress import quiet_ray

    started = False
    if not ray.is_initialized():
        level = quiet_ray(verbose)
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=level)
        else:
            num_gpus = None if gpus is None else (int(gpus) if float(gpus).is_integer() else gpus)
            # Ray starts its workers 15 steps nicer than itself: a trial then yields to any busy process
            # (one on 2 cores trained at 174 images/s, a tenth of its rate), silently spending the time
            # budget on few configs, while the retrain after it runs at the command's own niceness. Trials
            # run at the command's niceness instead: `nice fer-tune ...` makes the whole job yield.
            ours = WORKER_NICENESS_ENV not in os.environ  # a value the user set is kept
            if ours:
                os.environ[WORKER_NICENESS_ENV] = "0"
            try:
                ray.init(
                    num_cpus=cpus,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=level,
                )
            finally:
                if ours:  # the raylet read it as it started (its workers inherit it): no later Ray does
                    os.environ.pop(WORKER_NICENESS_ENV, None)
        started = True
    try:
        yield ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
