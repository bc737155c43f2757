"""The processes below this one, and the signals pending in them, read from Linux's /proc."""

from __future__ import annotations

import signal
from pathlib import Path


def process_stats() -> dict[int, tuple[str, int, int]]:
    """Every process's state letter, parent and process group, by pid (read from /proc; {} without it)."""
    stats = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]  # after "pid (comm)"
        except (OSError, ValueError):  # it ended meanwhile
            continue
        stats[int(stat.parent.name)] = (state, int(ppid), int(pgrp))
    return stats


def descendants(pid: int) -> list[int]:
    """The processes below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _) in process_stats().items():
        children.setdefault(ppid, []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def sigterm_pending(pid: int) -> bool | None:
    """Whether process `pid` has a SIGTERM pending (blocked, not yet delivered); None if it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    if "\nState:\tZ" in status:  # ended, not yet reaped
        return None
    bit = 1 << (signal.SIGTERM - 1)
    pending = [line.split()[1] for line in status.splitlines() if line.startswith(("SigPnd", "ShdPnd"))]
    return any(int(mask, 16) & bit for mask in pending)
