"""What the terminal shows while a search runs: one compact table redrawn in place, or one line of
progress.

On a terminal, a `rich` table (trials running / finished / stopped / errored / pending, the best trial so far
with its key values, the running trials, elapsed time and what remains of the time budget, where the results
are written) is redrawn in place at most once a second. Elsewhere (CI, a log file) a plain line is printed
when the counts or the best change (at most every `LINE_EVERY_S`) and at least every `HEARTBEAT_S`. With
`--verbose`, Ray's own status table (`CLIReporter`) and INFO lines are shown instead. When the running
trials got a small share of the CPU in their last epoch (`fer_tune.search.cpu_share`), the table shows one
line saying so, and the plain lines say it once.

Ray pickles the run config, reporter included, into `tuner.pkl`, and a resumed search gets that reporter
back. So the reporter Ray holds (`LiveReporter`) keeps no state: it forwards to the view `watch()` installs
for the duration of one `Tuner.fit()`, which is built from this run's options (terminal, `--verbose`, the
folder the search was resumed from).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.tune import CLIReporter, ProgressReporter

from fer_tune.search.budget_stopper import budget_left
from fer_tune.search.cpu_share import share_line, typical_share
from fer_tune.search.internals import AUTH_TOKEN_LOGGER
from fer_tune.search.job_budget import clock

REDRAW_EVERY_S = 1.0  # the table on a terminal
LINE_EVERY_S = 5.0  # the plain line, when something changed
HEARTBEAT_S = 60.0  # the plain line, when nothing did
MAX_ROWS = 8  # running trials listed in the table
MAX_KEYS = 5  # config values shown per trial
METRIC_COLUMNS = {"epoch": "epoch", "train_loss": "train_loss", "val_loss": "val_loss", "val_acc": "val_acc"}

_view: LiveView | None = None  # the view of the fit in progress (one per driver process)


class LiveReporter(ProgressReporter):
    """The reporter given to Ray's `RunConfig`: forwards to the view `watch()` installed, if any."""

    def setup(self, start_time: float | None = None, total_samples: int | None = None, **kwargs: Any) -> None:
        """Forward to `LiveView.setup`.

        Args:
            start_time: when the tuning loop started (`time.time()`); None for now.
            total_samples: the trials the search will run; None when unknown.
            **kwargs: Ray's other arguments, passed on.
        """
        if _view is not None:
            _view.setup(start_time, total_samples, **kwargs)

    def should_report(self, trials: list, done: bool = False) -> bool:
        """Forward to `LiveView.due`.

        Args:
            trials: every trial of the experiment.
            done: whether the experiment has ended.

        Returns:
            Whether to draw now; False when no view is installed.
        """
        return _view is not None and _view.due(trials, done)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        """Forward to `LiveView.update`.

        Args:
            trials: every trial of the experiment.
            done: whether the experiment has ended.
            *sys_info: Ray's status lines (shown with `--verbose`).
        """
        if _view is not None:
            _view.update(trials, done, *sys_info)


