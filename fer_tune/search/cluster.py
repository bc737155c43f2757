"""The Ray a search runs on: joined, reused, or started here (and stopped again) with trials at the command's
niceness."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from fer_tune.base import descendants, sigterm_pending
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
                with shielded_from_sigterm():
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
            with sigterm_turned_to_sigkill(descendants(os.getpid())):
                ray.shutdown()


@contextmanager
def shielded_from_sigterm() -> Iterator[None]:
    """Processes started inside (Ray's, by `ray.init`) block SIGTERM; this one does not once it ends.

    Ray blocks SIGINT in its processes, so that Ctrl-C reaches only the driver, which stops the search. A
    SIGTERM to the process group (`kill -TERM -PGID`, a batch scheduler, GNU `timeout`) ended the raylet and
    the GCS as well, and the driver's graceful stop raced them: it waited 15 s for the dead GCS, or Ray's
    core worker ended it at once with status 1 and no resume line. A blocked signal stays blocked across
    fork and exec, in every process Ray starts later too (its workers); they end when the driver ends Ray.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextmanager
def sigterm_turned_to_sigkill(pids: list[int], every_s: float = 0.01) -> Iterator[None]:
    """While inside, a SIGTERM pending in one of `pids` (blocked there) is followed by a SIGKILL at once.

    `ray.shutdown` ends each of its processes with SIGTERM and, one second later if it still runs, SIGKILL;
    the processes `shielded_from_sigterm` started only end on the SIGKILL, and Ray's one-second waits, one
    per process, made every search 4 s longer.
    """
    done = threading.Event()

    def watch() -> None:
        left = set(pids)
        while left and not done.wait(every_s):
            for pid in list(left):
                pending = sigterm_pending(pid)
                if pending is None:  # it has ended
                    left.discard(pid)
                elif pending:
                    left.discard(pid)
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
