"""The runs of `bench_search.py`: each arm's anytime points (`Arm`), and the report over repeats (mean +- std
of each arm's best PublicTest, paired differences to random search and whether they exceed the noise) and
its curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BASELINE = "hand"  # the "vs hand" columns
REFERENCE = "random"  # the paired differences


@dataclass
class Arm:
    """One run of one arm: what it reached and when.

    Args:
        name: the arm (`warm`, `cold`, `random`, `hand`, `gp`).
        what: what it runs, in words.
        repeat: the repeat, also its seed.
        points: (seconds since its command started, PublicTest accuracy) of every epoch it finished.
        wall_s: how long its command ran.
        trials: configs that finished at least one epoch.
        epochs: epochs finished, over all its configs.
        exit_status: its command's exit status; None when it did not run.
        load: the load average when it started.
    """

    name: str
    what: str
    repeat: int = 0
    points: list[tuple[float, float]] = field(default_factory=list)
    wall_s: float = 0.0
    trials: int = 0
    epochs: int = 0
    exit_status: int | None = None
    load: float = float("nan")

    @property
    def run_name(self) -> str:
        return f"{self.name}-r{self.repeat}"

    def failed(self) -> bool:
        """No epoch finished and the command did not end by itself or by the budget's SIGINT (a bad flag)."""
        return not self.points and self.exit_status not in (0, 130)

    def curve(self, budget_s: float) -> list[tuple[float, float]]:
        """The best accuracy so far at each point within the budget (the anytime curve)."""
        best, out = -1.0, []
        for t, acc in sorted(p for p in self.points if p[0] <= budget_s):
            if acc > best:
                best = acc
                out.append((t, acc))
        return out

    def best(self, budget_s: float) -> tuple[float, float]:
        """(when, accuracy) of the best epoch within the budget; NaNs when none finished in it."""
        curve = self.curve(budget_s)
        return curve[-1] if curve else (float("nan"), float("nan"))

    def time_to(self, target: float, budget_s: float) -> float | None:
        return next((t for t, acc in self.curve(budget_s) if acc >= target), None)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Arm:
        known = {f.name for f in fields(cls)}
        arm = cls(**{k: v for k, v in raw.items() if k in known})
        arm.points = [(float(t), float(acc)) for t, acc in arm.points]
        return arm


