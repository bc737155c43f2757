"""The SIGTERM shield of the Ray fer-tune starts, on plain processes: no Ray, a second each.

A group SIGTERM reaching Ray's processes raced the driver's graceful stop (tests/test_faults.py holds the
search that shows it); these check the two halves: processes started inside the shield block SIGTERM, and
Ray's shutdown, which ends each process with SIGTERM, is not made to wait its second for the SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from fer_tune.base import descendants, sigterm_pending
from fer_tune.search.cluster import shielded_from_sigterm, sigterm_turned_to_sigkill

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def wait_until(ok, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not ok() and time.monotonic() < deadline:
        time.sleep(0.02)
    return ok()


@pytest.fixture
def sleeper() -> Iterator[Callable[[], subprocess.Popen]]:
    """Starts a sleeping Python process each call; every one is killed after the test."""
    started: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        started.append(subprocess.Popen(SLEEPER))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_process_started_inside_the_shield_blocks_sigterm_and_this_one_does_not_after(sleeper) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with shielded_from_sigterm():
        shielded = sleeper()
    plain = sleeper()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before
    assert {shielded.pid, plain.pid} <= set(descendants(os.getpid()))
    time.sleep(0.5)  # both running Python
    for proc in (shielded, plain):
        proc.send_signal(signal.SIGTERM)
    assert plain.wait(timeout=10) == -signal.SIGTERM
    time.sleep(0.5)
    assert shielded.poll() is None and sigterm_pending(shielded.pid) is True
    shielded.kill()
    shielded.wait()
    assert sigterm_pending(shielded.pid) is None  # ended


def test_a_pending_sigterm_is_followed_by_a_sigkill_at_once_and_only_while_inside(sleeper) -> None:
    with shielded_from_sigterm():
        asked, left_alone = sleeper(), sleeper()
    with sigterm_turned_to_sigkill([asked.pid, left_alone.pid]):
        assert sigterm_pending(asked.pid) is False
        t0 = time.monotonic()
        asked.terminate()  # what ray.shutdown sends, then waits a second for
        assert asked.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() - t0 < 0.5
    assert left_alone.poll() is None  # nothing asked it to end
    left_alone.terminate()  # after the block: no SIGKILL follows
    time.sleep(0.3)
    assert left_alone.poll() is None and sigterm_pending(left_alone.pid) is True


def test_descendants_reach_grandchildren() -> None:
    code = f"import subprocess, time; subprocess.Popen({SLEEPER!r}); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert wait_until(lambda: len(descendants(parent.pid)) == 1)
        assert set(descendants(parent.pid)) < set(descendants(os.getpid()))
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_the_watchdog_prints_the_resume_line_kills_what_this_process_started_and_exits_130() -> None:
    """When Ray does not stop in its grace after a stop signal (Ray's agents outlived a driver ended so)."""
    code = (
        "import subprocess, time\n"
        "from fer_tune.search.recovery import Interruption\n"
        f"child = subprocess.Popen({SLEEPER!r})\n"
        "print(child.pid, flush=True)\n"
        "Interruption('Continue it with: fer-tune --resume results/x', grace_s=1.0).arm()\n"
        "time.sleep(60)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip() == (
        "fer-tune: Ray did not stop within 1 s; Continue it with: fer-tune --resume results/x"
    )
    child = int(run.stdout.split()[0])
    assert wait_until(lambda: sigterm_pending(child) is None)  # killed
