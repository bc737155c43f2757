"""fer-tune's search against itself started cold, random search and tuning by hand, at equal wall-clock
time, repeated with other seeds.

    python benchmarks/bench_search.py --data PATH [--budget 20m] [--space cpu] [--out results/bench-search]
        [--repeats 3] [--arms warm,cold,random,hand] [--num-samples N] [--cpus N]

Runs one after another on this machine, each as the command a user types and each with the same budget B:
  warm    `fer-tune --space cpu --gpus 0 --time-budget B`: the space as the README's first command runs it,
          Optuna TPE proposing after its points_to_evaluate and from its warm_start's trials, ASHA stopping
          weak trials (the whole budget searches: no --retrain)
  cold    the same space without points_to_evaluate and warm_start: TPE + ASHA from chance
  random  the same space with `search.algorithm: random` (Ray's basic variant generator), `scheduler: none`,
          without points_to_evaluate and warm_start
  hand    `fer-tune train configs/hand_tuned.yaml`: a student's recipe, the baseline (stopped at B)
  gp      (only with --arms ...,gp) warm with `search.algorithm: gp` (Optuna's GPSampler)
Repeat r (0, 1, ...) runs every arm with seed r: the space's `search.seed` and its trials' `seed`, and the
hand recipe's `seed` (repeat 0 is the README's command itself). Arms run repeat by repeat, so that a bench
stopped early holds whole repeats and slow drift of the machine's load falls on every arm alike.

Resumable: each finished (arm, repeat) leaves its folder `runs/<arm>-r<r>/` (the search folder, or the hand
run's), its log `runs/<arm>-r<r>.log` and its record `runs/<arm>-r<r>.json` (its anytime points, written
last). A rerun with the same --out reads the records back and runs only the rest; an (arm, repeat) without
its record (failed, or the bench was stopped while it ran) runs again from scratch. Records made with another
budget, space, --num-samples or --cpus are refused: use another --out.

Each run's anytime curve is the best PublicTest accuracy reached against minutes since its command started
(a trial's epochs from Ray's result.json timestamps; the hand run's from metrics.csv as its lines appear).
Writes curves.png (each repeat thin, the mean over repeats bold), table.md and bench_search.json to --out
(`search_arms.py` makes them): per arm the mean +- std over repeats of the best PublicTest within the
budget, and its paired difference to random search (same repeat, same seed) with the mean +- std over
repeats, and whether that mean exceeds 2 standard errors of the paired differences (the noise between
repeats); with one repeat there is no noise estimate.
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
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from search_arms import (  # benchmarks/: scripts run from this folder
    BASELINE,
    Arm,
    Stats,
    paired,
    plot,
    summary,
    table,
    verdict,
    verdicts,
)

from fer_tune.base import atomic_write_text
from fer_tune.data import load_fer2013
from fer_tune.search import parse_duration
from fer_tune.search.space import resolve_path

ROOT = Path(__file__).resolve().parents[1]
HAND = ROOT / "configs" / "hand_tuned.yaml"
ARMS = {
    "warm": "fer-tune search over {space} as the README runs it (TPE + ASHA, given points and warm start)",
    "cold": "fer-tune search over {space} from chance (TPE + ASHA, no given points, no warm start)",
    "random": "random search over {space}, no early stopping, no given points",
    "hand": "hand-tuned recipe (configs/hand_tuned.yaml)",
    "gp": "fer-tune search over {space} with Optuna's GPSampler (+ ASHA, given points and warm start)",
}
DEFAULT_ARMS = ("warm", "cold", "random", "hand")
SHUTDOWN_S = 120  # a search's own stop at the budget (checkpoints, results files) before it is signalled


# -- running the arms ----------------------------------------------------------------------------------------


def _cli() -> list[str]:
    return [sys.executable, "-m", "fer_tune.cli"]


def _run(cmd: list[str], log: Path, budget_s: float, poll=None) -> tuple[int, float]:
    """Run `cmd` (output to `log`) until it ends or budget + SHUTDOWN_S pass; `poll()` every second."""
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            while proc.poll() is None:
                if poll is not None:
                    poll(t0)
                if time.time() - t0 > budget_s + SHUTDOWN_S:
                    _interrupt(proc, 60)
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:  # the bench is stopped: so is its run, which saves what it has first
            _interrupt(proc, SHUTDOWN_S)
            raise
        if poll is not None:
            poll(t0)
    return proc.wait(), t0


def _interrupt(proc: subprocess.Popen, wait_s: float) -> None:
    """SIGINT, fer-tune's own interrupt (results are written first), then a kill after `wait_s` seconds.

    A Ctrl-C at a terminal has already reached `proc` (one process group): a second SIGINT only makes
    fer-tune say it is still saving. A SIGINT sent to the bench alone reaches `proc` only this way."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_search_arm(arm: Arm, space: Path, args: argparse.Namespace, runs: Path, budget_s: float) -> None:
    """Run `fer-tune --space space` as `runs/<arm>-r<r>/` and read its epochs back into `arm`."""
    cmd = [*_cli(), "--space", str(space), "--data", str(args.data), "--gpus", "0"]
    cmd += ["--time-budget", f"{int(budget_s)}s", "--results", str(runs), "--name", arm.run_name]
    cmd += ["--wandb-mode", "disabled"]
    if args.cpus:
        cmd += ["--cpus", str(args.cpus)]
    if args.num_samples:
        cmd += ["--num-samples", str(args.num_samples)]
    print(f"[{arm.run_name}] {' '.join(cmd[2:])}", flush=True)
    start = time.time()
    arm.exit_status, t0 = _run(cmd, runs / f"{arm.run_name}.log", budget_s)
    arm.wall_s = time.time() - start
    for result in sorted((runs / arm.run_name).glob("trial_*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "val_acc" in r and "timestamp" in r]
        arm.trials += bool(rows)
        arm.epochs += len({r["epoch"] for r in rows})
        arm.points += [(r["timestamp"] - t0, float(r["val_acc"])) for r in rows]


def run_hand_arm(arm: Arm, config: Path, args: argparse.Namespace, runs: Path, budget_s: float) -> None:
    """Run `fer-tune train config` into `runs/hand-r<r>/`, noting when each epoch's line appears."""
    out = runs / arm.run_name
    cmd = [*_cli(), "train", str(config), "--data", str(args.data), "--out", str(out), "--device", "cpu"]
    print(f"[{arm.run_name}] {' '.join(cmd[2:])}", flush=True)
    seen: dict[int, tuple[float, float]] = {}

    def poll(t0: float) -> None:  # the time an epoch's line appears is when a person would see it
        try:
            metrics = pd.read_csv(out / "metrics.csv")
        except (OSError, ValueError):
            return
        for _, row in metrics.iterrows():
            seen.setdefault(int(row["epoch"]), (time.time() - t0, float(row["val_acc"])))

    start = time.time()
    arm.exit_status, _ = _run(cmd, runs / f"{arm.run_name}.log", budget_s, poll=poll)
    arm.wall_s = time.time() - start
    arm.trials, arm.epochs, arm.points = 1, len(seen), list(seen.values())


def arm_space(space: Path, arm: str, seed: int, out: Path) -> Path:
    """The space file arm `arm` searches in repeat `seed`, written to `out/<arm>-r<seed>.yaml`.

    Every arm gets `search.seed` and the trials' `seed` (when the space fixes it) set to `seed`, and the warm
    start's folders made absolute (they are relative to the space file, which moves). `cold` and `random` drop
    the given points and the warm start (random search has no study to tell them to); `random` samples with
    Ray's random search and no scheduler; `gp` proposes with Optuna's GPSampler.
    """
    raw = yaml.safe_load(space.read_text())
    search = dict(raw.get("search") or {})
    search["seed"] = seed
    search["warm_start"] = [str((space.parent / p).resolve()) for p in search.get("warm_start") or []]
    if arm in ("cold", "random"):
        search = {k: v for k, v in search.items() if k not in ("points_to_evaluate", "warm_start")}
    if arm == "random":
        search |= {"algorithm": "random", "scheduler": "none", "stuck_epochs": 0}
    if arm == "gp":
        search["algorithm"] = "gp"
    raw["search"] = search
    if not isinstance(raw.get("seed"), dict):  # a sampled seed stays sampled
        raw["seed"] = seed
    return _write_yaml(out / f"{arm}-r{seed}.yaml", f"{space.name}, arm {arm} of repeat {seed}", raw)


def _write_yaml(path: Path, header: str, raw: dict) -> Path:
    """`raw` as YAML under a `# header (bench_search.py)` line, in a folder made if missing; the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {header} (bench_search.py)\n" + yaml.safe_dump(raw, sort_keys=False))
    return path


def random_space(space: Path, out: Path, seed: int = 0) -> Path:
    """The same space, sampled by Ray's random search with no early stopping (the `random` arm)."""
    return arm_space(space, "random", seed, out)


def hand_config(seed: int, out: Path) -> Path:
    """The hand recipe with its `seed` set, written to `out/hand-r<seed>.yaml`."""
    raw = yaml.safe_load(HAND.read_text())
    raw["seed"] = seed
    return _write_yaml(out / f"hand-r{seed}.yaml", f"{HAND.name} with seed {seed}", raw)


# -- resuming: one record per finished (arm, repeat) ---------------------------------------------------------


def run_all(
    runs: Path,
    arms: Sequence[str],
    repeats: int,
    settings: dict[str, Any],
    run: Callable[[str, int], Arm],
) -> list[Arm]:
    """Every (arm, repeat), repeat by repeat: read back where `runs/<arm>-r<r>.json` exists, else run.

    Args:
        runs: the folder of the runs (`<out>/runs`).
        arms: the arms, in order.
        repeats: repeats 0 .. repeats - 1.
        settings: what every record must have been made with (budget, space, ...), stored in each.
        run: runs one (arm, repeat) from scratch and returns it.

    Returns:
        The runs, repeat by repeat; failed ones included (not recorded: a rerun runs them again).

    Raises:
        SystemExit: a record made with other settings.
    """
    runs.mkdir(parents=True, exist_ok=True)
    out = []
    for r in range(repeats):
        for name in arms:
            record = runs / f"{name}-r{r}.json"
            if record.is_file():
                saved = json.loads(record.read_text())
                if saved.get("settings") != settings:
                    raise SystemExit(
                        f"{record}: made with {saved.get('settings')}, this bench has {settings}; "
                        "use another --out"
                    )
                print(f"[{name}-r{r}] finished earlier: {record}", flush=True)
                out.append(Arm.from_dict(saved["arm"]))
                continue
            for stale in (runs / f"{name}-r{r}", runs / f"{name}-r{r}.log"):  # a run that never finished
                if stale.is_dir():
                    shutil.rmtree(stale)
                elif stale.exists():
                    stale.unlink()
            arm = run(name, r)
            if not arm.failed():
                atomic_write_text(record, json.dumps({"settings": settings, "arm": asdict(arm)}, indent=1))
            out.append(arm)
    return out


# -- the command ---------------------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, Any]:
    s = Stats(values)
    return {"points": s.values, "mean": s.mean if s.values else None, "std": s.std}


def _arms(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown or not names or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"arms from {', '.join(ARMS)}, each once; got {text!r}")
    return names


def _repeats(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 100:
        raise argparse.ArgumentTypeError(f"1 to 100, got {text}")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("FER_TUNE_DATA"), help="FER2013 CSV or image folder")
    p.add_argument("--budget", default="20m", help="wall-clock budget of each run (20m, 90s; default 20m)")
    p.add_argument("--space", default="cpu", help="the search space (default: cpu)")
    p.add_argument("--out", default=str(ROOT / "results" / "bench-search"), help="output folder")
    p.add_argument("--repeats", type=_repeats, default=1, help="repeats, seeds 0 .. N-1 (default 1)")
    p.add_argument(
        "--arms",
        type=_arms,
        default=list(DEFAULT_ARMS),
        help=f"comma-separated, from {', '.join(ARMS)} (default: {','.join(DEFAULT_ARMS)})",
    )
    p.add_argument("--num-samples", type=int, help="cap the trials of the searches (quick checks)")
    p.add_argument("--cpus", type=int, help="CPUs of each search (default: all)")
    args = p.parse_args(argv)
    if not args.data:
        p.error("--data is required (or set FER_TUNE_DATA)")
    budget_s = parse_duration(args.budget, "--budget")
    out = Path(args.out).resolve()
    runs, spaces = out / "runs", out / "spaces"
    space = resolve_path(args.space).resolve()
    shown_space = str(space.relative_to(ROOT)) if space.is_relative_to(ROOT) else str(space)
    settings = {
        "budget_s": budget_s,
        "space": shown_space,
        "num_samples": args.num_samples,
        "cpus": args.cpus,
    }
    load_fer2013(args.data)  # parsed and cached now, so no arm pays the first parse
    load = os.getloadavg()[0]

    def run(name: str, repeat: int) -> Arm:
        arm = Arm(name, ARMS[name].format(space=space.stem), repeat, load=os.getloadavg()[0])
        if name == BASELINE:
            run_hand_arm(arm, hand_config(repeat, spaces), args, runs, budget_s)
        else:
            run_search_arm(arm, arm_space(space, name, repeat, spaces), args, runs, budget_s)
        return arm

    # Ctrl-C, `kill -INT` and `kill -TERM` stop the bench one way: its running search is interrupted and saves
    # first (`_run`), the finished runs are kept. Also when a script started it in the background, where the
    # shell hands it SIGINT ignored (it went on with the next run) and SIGTERM would orphan the search.
    previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        results = run_all(runs, args.arms, args.repeats, settings, run)
    except KeyboardInterrupt:
        print(f"stopped: the finished runs are kept in {runs}; the same command continues", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    # A run that failed (e.g. a bad flag) rather than ran out of time: its figures would be a silent 0
    failed = [a for a in results if a.failed()]
    for a in failed:
        last = (runs / f"{a.run_name}.log").read_text().strip().splitlines()[-1:] or ["(empty log)"]
        print(f"{a.run_name}: no epoch finished (exit status {a.exit_status}): {last[0]}", file=sys.stderr)
    if failed:
        print(
            "the finished runs are kept: run the same command again to run the failed ones", file=sys.stderr
        )
        return 1

    md = table(results, budget_s)
    plot(results, budget_s, out / "curves.png")
    header = (
        f"`python benchmarks/bench_search.py --budget {args.budget} --space {args.space} --repeats "
        f"{args.repeats} --arms {','.join(args.arms)}`: {budget_s / 60:g} minutes per run, repeat r with "
        f"seed r, {os.cpu_count()} CPUs, load average {load:.1f} at the start of this command; best "
        "PublicTest within the budget.\n\n"
    )
    (out / "table.md").write_text(header + md + "\n" + "\n".join(verdicts(results, budget_s)) + "\n")
    record = {
        **settings,
        "repeats": args.repeats,
        "arms_run": args.arms,
        "load_average_at_start": load,
        "cpus_of_machine": os.cpu_count(),
        "arms": [asdict(a) | {"best": a.best(budget_s), "curve": a.curve(budget_s)} for a in results],
        "summary": {n: _stats(s.values) for n, s in summary(results, budget_s).items()},
        "paired_to_random": {
            n: _stats(list(d.values())) | {"repeats": list(d), "verdict": verdict(list(d.values()))}
            for n, d in paired(results, budget_s).items()
        },
    }
    (out / "bench_search.json").write_text(json.dumps(record, indent=2) + "\n")
    print(md)
    print("\n".join(verdicts(results, budget_s)))
    print(f"wrote {out / 'table.md'}, {out / 'curves.png'}, {out / 'bench_search.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
