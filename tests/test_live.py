"""The live view of a search, driven with stand-in trials (the attributes of Ray's `Trial` it reads): no Ray.

`--verbose` (Ray's own table) is checked on a real search in test_search.py.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from fer_tune.search import progress as live
from fer_tune.search.budget_stopper import forget_budget_fired
from fer_tune.search.internals import AUTH_TOKEN_LOGGER
from fer_tune.search.progress import LiveReporter, LiveView, quiet_ray, watch

KEYS = ["model/arch", "train/lr"]


def trial(tid: str, status: str, epoch: int | None = None, best: float | None = None, epochs: int = 4):
    config = {"model": {"arch": "cnn"}, "train": {"lr": 0.0123, "epochs": epochs}}
    return SimpleNamespace(
        trial_id=tid,
        status=status,
        config=config,
        last_result={} if epoch is None else {"epoch": epoch, "val_acc": best, "config": config},
        metric_analysis={} if best is None else {"val_acc": {"max": best, "min": best / 2}},
    )


def search(n_running: int = 2) -> list:
    return [
        trial("a_00000", "TERMINATED", epoch=4, best=0.61),  # finished: all its epochs
        trial("a_00001", "TERMINATED", epoch=1, best=0.30),  # stopped early (ASHA)
        trial("a_00002", "ERROR", epoch=2, best=0.20),
        *(trial(f"a_{i:05d}", "RUNNING", epoch=2, best=0.55) for i in range(3, 3 + n_running)),
        trial("a_99999", "PENDING"),
    ]


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=120)


class Clock:
    """The view's clock (its module's `time`), moved by the test: wall and monotonic time both read `now`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def thread_time(self) -> float:  # the drawing cost the view measures stays real
        return time.thread_time()


@pytest.fixture(autouse=True)
def no_budget_counting_down() -> Iterator[None]:
    """No stopper of a search run earlier in this process (tests that call `main`) feeds the views here."""
    forget_budget_fired()
    yield
    forget_budget_fired()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The live view's time, without the wall clock: no test of it depends on how busy the machine is."""
    fake = Clock()
    monkeypatch.setattr(live, "time", fake)
    return fake


def test_counts_and_best_trial() -> None:
    view = LiveView(Path("results/x"), "val_acc", "max", KEYS, console=terminal())
    assert view.counts(search()) == {"running": 2, "finished": 1, "stopped": 1, "errored": 1, "pending": 1}
    assert view.best(search()).trial_id == "a_00000"
    low = LiveView(Path("results/x"), "val_acc", "min", KEYS, console=terminal())
    assert low.best(search()).trial_id == "a_00002"  # min over each trial's min (0.10)
    assert view.best([trial("p", "PENDING")]) is None


def shown(clock: Clock, elapsed: float) -> str:
    """What a view of `search()` under a 1-hour budget prints, `elapsed` seconds after its start."""
    console = terminal()
    view = LiveView(Path("results/x"), "val_acc", "max", KEYS, budget_s=3600, console=console)
    view.setup(start_time=clock.now - elapsed, total_samples=8)
    view.update(search(), done=False)
    view.close()
    return console.export_text() if console.record else console.file.getvalue()


def test_terminal_table_shows_counts_best_budget_and_folder(clock: Clock) -> None:
    text = shown(clock, 65)
    for part in (
        "0:01:05 elapsed, 0:58:55 left of 1:00:00",
        "trials of 8: 2 running, 1 finished, 1 stopped, 1 errored, 1 pending",
        "* a_00000",  # the best trial, first
        "0.61",
        "cnn",
        "0.0123",
        "a_00004",  # a running trial
        "results: results/x",
    ):
        assert part in text, part
    assert "\x1b[" in text  # drawn with cursor control, in place


def test_terminal_redraws_at_most_once_a_second(clock: Clock) -> None:
    view = LiveView(Path("results/x"), "val_acc", "max", KEYS, console=terminal())
    view.setup(start_time=clock.now, total_samples=64)
    trials = search(n_running=60)
    view.update(trials, done=False)  # drawn at 1000.0
    view.redraws = 0
    drawn_at = []
    for step in range(1, 501):  # Ray asks after every step of its loop: here every 5 ms for 2.5 s
        clock.now = 1000.0 + step / 200
        if view.due(trials, done=False):
            view.update(trials, done=False)
            drawn_at.append(clock.now)
    assert drawn_at == [1001.0, 1002.0] and view.redraws == 2
    assert view.due(trials, done=True)  # the end is always drawn
    view.close()


