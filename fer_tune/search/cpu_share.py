"""`CpuShare`: how much of the CPU a trial got while it wanted it, from the kernel's own scheduler accounting.

Each thread's `/proc/self/task/<tid>/schedstat` holds the nanoseconds it ran and the nanoseconds it waited
on a run queue, runnable but without a core. Over an epoch, ran / (ran + waited) summed over the trial's
threads is the share of the CPU time it asked for that it got: about 1 on a quiet machine, and low when
another process keeps the cores busy (Ray starts trial workers at niceness 15, so before fer-tune started
them at its own niceness a trial on 2 busy cores got a few percent; `fer_tune.search.runner`). It costs a
few small file reads per epoch, needs no reference measurement, and is not fooled by a slow machine (a
slow CPU runs slowly, it does not make threads wait). Linux only: elsewhere there is no figure and no
warning.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable
from pathlib import Path

SMALL_SHARE = 0.7  # below this, trials are said to have got a small share: they waited >= 30% of the time
TASKS = Path("/proc/self/task")  # this process's threads (Linux)


def _threads(tasks: Path) -> dict[str, tuple[int, int]]:
    """Thread id -> (ns run, ns waited on a run queue) of every thread of this process now."""
    out = {}
    try:
        tids = os.listdir(tasks)
    except OSError:
        return {}
    for tid in tids:
        try:
            ran, waited = (tasks / tid / "schedstat").read_text().split()[:2]
            out[tid] = (int(ran), int(waited))
        except (OSError, ValueError):  # a thread that ended between the listing and the read
            continue
    return out


class CpuShare:
    """The share of the CPU this process got while it was runnable, since the last `since_last()` call.

    Args:
        tasks: the folder of per-thread `schedstat` files (tests give a fake one).
    """

    def __init__(self, tasks: Path = TASKS) -> None:
        self.tasks = tasks
        self._last = _threads(tasks)

    def since_last(self) -> float | None:
        """Ran / (ran + waited), over the threads alive at both ends, since the previous call (or creation).

        Returns:
            The share in [0, 1]; None where the kernel does not say (not Linux) or nothing ran.
        """
        now = _threads(self.tasks)
        ran = waited = 0
        for tid, (r, w) in now.items():
            r0, w0 = self._last.get(tid, (0, 0))  # a thread started since: all of its time is new
            ran, waited = ran + max(0, r - r0), waited + max(0, w - w0)
        self._last = now
        return ran / (ran + waited) if ran + waited > 0 else None


def typical_share(values: Iterable[float | None]) -> float | None:
    """The median of the epochs' shares that are known (a trial's first epoch includes its start-up).

    Args:
        values: per-epoch shares (None or NaN where unknown).

    Returns:
        The median, or None when no value is known.
    """
    known = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(known) if known else None


def share_line(share: float | None) -> str | None:
    """The one line that says trials got a small share of the CPU; None when they did not (or unknown).

    Args:
        share: the typical share of the trials' epochs.

    Returns:
        `trials got ~N% of the CPU: ...`, or None.
    """
    if share is None or share >= SMALL_SHARE:
        return None
    return (
        f"trials got ~{100 * share:.0f}% of the CPU: another process was busy; the search tried fewer configs"
    )