class LiveView:
    """A search's progress: `due()` decides (cheaply, every loop of Ray's controller), `update()` draws.

    Args:
        folder: the search folder (shown: where the results are written).
        metric: what trials are ranked by (`search.metric`).
        mode: `max` or `min`.
        keys: config keys (`model/arch`, `train/lr`) shown for the best and running trials.
        budget_s: the search's time budget, if any.
        verbose: show Ray's status table (its `CLIReporter`) instead.
        console: where to draw (default: stdout); a terminal gets the table, anything else plain lines.
    """

    def __init__(
        self,
        folder: Path,
        metric: str,
        mode: str,
        keys: Sequence[str] = (),
        budget_s: float | None = None,
        verbose: bool = False,
        console: Any = None,
    ) -> None:
        from rich.console import Console

        self.folder, self.metric, self.mode, self.budget_s = folder, metric, mode, budget_s
        self.keys = list(keys)[:MAX_KEYS]
        self.console = console or Console()
        self.verbose = verbose
        self.start = time.time()
        self.total: int | None = None
        self.redraws, self.cpu_s = 0, 0.0  # what drawing cost this process (thread CPU time, seconds)
        self._last_draw = self._line_at = -float("inf")
        self._last_line: tuple = ()
        self._share_said = False  # the plain lines said that trials get a small share of the CPU
        self._live: Any = None
        self._ray_table = (
            CLIReporter(
                metric_columns=METRIC_COLUMNS,
                parameter_columns={k: k.split("/")[-1] for k in keys},
                max_report_frequency=30,
                # Ray's sort raises TypeError on two finished trials without the metric, which a time budget
                # makes: ones it stops before their first epoch.
                sort_by_metric=budget_s is None,
            )
            if verbose
            else None
        )

    # -- the reporter interface ------------------------------------------------------------------------------

    def setup(self, start_time: float | None, total_samples: int | None, **kwargs: Any) -> None:
        """Called by Ray when the tuning loop starts.

        Args:
            start_time: when the tuning loop started (`time.time()`); None for now.
            total_samples: the trials the search will run; None when unknown.
            **kwargs: passed on to Ray's table with `--verbose`.
        """
        self.start = start_time or time.time()
        self.total = total_samples
        if self._ray_table is not None:
            self._ray_table.setup(start_time=start_time, total_samples=total_samples, **kwargs)
        elif self.console.is_terminal:
            from rich.live import Live

            # auto_refresh=False: no drawing thread; the table changes only when update() redraws it.
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        else:
            self._print(f"fer-tune: search started; results in {self.folder}")

    def due(self, trials: list, done: bool) -> bool:
        """Whether to draw now: at most once a second (Ray asks after every step of its loop).

        Args:
            trials: every trial of the experiment.
            done: whether the experiment has ended.

        Returns:
            Whether `update` should be called.
        """
        t0 = time.thread_time()
        if self._ray_table is not None:
            due = self._ray_table.should_report(trials, done)
        else:
            due = done or time.monotonic() - self._last_draw >= REDRAW_EVERY_S
        self.cpu_s += time.thread_time() - t0
        return due

    def update(self, trials: list, done: bool, *sys_info: str) -> None:
        """Draw the table (terminal), a line (elsewhere) or Ray's table (verbose).

        Args:
            trials: every trial of the experiment.
            done: whether the experiment has ended.
            *sys_info: Ray's status lines (shown with `--verbose`).
        """
        t0 = time.thread_time()
        self._last_draw = time.monotonic()
        if self._ray_table is not None:
            self._ray_table.report(trials, done, *sys_info)
        elif self._live is not None:
            self._live.update(self.render(trials), refresh=True)
            self.redraws += 1
        else:
            self._maybe_line(trials, done)
        self.cpu_s += time.thread_time() - t0

    def close(self) -> None:
        """Leave the last table on screen."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # -- what is drawn ---------------------------------------------------------------------------------------

    def counts(self, trials: list) -> dict[str, int]:
        """Trials per state: running, finished (all their epochs), stopped (by ASHA or the time budget),
        errored, pending.

        Args:
            trials: every trial of the experiment.

        Returns:
            State -> count, every state present.
        """
        n = dict.fromkeys(("running", "finished", "stopped", "errored", "pending"), 0)
        for t in trials:
            n[_state(t)] += 1
        return n

    def best(self, trials: list) -> Any:
        """The trial with the best value of the metric in any epoch so far (None before the first result).

        Args:
            trials: every trial of the experiment.

        Returns:
            Ray's Trial, or None.
        """
        scored = [t for t in trials if _best_value(t, self.metric, self.mode) is not None]
        if not scored:
            return None
        pick = max if self.mode == "max" else min
        return pick(scored, key=lambda t: _best_value(t, self.metric, self.mode))

    def render(self, trials: list) -> Any:
        """What the terminal shows: a line of counts and times, the table, where the results go.

        Args:
            trials: every trial of the experiment.

        Returns:
            A rich renderable.
        """
        from rich.console import Group
        from rich.text import Text

        head = f"{self._times()}   {self._counts_text(self.counts(trials), len(trials))}"
        parts = [Text(head), self.table(trials), Text(f"results: {self.folder}", style="dim")]
        share = share_line(self.cpu_share(trials))
        if share is not None:
            parts.insert(1, Text(share, style="yellow"))
        return Group(*parts)

    def cpu_share(self, trials: list) -> float | None:
        """The typical share of the CPU the running trials got in their last epoch (`cpu_share`).

        Args:
            trials: every trial of the experiment.

        Returns:
            The median over the running trials that reported one; None when none did.
        """
        running = [t for t in trials if _state(t) == "running"]
        return typical_share((t.last_result or {}).get("cpu_share") for t in running)

    def table(self, trials: list) -> Any:
        """The rich table: the best trial so far (marked *), then the running ones, with their key values.

        Args:
            trials: every trial of the experiment.

        Returns:
            A `rich.table.Table` (at most `MAX_ROWS` running trials).
        """
        from rich.table import Table

        best = self.best(trials)
        running = [t for t in trials if _state(t) == "running" and t is not best]
        table = Table(box=None, header_style="bold", pad_edge=False)
        names = ("trial", "state", "epoch", f"best {self.metric}", *(k.split("/")[-1] for k in self.keys))
        for name in names:
            table.add_column(name, no_wrap=True)
        rows = ([best] if best is not None else []) + running[:MAX_ROWS]
        for t in rows:
            value = _best_value(t, self.metric, self.mode)
            table.add_row(
                ("* " if t is best else "  ") + str(t.trial_id),
                _state(t),
                str((t.last_result or {}).get("epoch", "")),
                "" if value is None else f"{value:.4g}",
                *(_fmt(_config_value(t.config, k)) for k in self.keys),
                style="bold" if t is best else None,
            )
        if len(running) > MAX_ROWS:
            table.add_row(f"  +{len(running) - MAX_ROWS} more running", *[""] * (3 + len(self.keys)))
        return table

    def line(self, trials: list) -> str:
        """The plain one-line progress.

        Args:
            trials: every trial of the experiment.

        Returns:
            Times, counts and the best trial so far, on one line.
        """
        best = self.best(trials)
        text = f"fer-tune: {self._times()} | {self._counts_text(self.counts(trials), len(trials))}"
        if best is not None:
            keys = ", ".join(f"{k.split('/')[-1]} {_fmt(_config_value(best.config, k))}" for k in self.keys)
            value = _best_value(best, self.metric, self.mode)
            text += f" | best {self.metric} {value:.4g} (trial {best.trial_id}{': ' + keys if keys else ''})"
        return text

    def _maybe_line(self, trials: list, done: bool) -> None:
        best = self.best(trials)
        key = (
            tuple(self.counts(trials).items()),
            None if best is None else best.trial_id,
            None if best is None else _best_value(best, self.metric, self.mode),
        )
        since = time.monotonic() - self._line_at
        if done or (key != self._last_line and since >= LINE_EVERY_S) or since >= HEARTBEAT_S:
            self._print(self.line(trials))
            self._last_line, self._line_at = key, time.monotonic()
            self.redraws += 1
        share = share_line(self.cpu_share(trials))
        if (share is not None) != self._share_said:  # once when trials start to get little, not every line
            if share is not None:
                self._print(f"fer-tune: {share}")
            self._share_said = share is not None

    def _times(self) -> str:
        elapsed = time.time() - self.start
        text = f"{clock(elapsed)} elapsed"
        if self.budget_s:
            left = budget_left()  # what the stopper counts down: after a resume, less than the whole budget
            left = max(0.0, self.budget_s - elapsed) if left is None else left
            text += f", {clock(left)} left of {clock(self.budget_s)}"
        return text

    def _counts_text(self, n: dict[str, int], seen: int) -> str:
        of = f" of {self.total}" if self.total and self.total > 0 else ""
        parts = [f"{v} {k}" for k, v in n.items() if v or k != "pending"]
        return f"trials{of}: " + ", ".join(parts) if seen else f"trials{of}: starting"

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def watch(
    folder: Path,
    metric: str,
    mode: str,
    keys: Sequence[str] = (),
    budget_s: float | None = None,
    verbose: bool = False,
    console: Any = None,
) -> Iterator[LiveView]:
    """Show the progress of the `Tuner.fit()` run inside this block (through `LiveReporter`).

    Args:
        folder: the search folder, shown.
        metric: what trials are ranked by.
        mode: `max` or `min`.
        keys: config keys shown for the best and running trials (`train/lr`).
        budget_s: the search's time budget in seconds; None for none.
        verbose: show Ray's status table instead.
        console: a `rich.console.Console` to draw on; None for stdout.

    Yields:
        The view (closed, the last table left on screen, when the block ends).
    """
    global _view
    view = LiveView(folder, metric, mode, keys, budget_s, verbose, console)
    _view = view
    try:
        yield view
    finally:
        _view = None
        view.close()


def quiet_ray(verbose: bool) -> int:
    """Before `ray.init`: the logging level to give it (INFO lines only with `--verbose`).

    Ray's notice that it enabled token authentication (its default for a local cluster, printed on every
    start) is dropped; its warning that a cluster runs *without* authentication is kept.

    Args:
        verbose: show Ray's INFO lines.

    Returns:
        `logging.INFO` with `verbose`, else `logging.WARNING` (also set on the `ray` logger).
    """
    auth = logging.getLogger(AUTH_TOKEN_LOGGER)
    if not any(isinstance(f, _DropTokenNotice) for f in auth.filters):
        auth.addFilter(_DropTokenNotice())
    level = logging.INFO if verbose else logging.WARNING
    logging.getLogger("ray").setLevel(level)  # ray.init logs before it applies its logging_level
    return level


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled")


# -- helpers -------------------------------------------------------------------------------------------------


def _state(trial: Any) -> str:
    status = trial.status
    if status in ("RUNNING", "PAUSED"):
        return "running"
    if status == "ERROR":
        return "errored"
    if status != "TERMINATED":
        return "pending"
    epoch = (trial.last_result or {}).get("epoch")
    planned = _config_value(trial.config, "train/epochs")
    if planned is None:
        from fer_tune.training import TrainConfig

        planned = TrainConfig().epochs
    return "finished" if isinstance(epoch, (int, float)) and epoch >= planned else "stopped"


def _best_value(trial: Any, metric: str, mode: str) -> float | None:
    """The trial's best epoch value of the metric (Ray keeps the max and min of every reported metric)."""
    value = (getattr(trial, "metric_analysis", None) or {}).get(metric, {}).get(mode)
    return value if isinstance(value, (int, float)) and value == value else None  # not NaN


def _config_value(config: dict[str, Any], key: str) -> Any:
    """`model/arch` of a nested config (or of a flat one with `/` keys)."""
    if key in config:
        return config[key]
    value: Any = config
    for part in key.split("/"):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace(" ", "")
