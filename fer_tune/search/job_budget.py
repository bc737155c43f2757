"""One time budget for a search and its retrain: `fer-tune --space cpu ... --retrain 3` under `--time-budget`.

`JobBudget` splits the budget before the search starts: the search stops after `1 - search.retrain_share` of
it (Ray's `TimeoutStopper`, as any time budget), and the retrain gets what is left once the search has ended
(more, when the search ended early). The retrain's epochs are fixed before its first epoch (its learning-rate
schedule spans them), from what the search measured on this machine (`plan_retrain`, `plan_epochs`):

    epochs = floor((left / MARGIN - seeds x score_s) / (seeds x epoch_s)),
             at most `search.retrain_epochs` (else the config's own `train.epochs`),
             at least the config's own `train.epochs` (`RetrainPlan.minimum`)

- `epoch_s`: the median wall time per epoch of the best trial, whose config the retrain trains: the same
  model, batch size and precision on the same Training rows, scored on PublicTest each epoch as the retrain's
  are. Ray's time between two reports, which also holds the checkpoint write the retrain makes too; the
  median drops the first epoch's start-up and a resumed epoch's restore. So a machine with AMX (bf16) plans
  more epochs than one without, from its own figures, not from a table.
- Trials that ran several at once (`max_concurrent` > 1 on the CPU, or packed on a GPU) shared the machine
  and measured slower epochs than the retrain, which runs alone, will take; no speed-up is credited, because
  how much a lone run gains from the cores (or the GPU) the others used depends on the model and the memory
  bandwidth and is not measured: such a retrain ends early rather than late. Trials that got a small share
  of the CPU (`fer_tune.search.cpu_share`: another process was busy) measured slow epochs too; the retrain
  runs at the same niceness (`fer_tune.search.runner`), so it plans for the same, and ends early if the
  other process has finished.
- `score_s`: scoring a seed on every split, and with 2+ seeds each seed again in the ensemble without and
  with flip (4 forward views of every image per seed) and with ten-crop (10 views of each held-out image;
  `fer_tune.training.ttas_by_split`; in fp32 on a CPU): measured by timing the evaluation's own forward
  pass of the best config on `PROBE_IMAGES` images just before the retrain, plus `SCORE_OVERHEAD_S` for
  loading the seeds and drawing confusion matrices.
- `MARGIN` (1.1): epochs of one run vary by a few percent, the retrain's start-up and Python's are not
  measured.

The fewest epochs is the config's own `train.epochs`, what the search ranked it at: fewer would train a model
the search never measured, likely worse than its own trial. When even those do not fit what is left, the
retrain still trains them and says so before its first epoch, with the overrun it expects: the search's
result is paid for, and a model is what the command promised (Ctrl-C stops it; `fer-tune --resume DIR
--retrain N` continues it later).

The search's time is the wall time of the commands that ran it (`run_search`, `resume_search`: Ray's start
and shutdown included), added up in `budget.json` by `add_spent`; the time between a crash and the resume
is not counted. The plan is written there before the retrain's first epoch, so a retrain continued after a
crash trains the epochs its checkpoints were made for. Without `--retrain`, or without a time budget, the
budget (if any) is the search's alone and the retrain trains `search.retrain_epochs`, as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_tune.base import ConfigError, DataError, atomic_write_text, read_yaml
from fer_tune.search.cpu_share import SMALL_SHARE, typical_share
from fer_tune.search.folder import BEST_CONFIG, BUDGET_FILE

MARGIN = 1.1  # planned time x this must fit what is left
PROBE_IMAGES = 512  # images whose forward pass is timed to plan the scoring
SCORE_OVERHEAD_S = 3.0  # per seed: loading it for the ensemble, confusion matrices (matplotlib)
REASONS = ("fits", "cap", "over")  # as many epochs as fit; the cap binds; even the fewest do not fit


@dataclass
class JobBudget:
    """A search's time budget when it covers the retrain too (`--retrain N` with a time budget).

    Args:
        total_s: the whole job's budget (`search.time_budget` or `--time-budget`), seconds.
        retrain_share: the share kept for the retrain (`search.retrain_share`).
        seeds: the seeds `--retrain` asked for when the search started.
        spent_s: wall time the search's commands have taken so far, seconds.
        plan: the retrain's plan (`RetrainPlan.to_dict`), once made; None before.
        retrain_s: wall time the retrain has taken, seconds; None before it ran.
        cut_s: what the search left unused of its own budget because the retrain's fewest epochs needed
            more than the retrain's share (`fer_tune.search.retrain_reserve`), seconds; None when it did not.
        reserve_s: what the retrain was then reckoned to need at least, seconds; None when not cut.
    """

    total_s: float
    retrain_share: float
    seeds: int
    spent_s: float = 0.0
    plan: dict[str, Any] | None = None
    retrain_s: float | None = None
    cut_s: float | None = None
    reserve_s: float | None = None

    @property
    def search_s(self) -> float:
        """The search's own budget: what its `TimeoutStopper` stops it after, seconds."""
        return self.total_s * (1 - self.retrain_share)

    @property
    def left_s(self) -> float:
        """What the search has left of the budget (negative when it overran), seconds."""
        return self.total_s - self.spent_s

    def to_dict(self) -> dict[str, Any]:
        """The record `budget.json` holds (with the search's own budget, for readers).

        Returns:
            Plain, JSON-safe values; `from_dict` reads them back.
        """
        return dataclasses.asdict(self) | {"search_s": self.search_s}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> JobBudget:
        """The budget read from `budget.json`; unknown keys (`search_s`) are ignored.

        Args:
            raw: the parsed JSON.

        Returns:
            The budget.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def split_budget(total_s: float | None, retrain_share: float, seeds: int | None) -> JobBudget | None:
    """The job's budget, when a search with a time budget is followed by a retrain; else None.

    Args:
        total_s: the space's time budget (flags applied), seconds; None for none.
        retrain_share: `search.retrain_share`.
        seeds: `--retrain N`; None or 0 for no retrain.

    Returns:
        The budget (its `search_s` is what the search runs under), or None.
    """
    if not total_s or not seeds:
        return None
    return JobBudget(total_s=float(total_s), retrain_share=float(retrain_share), seeds=int(seeds))


def read_budget(folder: str | Path) -> JobBudget | None:
    """The search folder's `budget.json`, or None when its search had no budget covering a retrain.

    Args:
        folder: the local search folder.

    Returns:
        The budget, or None.

    Raises:
        DataError: the file is unreadable.
    """
    path = Path(folder) / BUDGET_FILE
    try:
        raw = json.loads(path.read_text())
        return JobBudget.from_dict(raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: unreadable: {e}") from None


def write_budget(folder: str | Path, job: JobBudget) -> None:
    """Write `budget.json` whole (a crash leaves the old one or the new one).

    Args:
        folder: the local search folder.
        job: the budget.
    """
    atomic_write_text(Path(folder) / BUDGET_FILE, json.dumps(job.to_dict(), indent=2) + "\n")


def add_spent(folder: str | Path, seconds: float) -> bool:
    """Count a search command's wall time against the job's budget (nothing when there is none).

    Args:
        folder: the local search folder.
        seconds: how long the command ran.

    Returns:
        Whether there was a budget to count it in.
    """
    job = read_budget(folder)
    if job is not None:
        job.spent_s += seconds
        write_budget(folder, job)
    return job is not None


# -- the retrain's epochs ------------------------------------------------------------------------------------


def plan_epochs(
    left_s: float,
    seeds: int,
    epoch_s: float,
    score_s: float,
    cap: int,
    minimum: int,
    margin: float = MARGIN,
) -> tuple[int, str]:
    """The retrain's epochs: as many as fit what is left, at most `cap`, at least `minimum`.

    Args:
        left_s: the time left for the retrain, seconds (may be negative: the search overran).
        seeds: seeds trained one after the other.
        epoch_s: one epoch's wall time, seconds (> 0).
        score_s: scoring one seed after its training, seconds.
        cap: the most epochs (`search.retrain_epochs`, else the config's own).
        minimum: the fewest epochs (the config's own, or `cap` when lower).
        margin: the planned time times this must fit `left_s`.

    Returns:
        (epochs, why): why is `fits` (as many as fit), `cap` (more would fit) or `over` (not even `minimum`
        fits; `minimum` is returned).

    Raises:
        ValueError: `epoch_s` not positive, `seeds` below 1, or `minimum` above `cap`.
    """
    if not epoch_s > 0 or seeds < 1 or not 1 <= minimum <= cap:
        raise ValueError(f"plan_epochs: epoch_s {epoch_s}, seeds {seeds}, minimum {minimum}, cap {cap}")
    fit = math.floor((left_s / margin - seeds * score_s) / (seeds * epoch_s))
    if fit >= cap:
        return cap, "cap"
    if fit >= minimum:
        return fit, "fits"
    return minimum, "over"


@dataclass
class RetrainPlan:
    """The retrain's epochs under the job's budget, and the figures they came from.

    Args:
        seeds: seeds to train.
        epochs: epochs per seed.
        why: `fits`, `cap` or `over` (see `plan_epochs`).
        cap: the most epochs it could train.
        minimum: the fewest epochs it trains.
        left_s: the time left for the retrain when it was planned, seconds.
        epoch_s: one epoch's measured wall time, seconds.
        score_s: scoring one seed, seconds (measured forward pass plus overhead).
        trial_id: the trial whose epochs were measured (the best one).
        measured_epochs: how many of its epochs the median is over.
        cpu_share: the share of the CPU the search's trials got (None where unknown).
        margin: the safety margin used.
    """

    seeds: int
    epochs: int
    why: str
    cap: int
    minimum: int
    left_s: float
    epoch_s: float
    score_s: float
    trial_id: str
    measured_epochs: int
    cpu_share: float | None = None
    margin: float = MARGIN

    @property
    def planned_s(self) -> float:
        """The retrain's expected wall time (training and scoring every seed, no margin), seconds."""
        return self.seeds * (self.epochs * self.epoch_s + self.score_s)

    def to_dict(self) -> dict[str, Any]:
        """The plan as `budget.json` holds it.

        Returns:
            Plain values, with `planned_s`.
        """
        return dataclasses.asdict(self) | {"planned_s": self.planned_s}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RetrainPlan:
        """A plan read back from `budget.json`.

        Args:
            raw: `to_dict`'s values.

        Returns:
            The plan.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    def lines(self, job: JobBudget) -> list[str]:
        """What the terminal shows before the retrain: how the budget was split and why these epochs.

        Args:
            job: the job's budget.

        Returns:
            Two to four lines.
        """
        seeds = f"{self.seeds} seed{'s' if self.seeds > 1 else ''}"
        cut = ""
        if job.cut_s is not None:
            cut = f" (ended {clock(job.cut_s)} early: the retrain's fewest epochs needed more than its share)"
        out = [
            f"time budget {clock(job.total_s)} for the search and the retrain (search.retrain_share "
            f"{job.retrain_share:g}): the search had {clock(job.search_s)} and took "
            f"{clock(job.spent_s)}{cut}, {clock(max(0.0, self.left_s))} left for the retrain",
            f"retrain: {seeds} x {self.epochs} epochs, about {clock(self.planned_s)}: "
            f"{self.epoch_s:.1f} s per epoch (median of {self.measured_epochs} epochs of trial "
            f"{self.trial_id}, the best config, measured in the search), {self.score_s:.0f} s to score each "
            f"seed, x{self.margin:g} margin",
        ]
        if self.why == "cap":
            out.append(
                f"the retrain trains its most, {self.cap} epochs (search.retrain_epochs, else the config's "
                f"own), and should end about {clock(self.left_s - self.planned_s)} before the budget"
            )
        elif self.why == "over":
            over = self.margin * self.planned_s - self.left_s
            out.append(
                f"even {self.minimum} epochs (the config's own train.epochs, the fewest a retrain trains) "
                f"need about {clock(self.margin * self.planned_s)} with {seeds}, more than is left: the job "
                f"will end about {clock(over)} after its budget"
            )
        if self.cpu_share is not None and self.cpu_share < SMALL_SHARE:
            out.append(
                f"the search's trials got ~{100 * self.cpu_share:.0f}% of the CPU while it measured these "
                "epochs: if the other process has finished, the retrain ends early"
            )
        return out


def measured_epoch(
    folder: str | Path, best: dict[str, Any] | None = None
) -> tuple[str, float, int, float | None] | None:
    """The best trial's epoch time, as the search measured it (see the module's docstring).

    Args:
        folder: the local search folder, its results written (`best_config.yaml`).
        best: `best_config.yaml` as already read; None to read it here.

    Returns:
        (trial id, median seconds per epoch, epochs measured, typical CPU share of the search's trials), or
        None when no trial reported an epoch.
    """
    import pandas as pd

    from fer_tune.search.results import load_results, selection

    trials, history = load_results(folder)
    if best is None:
        path = Path(folder) / BEST_CONFIG
        best = (read_yaml(path) if path.is_file() else None) or {}
    trial_id = (best.get("provenance") or {}).get("trial_id")  # the config the retrain trains
    if trial_id is None:
        ranked = selection(folder).rank(trials)
        if not len(ranked):
            return None
        trial_id = ranked.iloc[0]["trial_id"]
    hist = history[history["trial_id"] == trial_id]
    # Ray's time between reports holds the checkpoint write; a result written without it, the epoch's own.
    seconds = pd.to_numeric(hist["time_this_iter_s"], errors="coerce")
    seconds = seconds.fillna(pd.to_numeric(hist["epoch_seconds"], errors="coerce")).dropna()
    seconds = seconds[seconds > 0]
    if not len(seconds):
        return None
    share = typical_share(history.get("cpu_share", ()))
    return str(trial_id), float(seconds.median()), len(seconds), share


def scoring_seconds(config: Any, faces: Mapping[str, int], seeds: int, device: str | None = None) -> float:
    """How long scoring one seed of `config` takes after its training, measured on this machine now.

    Times `predict_logits` (what `evaluate_dir` and `evaluate_ensemble` run, in their precision) on
    `PROBE_IMAGES` random faces after a warm-up, and scales it to every view the retrain scores.

    Args:
        config: the retrain's `RunConfig`.
        faces: images per split of the data (`FER2013.sizes`).
        seeds: the retrain's seeds (with 2+, each is scored again in the ensemble with each of `ENSEMBLE_TTAS`
            on the splits `ttas_by_split` gives it).
        device: the retrain's device, as `resolve_device` takes it.

    Returns:
        Seconds per seed, with `SCORE_OVERHEAD_S`.
    """
    import torch

    from fer_tune.models import build_model
    from fer_tune.training import ENSEMBLE_TTAS, predict_logits, resolve_device, tta_views, ttas_by_split

    dev = resolve_device(device)
    size = config.augment.input_size
    model = build_model(config.model).to(dev, memory_format=torch.channels_last).eval()
    meta = {"config": config.to_dict(), "mean": 128.0, "std": 64.0, "input_size": size}
    probe = torch.randint(0, 256, (PROBE_IMAGES, 48, 48), dtype=torch.uint8, device=dev)
    predict_logits(model, meta, probe[:64])  # warm-up: kernels chosen, memory allocated
    t0 = time.perf_counter()
    predict_logits(model, meta, probe)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    per_image = (time.perf_counter() - t0) / PROBE_IMAGES
    views = sum(faces.values())  # evaluate_dir's one view of every face
    if seeds > 1:  # and the ensemble's, each TTA's views of the splits it scores
        one = torch.zeros(1, 1, 48, 48)
        count = {t: len(tta_views(one, size, t)) for t in ENSEMBLE_TTAS}
        for split, ttas in ttas_by_split(list(faces), ENSEMBLE_TTAS).items():
            views += faces[split] * sum(count[t] for t in ttas)
    return views * per_image + SCORE_OVERHEAD_S


def plan_retrain(
    folder: str | Path, job: JobBudget, seeds: int, data: Any, cap: int | None, device: str | None = None
) -> RetrainPlan | None:
    """The retrain's epochs under the job's budget, from what the search measured.

    Args:
        folder: the local search folder, its results written.
        job: the job's budget (`spent_s` up to the search's end).
        seeds: the seeds to train (`--retrain N`).
        data: the dataset the retrain trains and scores on (FER2013).
        cap: `search.retrain_epochs`; None for the config's own `train.epochs`.
        device: the retrain's device; None for CUDA when available.

    Returns:
        The plan, or None when the search measured no epoch (the retrain then trains its `cap`).
    """
    from fer_tune.training import RunConfig

    path = Path(folder) / BEST_CONFIG
    best = read_yaml(path) or {}  # once: its provenance names the trial, the rest is the config
    measured = measured_epoch(folder, best)
    if measured is None:
        return None
    trial_id, epoch_s, n, share = measured
    try:
        config = RunConfig.from_dict(best)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    own = config.train.epochs
    most = cap or own
    score_s = scoring_seconds(config, data.sizes(), seeds, device)
    epochs, why = plan_epochs(job.left_s, seeds, epoch_s, score_s, most, min(own, most))
    return RetrainPlan(
        seeds=seeds,
        epochs=epochs,
        why=why,
        cap=most,
        minimum=min(own, most),
        left_s=job.left_s,
        epoch_s=epoch_s,
        score_s=score_s,
        trial_id=trial_id,
        measured_epochs=n,
        cpu_share=share,
    )


def job_summary(job: JobBudget) -> str:
    """The last line of a job: what the search and the retrain took of the budget.

    Args:
        job: the budget, its `retrain_s` recorded.

    Returns:
        One line.
    """
    retrain_s = job.retrain_s or 0.0
    took = job.spent_s + retrain_s
    verdict = "within" if took <= job.total_s else f"{clock(took - job.total_s)} over"
    planned = ""
    if job.plan is not None:
        plan = RetrainPlan.from_dict(job.plan)
        planned = f" ({plan.seeds} x {plan.epochs} epochs, planned about {clock(plan.planned_s)})"
    return (
        f"the job took {clock(took)} of its {clock(job.total_s)} budget ({verdict}): the search "
        f"{clock(job.spent_s)}, the retrain {clock(retrain_s)}{planned}"
    )


def clock(seconds: float) -> str:
    """Seconds as `h:mm:ss`.

    Args:
        seconds: a duration (negative ones are shown as 0).

    Returns:
        The duration, rounded to the second.
    """
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
