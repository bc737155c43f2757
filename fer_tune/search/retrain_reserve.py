"""`RetrainReserve`: the least time the retrain after a search needs, which the search leaves free.

Under one budget for a search and its retrain (`fer_tune.search.job_budget`), the search stops after its share
and the retrain trains as many epochs as fit what is left, but never fewer than the best config's own
`train.epochs`. On a slow machine even those may not fit the retrain's share: on a 2-core AMD EPYC without
AMX (2026-12-02) the `cpu` space's best config took 83.7 s an epoch, so 3 seeds x 12 epochs and their scoring
needed about 63 minutes of the 55 left, and the job overran its 100 minutes by 8. So, as trials report, this
callback keeps the least the retrain of the best trial so far needs,

    needed = MARGIN x seeds x (fewest epochs x its median epoch time + scoring one seed),

and `BudgetStopper` ends the search as soon as what the search has left of its own budget is no more than
`needed + END_S - retrain share` (`END_S`: the search's own end, outside the stopper's clock): the search
gives up the minutes the retrain's fewest epochs need. Scoring a seed is
timed with the evaluation's own forward pass (`job_budget.scoring_seconds`) when a trial first becomes the
best; trials train meanwhile, so it is timed on a busy machine and errs long: the retrain, planned again when
the search has ended on an idle machine, then trains more than its fewest epochs.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from fer_tune.search.job_budget import MARGIN, clock, read_budget, scoring_seconds, write_budget

# The search's own time outside the stopper's clock, which starts at Ray's first step and stops when it fires:
# Ray's start before, stopping the trials, writing the tables and Ray's shutdown after. 26 s on the 2-core
# EPYC (2026-12-02: the stopper fired at 10:34, the search took 11:00); kept free for the retrain too.
END_S = 45.0


class RetrainReserve(Callback):
    """Keeps, as trials report, the least time the retrain of the best trial so far needs.

    Args:
        folder: the local search folder (its `budget.json` records the cut).
        seeds: the seeds the retrain trains (`--retrain N`).
        retrain_s: the retrain's share of the job's budget, seconds (the search leaves it free anyway).
        faces: images per split of the data the retrain scores (`FER2013.sizes`).
        cap: `search.retrain_epochs`; None for the config's own `train.epochs`.
        metric: the search's metric.
        mode: `max` or `min`.
    """

    def __init__(
        self,
        folder: str | Path,
        seeds: int,
        retrain_s: float,
        faces: Mapping[str, int],
        cap: int | None,
        metric: str,
        mode: str,
    ) -> None:
        self.folder, self.seeds, self.retrain_s, self.faces = str(folder), seeds, retrain_s, dict(faces)
        self.cap, self.metric, self.mode = cap, metric, mode
        self.epoch_s: dict[str, list[float]] = {}  # trial id -> its epochs' wall times
        self.best: tuple[str, float] | None = None  # (trial id, its best metric value)
        self.costs: dict[str, tuple[int, float]] = {}  # trial id -> (fewest retrain epochs, scoring s)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Ray's callback on a trial's result: record the epoch's wall time; when the trial becomes the best,
        what its retrain costs."""
        seconds = result.get("time_this_iter_s")
        if isinstance(seconds, int | float) and seconds > 0:
            self.epoch_s.setdefault(trial.trial_id, []).append(float(seconds))
        value = result.get(self.metric)
        if not isinstance(value, int | float) or math.isnan(value):
            return
        if self.best is None or (value > self.best[1] if self.mode == "max" else value < self.best[1]):
            self.best = (trial.trial_id, float(value))
            if trial.trial_id not in self.costs:
                self.costs[trial.trial_id] = self._cost(trial.config)

    def _cost(self, config: dict[str, Any]) -> tuple[int, float]:
        """(fewest epochs, seconds to score one seed) of the retrain of `config`; (0, 0) when unknown."""
        from fer_tune.base import ConfigError
        from fer_tune.training import RunConfig

        try:
            cfg = RunConfig.from_dict(config)
        except (ConfigError, TypeError, ValueError):
            return 0, 0.0
        own = cfg.train.epochs
        return min(own, self.cap or own), scoring_seconds(cfg, self.faces, self.seeds)

    def needed_s(self) -> float:
        """The least the retrain of the best trial so far needs, margin included, seconds (0 before any).

        Returns:
            Seconds.
        """
        if self.best is None or not self.epoch_s.get(self.best[0]):
            return 0.0
        epochs, score_s = self.costs.get(self.best[0], (0, 0.0))
        epoch_s = statistics.median(self.epoch_s[self.best[0]])
        return MARGIN * self.seeds * (epochs * epoch_s + score_s)

    def cut_s(self) -> float:
        """How much of its own budget the search must leave unused for the retrain, seconds (0: none).

        Returns:
            Seconds: what the retrain needs beyond its share, and the search's own end (`END_S`).
        """
        needed = self.needed_s()
        return max(0.0, needed + END_S - self.retrain_s) if needed else 0.0

    def end_search(self, left_s: float) -> None:
        """Say that the search ends early, and record it in `budget.json` (`cut_s`).

        Args:
            left_s: what the search had left of its own budget, seconds.
        """
        needed = self.needed_s()
        print(
            f"fer-tune: the search ends {clock(left_s)} before its own budget: the retrain of its best "
            f"config needs at least {clock(needed)} ({self.seeds} x its fewest epochs and the scoring, "
            f"x{MARGIN:g}), more than the {clock(self.retrain_s)} kept for it",
            file=sys.stderr,
        )
        job = read_budget(self.folder)
        if job is not None:
            job.cut_s, job.reserve_s = left_s, needed
            write_budget(self.folder, job)
