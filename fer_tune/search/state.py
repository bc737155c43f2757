"""A search's record in `fer_tune.json`: its data, its phases, whether it ended (`SearchState`, `Phase`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    """One run of trials in a search: the first search, or one `fer-tune extend`.

    Args:
        number: 1 for the search itself; 2, 3, ... for extensions.
        space: the space file it was given.
        num_samples: the trials it adds.
        started: when it started (ISO 8601, local time, seconds).
        finished: whether it ran to its end (not stopped by Ctrl-C or a crash).
        ended: when it ended (ISO 8601); None while running.
        command: the command line that started it.
        outside: ids of earlier trials its space could not have proposed: kept in the results, hidden from
            its sampler.
        sampler: what proposed its trials: `tpe` or `gp` (Optuna's), `random` or `grid` (Ray's); empty in a
            phase recorded before fer-tune recorded it (`fer_tune.search.sampler.choose_sampler`).
        sampler_why: the line saying which and why (for `search.algorithm: auto`, the planned trial count).
    """

    number: int  # 1: the search itself; 2, 3, ...: extensions
    space: str  # the space file it was given
    num_samples: int  # trials it adds
    started: str
    finished: bool = False
    ended: str | None = None
    command: str = ""
    # Earlier trials the phase's space could not have proposed: kept in the results, hidden from its sampler.
    outside: list[str] = field(default_factory=list)
    sampler: str = ""  # tpe | gp | random | grid ("": recorded before the sampler was)
    sampler_why: str = ""  # one line: which sampler and why (search.algorithm auto: the planned trials)


@dataclass
class SearchState:
    """`fer_tune.json`: what resume, extend and report need to know about a search.

    Args:
        name: the search's name (its folder's).
        space: phase 1's space file.
        data: the absolute path of the data.
        started: when the search started (ISO 8601).
        cpus: the CPUs it was given (`--cpus`); None for all of the cluster's.
        gpus: the GPUs it was given (`--gpus`); None for all of the cluster's.
        wandb_project: the Weights & Biases project trials log to; None for no logging.
        wandb_mode: `online` or `offline`.
        finished: whether the latest phase finished.
        ended: when the latest phase ended (ISO 8601); None while running.
        command: the command line that started the search.
        study: the Optuna study's name in optuna.db; None for a search that is not an Optuna one.
        phases: every phase, in order; the last is the latest.
        warm_start: the earlier searches the study started from, one `{"folder", "trials", "skipped",
            "unfinished"}` each (`fer_tune.search.warm_start`); their trials are in optuna.db, not in the
            results.
    """

    name: str
    space: str  # phase 1's space file
    data: str  # absolute path of the data
    started: str
    cpus: int | None = None
    gpus: float | None = None
    wandb_project: str | None = None
    wandb_mode: str = "online"
    finished: bool = False  # the latest phase finished
    ended: str | None = None
    command: str = ""
    study: str | None = None  # the Optuna study's name in optuna.db (None: not an Optuna search)
    phases: list[Phase] = field(default_factory=list)
    # the earlier searches whose trials the study was told before phase 1 asked for any (added once)
    warm_start: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchState:
        """The state read from `fer_tune.json`'s JSON; unknown keys are ignored.

        Args:
            raw: the parsed JSON; a record written before phases existed gets phase 1 from its own fields.

        Returns:
            The state.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        state = cls(**{k: v for k, v in raw.items() if k in known and k != "phases"})
        state.phases = [Phase(**p) for p in raw.get("phases") or []]
        if not state.phases:  # written before phases existed: the search is its only phase
            state.phases = [
                Phase(1, state.space, 0, state.started, state.finished, state.ended, state.command)
            ]
        return state

    def to_dict(self) -> dict[str, Any]:
        """The state as `fer_tune.json` holds it.

        Returns:
            Plain, JSON-safe values; `from_dict` reads them back.
        """
        return dataclasses.asdict(self)

    @property
    def phase(self) -> Phase:
        """The latest phase."""
        return self.phases[-1]
