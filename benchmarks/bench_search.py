"""fer-tune's search against random search and against tuning by hand, at equal wall-clock time.

    python benchmarks/bench_search.py --data PATH [--budget 20m] [--space cpu] [--out results/bench-search]
        [--num-samples N] [--cpus N]

Runs one after another on this machine, each as the command a user types and each with the same budget:
  tpe-asha  `fer-tune --space cpu --gpus 0 --time-budget B`: Optuna TPE proposes (after the space's
            points_to_evaluate), ASHA stops weak trials
  random    the same space with `search.algorithm: random` (Ray's basic variant generator), `scheduler: none`,
            from chance (without the space's points_to_evaluate)
  hand      `fer-tune train configs/hand_tuned.yaml`: a student's recipe, the baseline (stopped at B)
Each arm's anytime curve is the best PublicTest accuracy reached against minutes since its command started
(a trial's epochs from Ray's result.json timestamps; the hand run's from metrics.csv as its lines appear).
Writes curves.png, table.md and bench_search.json to --out and prints each arm's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from fer_tune.data import load_fer2013
from fer_tune.search import parse_duration
from fer_tune.search.space import resolve_path

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "configs" / "hand_tuned.yaml"
BASELINE = "hand"
SHUTDOWN_S = 120  # a search's own stop at the budget (checkpoints, results files) before it is signalled


@dataclass
class Arm:
    name: str
    what: str
    points: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, val_acc)
    wall_s: float = 0.0
    trials: int = 0
    epochs: int = 0
    exit_status: int | None = None

    def curve(self, budget_s: float) -> list[tuple[float, float]]:
        """The best accuracy so far at each point within the budget (the anytime curve)."""
        best, out = -1.0, []
        for t, acc in sorted(p for p in self.points if p[0] <= budget_s):
            if acc > best:
                best = acc
                out.append((t, acc))
        return out

    def best(self, budget_s: float) -> tuple[float, float]:
        curve = self.curve(budget_s)
        return curve[-1] if curve else (float("nan"), float("nan"))

    def time_to(self, target: float, budget_s: float) -> float | None:
        return next((t for t, acc in self.curve(budget_s) if acc >= target), None)


def _cli() -> list[str]:
    return [sys.executable, "-m", "fer_tune.cli"]


def _run(cmd: list[str], log: Path, budget_s: float, poll=None) -> tuple[int, float]:
    """Run `cmd` (output to `log`) until it ends or budget + SHUTDOWN_S pass; `poll()` every second."""
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            if poll is not None:
                poll(t0)
            if time.time() - t0 > budget_s + SHUTDOWN_S:
                proc.send_signal(signal.SIGINT)  # fer-tune's own interrupt: results are written first
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                break
            time.sleep(1.0)
        if poll is not None:
            poll(t0)
    return proc.wait(), t0


def run_search_arm(arm: Arm, space: Path, args: argparse.Namespace, runs: Path, budget_s: float) -> None:
    cmd = [*_cli(), "--space", str(space), "--data", str(args.data), "--gpus", "0"]
    cmd += ["--time-budget", f"{int(budget_s)}s", "--results", str(runs), "--name", arm.name]
    cmd += ["--wandb-mode", "disabled"]
    if args.cpus:
        cmd += ["--cpus", str(args.cpus)]
    if args.num_samples:
        cmd += ["--num-samples", str(args.num_samples)]
    print(f"[{arm.name}] {' '.join(cmd[2:])}", flush=True)
    start = time.time()
    arm.exit_status, t0 = _run(cmd, runs / f"{arm.name}.log", budget_s)
    arm.wall_s = time.time() - start
    for result in sorted((runs / arm.name).glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "val_acc" in r and "timestamp" in r]
        arm.trials += bool(rows)
        arm.epochs += len({r["epoch"] for r in rows})
        arm.points += [(r["timestamp"] - t0, float(r["val_acc"])) for r in rows]


def run_hand_arm(arm: Arm, args: argparse.Namespace, runs: Path, budget_s: float) -> None:
    out = runs / arm.name
    cmd = [*_cli(), "train", str(HAND), "--data", str(args.data), "--out", str(out), "--device", "cpu"]
    print(f"[{arm.name}] {' '.join(cmd[2:])}", flush=True)
    seen: dict[int, float] = {}

    def poll(t0: float) -> None:  # the time an epoch's line appears is when a person would see it
        try:
            metrics = pd.read_csv(out / "metrics.csv")
        except (OSError, ValueError):
            return
        for _, row in metrics.iterrows():
            seen.setdefault(int(row["epoch"]), (time.time() - t0, float(row["val_acc"])))

    start = time.time()
    arm.exit_status, _ = _run(cmd, runs / f"{arm.name}.log", budget_s, poll=poll)
    arm.wall_s = time.time() - start
    arm.trials, arm.epochs, arm.points = 1, len(seen), list(seen.values())


def random_space(space: Path, out: Path) -> Path:
    """The same space, sampled by Ray's random search with no early stopping."""
    raw = yaml.safe_load(space.read_text())
    # from chance: no recipes tried first, no earlier trials (random search has no study to tell them to)
    search = {k: v for k, v in raw.get("search", {}).items() if k not in ("points_to_evaluate", "warm_start")}
    raw["search"] = {**search, "algorithm": "random", "scheduler": "none", "stuck_epochs": 0}
    path = out / "random.yaml"
    path.write_text(f"# {space.name} with random search and no scheduler (bench_search.py)\n")
    with path.open("a") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def _pct(x: float) -> str:
    return _num(100 * x, ".1f", "%")


