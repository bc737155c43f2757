"""The `search` and `resources` blocks of a search space: typed settings, parsed and checked.

Errors start with the key path (`search.metric: ...`), as everywhere in a space.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fer_tune.base import MAX_FAILURES, MAX_INT, MAX_SECONDS, MAX_SEED, MAX_TRIALS, ConfigError, check, shown
from fer_tune.training import METRIC_MODES

ALGORITHMS = ("optuna", "gp", "auto", "random", "grid")
# The algorithms whose trials an Optuna study proposes (TPE, GP, or one of them chosen by the trial count:
# `fer_tune.search.sampler.choose_sampler`): they take points_to_evaluate and warm_start, and extend.
STUDY_ALGORITHMS = ("optuna", "gp", "auto")
STUDY_ALGORITHMS_TEXT = "optuna, gp or auto"  # as messages name them
SCHEDULERS = ("asha", "none")
SCHEDULER_KEYS = ("max_t", "grace_period", "reduction_factor")


@dataclass
class SearchSettings:
    """The `search` block: how many trials, which algorithm and scheduler, how long.

    Args:
        algorithm: `optuna` (Optuna's TPE), `gp` (Optuna's GPSampler), `auto` (GP or TPE by `num_samples`:
            `fer_tune.search.sampler.choose_sampler`), `random` or `grid` (Ray's).
        num_samples: trials (grid: passes over the grid), 1 to `MAX_TRIALS` (100,000); a parsed space has 20,
            or 1 for grid, by default.
        metric: a key of `METRIC_MODES`; trials are ranked by its best epoch.
        mode: `max` or `min`; None for the metric's direction in `METRIC_MODES`.
        scheduler: `asha` or `none`.
        max_t: ASHA's last rung, in epochs; None for the largest `train.epochs` of the space.
        grace_period: epochs every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps 1/reduction_factor of the trials at each rung.
        time_budget_s: stop the search after this many seconds; None for no budget.
        trial_timeout_s: stop a trial that has not reported for this many seconds (hung); None for never.
        seed: seeds Optuna's sampler or Ray's random search, 0 to 2**32 - 1.
        max_concurrent: trials at once; None for as many as the resources hold.
        max_failures: retries of a failed trial, 0 to `MAX_FAILURES` (10): a trial that failed that often
            fails again (Ray's -1, retry forever, is refused).
        stuck_epochs: stop a trial whose val_acc stayed flat near chance this many epochs; 0 for never.
        retrain_epochs: `--retrain`'s epochs, fixed in advance; None for the best config's own. Under a time
            budget, the most it trains (see `retrain_share`).
        retrain_share: with `--retrain N` and a time budget, the share of the budget kept for the retrain,
            in (0, 1); the search stops after the rest (`fer_tune.search.job_budget`).
        points_to_evaluate: partial run configs tried first (Optuna's `enqueue_trial`), the rest sampled;
            `STUDY_ALGORITHMS` only.
        warm_start: earlier search folders whose finished trials the study starts from, relative to the space
            file (`fer_tune.search.warm_start`); `STUDY_ALGORITHMS` only.
    """

    algorithm: str = "optuna"  # optuna (TPE) | gp (Optuna's GPSampler) | auto (GP or TPE) | random | grid
    num_samples: int = 0  # trials (grid: passes over the grid); default 20, grid: 1
    metric: str = "val_acc"  # a key of METRIC_MODES; trials are ranked by its best epoch
    mode: str | None = None  # max | min; default: the metric's direction in METRIC_MODES
    scheduler: str = "asha"  # asha | none
    max_t: int | None = None  # ASHA's last rung, in epochs (default: the largest train.epochs of the space)
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 3  # ASHA keeps 1/reduction_factor of the trials at each rung
    time_budget_s: float | None = None  # stop the search after this many seconds
    # stop a trial that has not reported for this many seconds (a hung trial); None: never
    trial_timeout_s: float | None = None
    seed: int = 0  # seeds Optuna's sampler or Ray's random search
    max_concurrent: int | None = None  # default: as many trials as the resources hold
    max_failures: int = 0  # retries of a failed trial
    # stop a trial whose val_acc stayed flat near chance this many epochs (collapsed to one class); 0: never
    stuck_epochs: int = 0
    # `--retrain`'s epochs, fixed in advance (None: the best config's own train.epochs); a search may rank
    # configs at fewer epochs than its final model trains for
    retrain_epochs: int | None = None
    # with --retrain N and a time budget, the budget covers both: the retrain keeps this share of it and the
    # search stops after the rest (0.55: a 100-minute job searches for 45 minutes, as the `cpu` space did
    # before the budget covered its retrain); the retrain's epochs follow from the epoch time the search
    # measured, at most retrain_epochs (fer_tune.search.job_budget)
    retrain_share: float = 0.55
    # configs tried first (partial run configs; the rest is sampled): recipes known to be good, so that a
    # short search starts from them instead of from chance (Optuna's enqueue_trial; checked against the space)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    # earlier search folders (relative to the space file) whose finished trials the study is told before it
    # proposes anything: TPE starts from what was measured (fer_tune.search.warm_start)
    warm_start: list[str] = field(default_factory=list)

    @property
    def uses_study(self) -> bool:
        """Whether an Optuna study proposes the trials (`STUDY_ALGORITHMS`): the search has an `optuna.db`."""
        return self.algorithm in STUDY_ALGORITHMS


@dataclass
class Resources:
    """The `resources` block: what each trial reserves.

    Args:
        cpus_per_trial: CPUs per trial, also its torch threads (at least 1).
        gpus_per_trial: the GPU share per trial; None for 1 when the search uses GPUs, else 0; `auto` to
            measure it per family (`fer_tune.search.packing`).
        gpu_shares: family name -> its own GPU share, over `gpus_per_trial`; None for none (`auto` fills it).
    """

    cpus_per_trial: float = 1.0  # also the torch threads of the trial (at least 1)
    # None: 1 when the search uses GPUs, else 0; "auto": measured per family (fer_tune.search.packing)
    gpus_per_trial: float | str | None = None
    gpu_shares: dict[str, float] | None = None  # per family, over gpus_per_trial ("auto" fills it)


def parse_duration(value: Any, key: str = "search.time_budget") -> float | None:
    """`90m`, `2h`, `3600s`, `1.5h`, a number of seconds, or null.

    Args:
        value: the duration as written (suffix s, m, h or d; none for seconds), a number of seconds, or None.
        key: the key path or flag it was given as, for the message.

    Returns:
        Seconds, or None for None.

    Raises:
        ConfigError: not a positive duration, or longer than `MAX_SECONDS` (366 days).
    """
    if value is None:
        return None
    seconds = None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and len(value) < 40:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", value)
        if m is not None:
            seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    check(
        seconds is not None and seconds > 0,
        key,
        f"expected a duration like 90m, 2h, 3600s; got {shown(value)}",
    )
    days = MAX_SECONDS // 86400
    check(seconds <= MAX_SECONDS, key, f"at most {days} days ({MAX_SECONDS} s), got {shown(value)}")
    return seconds


def _is_number(x: Any) -> bool:
    """A finite real number, not a bool (YAML's `.inf`, `.nan` and 1e400 are not numbers a setting takes)."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    if isinstance(x, numbers.Integral):
        return abs(x) <= MAX_INT
    return math.isfinite(x)


def _parse_search(raw: Any) -> SearchSettings:
    s = SearchSettings(num_samples=20)
    if raw is None:
        return s
    check(isinstance(raw, Mapping), "search", f"expected a mapping, got {shown(raw)}")
    simple = {"algorithm": str, "num_samples": int, "metric": str, "mode": str, "seed": int}
    simple |= {"max_concurrent": int, "max_failures": int, "stuck_epochs": int, "retrain_epochs": int}
    for key, value in raw.items():
        k = f"search.{key}"
        if key in simple:
            kind = simple[key]
            ok = isinstance(value, kind) and not isinstance(value, bool)
            ok = ok or (key in ("max_concurrent", "retrain_epochs") and value is None)
            check(ok, k, f"expected {kind.__name__}, got {shown(value)}")
            setattr(s, key, value)
        elif key == "time_budget":
            s.time_budget_s = parse_duration(value, k)
        elif key == "retrain_share":
            s.retrain_share = value  # checked by check_search, as a flag's value would be
        elif key == "trial_timeout":
            s.trial_timeout_s = parse_duration(value, k)
        elif key == "scheduler":
            _parse_scheduler(value, s)
        elif key == "points_to_evaluate":
            value = [] if value is None else value
            check(isinstance(value, list), k, f"expected a list of configs, got {shown(value)}")
            for i, point in enumerate(value):
                check(
                    isinstance(point, Mapping), f"{k}.{i}", f"expected a config mapping, got {shown(point)}"
                )
            s.points_to_evaluate = [dict(p) for p in value]
        elif key == "warm_start":
            value = [] if value is None else value
            ok = isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
            check(ok, k, f"expected a list of search folders, got {shown(value)}")
            s.warm_start = list(value)
        else:
            known = [*simple, "time_budget", "retrain_share", "trial_timeout", "scheduler"]
            known += ["points_to_evaluate", "warm_start"]
            raise ConfigError(f"{k}: unknown key; known keys: {', '.join(known)}")
    check(
        s.algorithm in ALGORITHMS,
        "search.algorithm",
        f"must be one of {ALGORITHMS}, got {shown(s.algorithm)}",
    )
    if "num_samples" not in raw:
        s.num_samples = 1 if s.algorithm == "grid" else 20
    _check_metric(s)
    check_search(s)
    return s


def check_search(s: SearchSettings) -> None:
    """Every number of the `search` block in range: what a space file gives, and what flags override it with
    (`--num-samples`, `--max-failures`, `--time-budget`, ...), checked again after the overrides.

    Args:
        s: the settings.

    Raises:
        ConfigError: a value of the wrong type or out of range, named by its key (`search.num_samples`).
    """
    ints = {
        "num_samples": (1, MAX_TRIALS),
        "max_failures": (0, MAX_FAILURES),
        "seed": (0, MAX_SEED),
        "max_concurrent": (1, MAX_TRIALS),
        "retrain_epochs": (1, MAX_INT),
        "grace_period": (1, MAX_INT),
        "reduction_factor": (2, MAX_INT),
        "max_t": (1, MAX_INT),
    }
    for key, (lo, hi) in ints.items():
        value = getattr(s, key)
        if value is None and key in ("max_concurrent", "retrain_epochs", "max_t"):
            continue
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        bounds = f">= {lo}" if hi == MAX_INT else f"in {lo}..{hi}"
        name = f"search.scheduler.{key}" if key in SCHEDULER_KEYS else f"search.{key}"
        check(ok, name, f"must be {bounds}, got {shown(value)}")
    v = s.stuck_epochs
    ok = isinstance(v, int) and not isinstance(v, bool) and (v == 0 or 2 <= v <= MAX_INT)
    check(ok, "search.stuck_epochs", f"must be 0 or >= 2, got {shown(v)}")
    v = s.retrain_share
    ok = _is_number(v) and 0 < v < 1
    check(ok, "search.retrain_share", f"must be a number in (0, 1) (the retrain's share), got {shown(v)}")
    for key in ("time_budget_s", "trial_timeout_s"):
        v = getattr(s, key)
        ok = v is None or (_is_number(v) and 0 < v <= MAX_SECONDS)
        check(ok, f"search.{key.removesuffix('_s')}", f"must be in (0, {MAX_SECONDS}] s, got {shown(v)}")


def _check_metric(s: SearchSettings) -> None:
    """A known metric, and a mode that agrees with its direction (filled in when the metric has one)."""
    known = ", ".join(METRIC_MODES)
    check(s.metric in METRIC_MODES, "search.metric", f"unknown metric {shown(s.metric)}; known: {known}")
    check(s.mode in (None, "min", "max"), "search.mode", f"must be min or max, got {shown(s.mode)}")
    direction = METRIC_MODES[s.metric]
    if direction is None:
        check(s.mode is not None, "search.mode", f"required with search.metric {s.metric} (min or max)")
    else:
        check(
            s.mode in (None, direction),
            "search.mode",
            f"{s.mode} contradicts search.metric {s.metric}, which is {direction}imised",
        )
        s.mode = direction


def _parse_scheduler(value: Any, s: SearchSettings) -> None:
    if value is None or isinstance(value, str):
        value = {"type": value or "none"}
    check(
        isinstance(value, Mapping),
        "search.scheduler",
        f"expected asha, none or a mapping, got {shown(value)}",
    )
    for key, v in value.items():
        k = f"search.scheduler.{key}"
        if key == "type":
            check(v in SCHEDULERS, k, f"must be one of {SCHEDULERS}, got {shown(v)}")
            s.scheduler = v
        elif key in ("max_t", "grace_period", "reduction_factor"):
            ok = (
                isinstance(v, int)
                and not isinstance(v, bool)
                and v >= (2 if key == "reduction_factor" else 1)
            )
            check(ok or (key == "max_t" and v is None), k, f"expected a positive integer, got {shown(v)}")
            setattr(s, key, v)
        else:
            raise ConfigError(f"{k}: unknown key; known keys: type, max_t, grace_period, reduction_factor")


def _parse_resources(raw: Any) -> Resources:
    r = Resources()
    if raw is None:
        return r
    check(isinstance(raw, Mapping), "resources", f"expected a mapping, got {shown(raw)}")
    for key, value in raw.items():
        k = f"resources.{key}"
        check(
            key in ("cpus_per_trial", "gpus_per_trial", "gpu_shares"),
            k,
            "unknown key; known: cpus_per_trial, gpus_per_trial, gpu_shares",
        )
        if key == "gpu_shares":
            check(
                isinstance(value, Mapping), k, f"expected a mapping family -> GPU share, got {shown(value)}"
            )
            for arch, v in value.items():
                check(_is_number(v) and v > 0, f"{k}.{arch}", f"expected a number > 0, got {shown(v)}")
            r.gpu_shares = {str(a): float(v) for a, v in value.items()}
            continue
        if key == "gpus_per_trial" and value == "auto":
            r.gpus_per_trial = "auto"
            continue
        check(
            value is None or (_is_number(value) and value >= 0),
            k,
            f"expected a number >= 0, got {shown(value)}",
        )
        setattr(r, key, None if value is None else float(value))
    return r


def _check_gpu_share(g: float, key: str) -> None:
    # A trial trains on one GPU (no multi-GPU trials yet); shares that do not divide 1 strand a remainder of
    # every GPU (ray#5902).
    check(g <= 1, key, f"a trial trains on one GPU: must be <= 1, got {g:g}")
    check(g >= 1e-3, key, f"at least 0.001 (1000 trials on one GPU), got {g:g}")  # 1 / 1e-310 is inf
    divides = g == 1 or abs(1 / g - round(1 / g)) < 1e-6
    check(divides, key, f"must be 1 or divide 1 (0.5, 0.25, ...), got {g:g}")
