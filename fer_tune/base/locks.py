"""One live writer per folder: an OS lock (`fcntl.flock`) on `.fer-tune.lock` inside it.

The kernel releases the lock when its process ends, however it ends (SIGKILL, a crash, a reboot), so a dead
command never leaves a folder locked; the file itself stays behind and means nothing on its own. The holder
writes its PID, host, command line and start time into the file once it holds the lock, so the command that
is refused can say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from fer_tune.base.errors import FerTuneError, OutputError

LOCK_FILE = ".fer-tune.lock"  # a dot file: never uploaded with a search's own files (storage.push)


class FolderBusy(FerTuneError):
    """Another process holds the folder's lock: the message names it (PID, host, command, since when)."""


@contextmanager
def lock_folder(folder: str | Path, command: str, *, create: bool = False, hint: str = "") -> Iterator[Path]:
    """Hold `folder`'s lock for the `with` block, or fail at once (never wait) naming its holder.

    Taking the lock writes nothing into the folder while another process holds it. A folder that holds
    nothing but the lock file when the block ends (a command that failed before writing anything) is left
    as it was found: the lock file is removed, and the folder too when this call created it.

    Args:
        folder: the folder to lock.
        command: the command line to record as the holder's.
        create: create the folder (with its parents) when it is missing; False: a missing folder is not
            locked (the command reports it missing itself).
        hint: what to do instead, appended to the refusal (`choose another --name`).

    Yields:
        The folder.

    Raises:
        FolderBusy: another process holds the lock.
        OutputError: the lock file cannot be created or locked (a read-only disk, a file system without
            locks).
    """
    path = Path(folder)
    created = False
    if not path.is_dir():
        if not create:
            yield path
            return
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{path}: cannot write there: {e.strerror or e}") from None
    file = path / LOCK_FILE
    try:
        fd = _acquire(file, hint)
    except (FolderBusy, OutputError):
        if created:  # by this call, a moment ago, and left to the process that locked it first
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty: never its holder's lock file
        raise
    try:
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            if os.listdir(path) == [LOCK_FILE]:  # nothing was written: leave no trace
                os.unlink(file)
                if created:
                    os.rmdir(path)
        os.close(fd)  # releases the lock


def _acquire(file: Path, hint: str) -> int:
    """An open descriptor of `file` holding its exclusive lock; FolderBusy when another process holds it."""
    for _ in range(20):
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        except OSError as e:
            raise OutputError(f"{file.parent}: cannot write there: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            who = _describe(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
            os.close(fd)
            if who is None:
                raise OutputError(f"{file}: cannot lock: {e.strerror or e}") from None
            more = f"; {hint}" if hint else ""
            raise FolderBusy(
                f"{file.parent}: in use by another fer-tune command ({who}); one command at a time writes "
                f"a folder: wait for it to end{more}"
            ) from None
        try:  # a holder that wrote nothing removes the file as it lets go: lock the file the path names now
            if os.path.samestat(os.fstat(fd), os.stat(file)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OutputError(f"{file}: cannot lock: the file keeps being replaced")


def _describe(fd: int) -> str:
    """The holder's record in the lock file, as words; its writer may be a moment late: wait up to 1 s."""
    for _ in range(20):
        raw = os.pread(fd, 4096, 0)
        try:
            rec = json.loads(raw)
            return f"PID {rec['pid']} on {rec['host']}, since {rec['since']}: {rec['command']}"
        except (ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "a process that has not said who it is yet"