def _num(x: float, fmt: str, unit: str = "") -> str:
    """A number, or "-" when an arm reached nothing within the budget (NaN)."""
    return "-" if x != x else f"{x:{fmt}}{unit}"


def table(arms: list[Arm], budget_s: float) -> str:
    base_best = next(a for a in arms if a.name == BASELINE).best(budget_s)[1]
    lines = [
        "| arm | what | configs trained | epochs | best PublicTest | reached at (min) | vs hand (points) "
        "| vs hand (ratio) | minutes to the hand recipe's best |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in arms:
        t, acc = a.best(budget_s)
        reach = a.time_to(base_best, budget_s)
        cells = [a.name, a.what, a.trials, a.epochs, _pct(acc), _num(t / 60, ".1f")]
        cells += [_num(100 * (acc - base_best), "+.1f"), _num(acc / base_best, ".3f", "x")]
        cells.append("-" if reach is None else f"{reach / 60:.1f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def plot(arms: list[Arm], budget_s: float, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for a in arms:
        curve = a.curve(budget_s)
        if curve:  # a step function held to the end of the budget
            ts = [t / 60 for t, _ in curve] + [budget_s / 60]
            accs = [100 * acc for _, acc in curve] + [100 * curve[-1][1]]
            ax.step(ts, accs, where="post", label=f"{a.name}: {a.what}", marker="o", markersize=3)
    ax.set_xlabel("wall-clock minutes since the command started")
    ax.set_ylabel("best PublicTest accuracy so far (%)")
    ax.set_xlim(0, budget_s / 60)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Search vs random search vs hand tuning, {budget_s / 60:g} minutes each")
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("FER_TUNE_DATA"), help="FER2013 CSV or image folder")
    p.add_argument("--budget", default="20m", help="wall-clock budget of each arm (20m, 90s; default 20m)")
    p.add_argument("--space", default="cpu", help="the search space (default: cpu)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench-search"), help="output folder")
    p.add_argument("--num-samples", type=int, help="cap the trials of both searches (quick checks)")
    p.add_argument("--cpus", type=int, help="CPUs of each search (default: all)")
    args = p.parse_args(argv)
    if not args.data:
        p.error("--data is required (or set FER_TUNE_DATA)")
    budget_s = parse_duration(args.budget, "--budget")
    out = Path(args.out).resolve()
    runs = out / "runs"
    if runs.exists():  # the arms' folders of an earlier run: a search would refuse to start over its own name
        print(f"removing {runs} (the working folders of an earlier run)")
        shutil.rmtree(runs)
    runs.mkdir(parents=True)
    space = resolve_path(args.space).resolve()
    load_fer2013(args.data)  # parsed and cached now, so no arm pays the first parse
    load = os.getloadavg()[0]

    arms = [
        Arm("tpe-asha", f"fer-tune search over {space.stem} (Optuna TPE + ASHA)"),
        Arm("random", f"random search over {space.stem}, no early stopping"),
        Arm(BASELINE, "hand-tuned recipe (configs/hand_tuned.yaml)"),
    ]
    run_search_arm(arms[0], space, args, runs, budget_s)
    run_search_arm(arms[1], random_space(space, out), args, runs, budget_s)
    run_hand_arm(arms[2], args, runs, budget_s)
    # An arm that failed (e.g. a bad flag) rather than ran out of time: its figures would be a silent 0
    failed = [a for a in arms if not a.points and a.exit_status not in (0, 130)]
    for a in failed:
        last = (runs / f"{a.name}.log").read_text().strip().splitlines()[-1:] or ["(empty log)"]
        print(f"{a.name}: no epoch finished (exit status {a.exit_status}): {last[0]}", file=sys.stderr)
    if failed:
        return 1

    md = table(arms, budget_s)
    plot(arms, budget_s, out / "curves.png")
    header = (
        f"`python benchmarks/bench_search.py --budget {args.budget} --space {args.space}`: "
        f"{budget_s / 60:g} minutes per arm, one run of each, {os.cpu_count()} CPUs, "
        f"load average {load:.1f} at the start; baseline: the hand-tuned recipe.\n\n"
    )
    (out / "table.md").write_text(header + md)
    record = {
        "budget_s": budget_s,
        "space": str(space.relative_to(ROOT)) if space.is_relative_to(ROOT) else str(space),
        "load_average_at_start": load,
        "cpus": os.cpu_count(),
        "arms": [asdict(a) | {"best": a.best(budget_s), "curve": a.curve(budget_s)} for a in arms],
    }
    (out / "bench_search.json").write_text(json.dumps(record, indent=2) + "\n")
    print(md)
    base = arms[2].best(budget_s)[1]
    for a in arms[:2]:
        acc = a.best(budget_s)[1]
        reach = a.time_to(base, budget_s)
        speed = f"; reached the hand recipe's best in {reach / 60:.1f} min" if reach is not None else ""
        print(f"{a.name}: {_pct(acc)} = {_num(acc / base, '.3f', 'x')} the hand recipe's {_pct(base)}{speed}")
    print(f"wrote {out / 'table.md'}, {out / 'curves.png'}, {out / 'bench_search.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