@pytest.mark.slow  # measures the CPU time of real redraws, on the wall clock: a busy machine can fail it
def test_terminal_redraws_at_most_once_a_second_and_cheaply() -> None:
    view = LiveView(Path("results/x"), "val_acc", "max", KEYS, console=terminal())
    view.setup(start_time=time.time(), total_samples=64)
    trials = search(n_running=60)
    view.update(trials, done=False)  # the first draw pays rich's one-time set-up (a fresh clone: ~25 ms)
    view.redraws, view.cpu_s = 0, 0.0
    time.sleep(1.0)
    t0 = time.monotonic()
    asked = 0
    while time.monotonic() - t0 < 1.5:  # Ray asks after every step of its loop
        asked += 1
        if view.due(trials, done=False):
            view.update(trials, done=False)
        time.sleep(0.005)
    view.close()
    assert asked > 100 and 1 <= view.redraws <= 2
    # A redraw of 64 trials costs 6-10 ms of CPU here (bench_live.py: 0.7-1.4% of a core at one a second);
    # < 30 ms each, asking included, leaves room for a busy shared machine and still catches a view that
    # draws at every step or grows slow.
    assert view.cpu_s / view.redraws < 0.03


def test_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    view = LiveView(Path("results/x"), "val_acc", "max", KEYS, console=console)
    view.setup(start_time=clock.now, total_samples=8)
    trials = search()
    for _ in range(5):  # nothing changes within LINE_EVERY_S: one line
        view.update(trials, done=False)
    trials[3].status = "TERMINATED"
    view.update(trials, done=False)  # a change, but too soon after the last line
    monkeypatch.setattr(live, "LINE_EVERY_S", 0.0)
    view.update(trials, done=False)  # now it is printed
    view.update(trials, done=True)  # the end is always printed
    lines = console.file.getvalue().splitlines()
    assert lines[0] == "fer-tune: search started; results in results/x"
    assert len(lines) == 4 and "\x1b[" not in console.file.getvalue()
    assert "2 running" in lines[1] and "1 running" in lines[2] and lines[3] == lines[2]
    assert "best val_acc 0.61 (trial a_00000: arch cnn, lr 0.0123)" in lines[1]


def test_the_reporter_ray_pickles_holds_no_view() -> None:
    reporter = pickle.loads(pickle.dumps(LiveReporter()))
    assert not reporter.should_report(search(), done=True)  # no view installed: silent
    console = terminal()
    with watch(Path("results/x"), "val_acc", "max", KEYS, console=console) as view:
        reporter.setup(start_time=time.time(), total_samples=8)
        assert reporter.should_report(search(), done=False)
        reporter.report(search(), False)
    assert view.redraws == 1 and "a_00000" in console.file.getvalue()
    assert live._view is None


def test_token_notice_dropped_security_warning_kept(caplog: pytest.LogCaptureFixture) -> None:
    assert quiet_ray(verbose=False) == logging.WARNING
    assert quiet_ray(verbose=True) == logging.INFO
    auth = logging.getLogger(AUTH_TOKEN_LOGGER)
    with caplog.at_level(logging.WARNING):
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access")
    assert [r.getMessage()[:36] for r in caplog.records] == ["Token authentication is disabled for"]


def test_a_resumed_search_counts_down_what_was_left_of_its_budget(clock: Clock) -> None:
    """A resume's view showed the whole budget as left; Ray's own stopper, unpickled from the experiment
    state, counts down what the interrupted run left, and the view now shows what that stopper has left."""
    from fer_tune.search.budget_stopper import BudgetStopper, budget_left

    assert budget_left() is None  # no stopper has checked yet: the view counts from its own start
    resumed = pickle.loads(pickle.dumps(BudgetStopper(3600)))  # as Ray restores it
    resumed._budget = 1200.0  # what the interrupted run left
    assert not resumed.stop_all() and budget_left() == 1200.0  # the first check takes no time off
    assert "0:00:34 elapsed, 0:20:00 left of 1:00:00" in shown(clock, 34)
