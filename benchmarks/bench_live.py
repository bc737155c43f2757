"""CPU cost of the live view's update path (`fer_tune.search.progress.LiveView`), on a fake terminal and
on a pipe.

    python benchmarks/bench_live.py [--trials 8 64 256] [--seconds 3]

For each search size, Ray's controller loop is imitated: `due()` is asked every 5 ms (Ray asks after every
step of its loop) and `update()` draws when it says so, for --seconds. Prints the redraws, the view's thread
CPU time per redraw and its share of one core (at one redraw a second the share is the CPU per redraw).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from fer_tune.search.progress import LiveView

KEYS = ["model/arch", "model/kernels", "train/lr", "train/weight_decay", "augment/mixup"]


def trials(n: int) -> list:
    """n stand-in trials (the attributes of Ray's Trial the view reads): a quarter running, the rest ended."""
    out = []
    for i in range(n):
        config = {
            "model": {"arch": "resnet", "kernels": [64, 128, 256]},
            "train": {"lr": 0.01 * (i + 1), "weight_decay": 5e-4, "epochs": 30},
            "augment": {"mixup": 0.2},
        }
        status = ("RUNNING", "TERMINATED", "TERMINATED", "ERROR")[i % 4]
        best = 0.5 + i / (10 * n)
        out.append(
            SimpleNamespace(
                trial_id=f"ab12_{i:05d}",
                status=status,
                config=config,
                last_result={"epoch": 1 + i % 30, "val_acc": best},
                metric_analysis={"val_acc": {"max": best, "min": best / 2}},
            )
        )
    return out


def run(n: int, seconds: float, terminal: bool) -> dict[str, float]:
    console = Console(file=io.StringIO(), force_terminal=terminal, width=120)
    view = LiveView(Path("results/bench"), "val_acc", "max", KEYS, budget_s=3600, console=console)
    view.setup(start_time=time.time(), total_samples=n)
    ts = trials(n)
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if view.due(ts, done=False):
            view.update(ts, done=False)
        time.sleep(0.005)
    view.close()
    wall = time.monotonic() - t0
    return {
        "redraws": view.redraws,
        "cpu_ms_per_redraw": 1e3 * view.cpu_s / max(1, view.redraws),
        "core_percent": 100 * view.cpu_s / wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[8, 64, 256])
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    print("trials  output    redraws  CPU ms/redraw  % of one core")
    for n in args.trials:
        for terminal in (True, False):
            r = run(n, args.seconds, terminal)
            kind = "terminal" if terminal else "pipe"
            cost = f"{r['cpu_ms_per_redraw']:13.2f}  {r['core_percent']:13.2f}"
            print(f"{n:6d}  {kind:8s}  {r['redraws']:7d}  {cost}")


if __name__ == "__main__":
    main()