@dataclass
class Stats:
    """Values over repeats: their mean, sample standard deviation (None for n < 2) and count."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.values else float("nan")

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def se(self) -> float | None:
        """The standard error of the mean."""
        return None if self.std is None else self.std / math.sqrt(self.n)

    def shown(self, fmt: str = ".2f", unit: str = "") -> str:
        if not self.values:
            return "-"
        std = "" if self.std is None else f" ± {self.std:{fmt.lstrip('+')}}"
        return f"{self.mean:{fmt}}{std}{unit}"


def _finite(x: float) -> bool:
    return x == x and math.isfinite(x)


def best_points(runs: Sequence[Arm], name: str, budget_s: float) -> dict[int, float]:
    """Repeat -> the arm's best PublicTest within the budget, in points (%); a repeat that reached none is
    left out."""
    out = {}
    for a in runs:
        acc = a.best(budget_s)[1]
        if a.name == name and _finite(acc):
            out[a.repeat] = 100 * acc
    return out


def summary(runs: Sequence[Arm], budget_s: float) -> dict[str, Stats]:
    """Arm -> its best PublicTest within the budget (points) over the repeats."""
    names = list(dict.fromkeys(a.name for a in runs))
    return {name: Stats(list(best_points(runs, name, budget_s).values())) for name in names}


def paired(runs: Sequence[Arm], budget_s: float, reference: str = REFERENCE) -> dict[str, dict[int, float]]:
    """Arm -> repeat -> its best minus the reference arm's best of the same repeat (points); repeats where
    either reached nothing are left out. The reference arm itself is left out."""
    ref = best_points(runs, reference, budget_s)
    names = [n for n in dict.fromkeys(a.name for a in runs) if n != reference]
    out = {}
    for name in names:
        own = best_points(runs, name, budget_s)
        out[name] = {r: own[r] - ref[r] for r in sorted(own) if r in ref}
    return out


def verdict(diffs: Sequence[float], reference: str = REFERENCE) -> str:
    """Whether the mean paired difference exceeds 2 standard errors of the paired differences (their sample
    std / sqrt(n)): about a 95% interval that leaves out 0 when n is large; with 3 repeats Student's t would
    ask for 4.3 SE, so "beyond the noise" at n = 3 is a screen, not a test."""
    s = Stats(list(diffs))
    if s.n < 2:
        return "n < 2: no noise estimate"
    se2 = 2 * (s.se or 0.0)
    if abs(s.mean) > se2:
        side = "better" if s.mean > 0 else "worse"
        return f"{side} than {reference} beyond the noise: mean {s.mean:+.2f}, 2 SE {se2:.2f} (n = {s.n})"
    return f"within the noise: mean {s.mean:+.2f}, 2 SE {se2:.2f} (n = {s.n})"


def _num(x: float | None, fmt: str, unit: str = "") -> str:
    """A number, or "-" when there is none (None, or NaN: an arm reached nothing within the budget)."""
    return "-" if x is None or x != x else f"{x:{fmt}}{unit}"


def table(runs: Sequence[Arm], budget_s: float) -> str:
    """table.md's tables: the arms over the repeats, their paired differences to random search, each run."""
    names = list(dict.fromkeys(a.name for a in runs))
    repeats = sorted({a.repeat for a in runs})
    bests = summary(runs, budget_s)
    hand = best_points(runs, BASELINE, budget_s)
    lines = [
        "| arm | what | repeats | configs trained (mean) | epochs (mean) | best PublicTest (mean ± std, %) "
        "| reached at (min, mean) | vs hand (points, mean ± std) | minutes to the hand recipe's best |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        own = [a for a in runs if a.name == name]
        best = best_points(runs, name, budget_s)
        when = Stats([a.best(budget_s)[0] / 60 for a in own if _finite(a.best(budget_s)[0])])
        vs_hand = Stats(
            [best[a.repeat] - hand[a.repeat] for a in own if a.repeat in hand and a.repeat in best]
        )
        reach = [a.time_to(hand[a.repeat] / 100, budget_s) for a in own if a.repeat in hand]
        reached = [t / 60 for t in reach if t is not None]
        reach_cell = f"{Stats(reached).mean:.1f} ({len(reached)}/{len(reach)})" if reached else "-"
        cells = [name, own[0].what, len(own), _num(Stats([a.trials for a in own]).mean, ".1f")]
        cells += [
            _num(Stats([a.epochs for a in own]).mean, ".1f"),
            bests[name].shown(),
            _num(when.mean, ".1f"),
        ]
        cells += ["-" if name == BASELINE else vs_hand.shown("+.2f"), reach_cell]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    diffs = paired(runs, budget_s)
    if REFERENCE in names and diffs:
        lines += [
            "",
            f"Paired difference to {REFERENCE} search (points of best PublicTest, same repeat and seed):",
            "",
            "| arm | " + " | ".join(f"r{r}" for r in repeats) + " | mean ± std | verdict |",
            "|---|" + "---:|" * len(repeats) + "---:|---|",
        ]
        for name, by_repeat in diffs.items():
            cells = [name, *(_num(by_repeat.get(r), "+.2f") for r in repeats)]
            cells += [Stats(list(by_repeat.values())).shown("+.2f"), verdict(list(by_repeat.values()))]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Each run (best PublicTest %, configs trained, load average at its start):",
        "",
        "| arm | " + " | ".join(f"r{r}" for r in repeats) + " |",
        "|---|" + "---:|" * len(repeats),
    ]
    for name in names:
        by_repeat = {a.repeat: a for a in runs if a.name == name}
        cells = [name]
        for r in repeats:
            a = by_repeat.get(r)
            acc = None if a is None else a.best(budget_s)[1]
            cells.append("-" if a is None else f"{_num(acc, '.2%')} ({a.trials}, {_num(a.load, '.1f')})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdicts(runs: Sequence[Arm], budget_s: float) -> list[str]:
    """One line per arm: its mean best, and its paired difference to random search with the verdict."""
    bests, diffs = summary(runs, budget_s), paired(runs, budget_s)
    out = []
    for name, stats in bests.items():
        line = f"{name}: best PublicTest {stats.shown(unit='%')} over {stats.n} repeat(s)"
        if name in diffs:
            d = list(diffs[name].values())
            line += f"; vs {REFERENCE} {Stats(d).shown('+.2f', ' points')}: {verdict(d)}"
        out.append(line)
    return out


def plot(runs: Sequence[Arm], budget_s: float, path: Path) -> None:
    """Each run's anytime curve (thin) and each arm's mean over its repeats (bold), to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    grid = [budget_s * i / 400 for i in range(401)]
    for k, name in enumerate(dict.fromkeys(a.name for a in runs)):
        color = f"C{k}"
        own = [a for a in runs if a.name == name]
        at = []  # per run, the best so far at each grid time (None before its first epoch)
        for a in own:
            curve = a.curve(budget_s)
            at.append([next((100 * acc for t, acc in reversed(curve) if t <= g), None) for g in grid])
            if curve and len(own) > 1:  # a step function held to the end of the budget
                ts = [t / 60 for t, _ in curve] + [budget_s / 60]
                accs = [100 * acc for _, acc in curve] + [100 * curve[-1][1]]
                ax.step(ts, accs, where="post", color=color, alpha=0.3, linewidth=0.8)
        # The mean once every repeat has an epoch: earlier, a mean over fewer runs would jump.
        mean = [sum(v) / len(v) if all(x is not None for x in v) else None for v in zip(*at, strict=True)]
        ts = [g / 60 for g, m in zip(grid, mean, strict=True) if m is not None]
        ms = [m for m in mean if m is not None]
        if ms:
            label = f"{name}: {own[0].what}" + (f" (mean of {len(own)})" if len(own) > 1 else "")
            ax.plot(ts, ms, color=color, linewidth=2, label=label, drawstyle="steps-post")
    ax.set_xlabel("wall-clock minutes since the command started")
    ax.set_ylabel("best PublicTest accuracy so far (%)")
    ax.set_xlim(0, budget_s / 60)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    repeats = len({a.repeat for a in runs})
    ax.set_title(f"Search arms, {budget_s / 60:g} minutes each, {repeats} repeat(s)", fontsize=10)
    fig.savefig(path, dpi=110)
