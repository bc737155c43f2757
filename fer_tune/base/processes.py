"""The processes below this one, and the signals pending in them, read from Linux's /proc."""

from __future__ import annotations

import signal
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """The processes below `pid` in the process tree (read from /proc; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after "pid (comm)": state ppid
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
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
