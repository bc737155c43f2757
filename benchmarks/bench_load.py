"""A search of many tiny trials: the driver's memory, every trial in trials.csv, the report's time.

    python benchmarks/bench_load.py [--trials 200] [--images-per-class 30] [--workdir DIR] [--json OUT]

Runs `fer-tune --space ... --gpus 0` in this process (it is the driver, with Ray started by it) on synthetic
FER2013 of a few hundred images: 1 epoch per trial, a 1-layer CNN, Optuna TPE, no scheduler. Then runs
`fer-tune report` in a fresh process and times it. Prints one JSON object: the driver's peak resident memory
(`ru_maxrss` of this process, which includes importing torch, pandas and Ray's client), the search's wall
time, the rows of trials.csv and their stop reasons, and the report's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fer_tune.data import EMOTIONS, FER2013, save_csv


def synthetic(per_class: int, seed: int = 0) -> FER2013:
    """`per_class` Training and a third as many PublicTest images of each class; noise with a class bar."""
    rng = np.random.default_rng(seed)
    images, labels, usage = [], [], []
    for split, n in (("Training", per_class), ("PublicTest", max(1, per_class // 3))):
        for c in range(len(EMOTIONS)):
            x = rng.integers(0, 128, size=(n, 48, 48), dtype=np.uint8)
            x[:, 4 + 6 * c : 8 + 6 * c, :] = 255
            images.append(x)
            labels.append(np.full(n, c))
            usage.append(np.full(n, split))
    return FER2013(np.concatenate(images), np.concatenate(labels), np.concatenate(usage), "synthetic")


def space(trials: int) -> dict:
    return {
        "search": {"num_samples": trials, "scheduler": "none", "seed": 0},
        "resources": {"cpus_per_trial": 1},
        "model": {"arch": "cnn", "kernels": [{"choice": [4, 8]}], "head_width": 0, "pool_size": 1},
        "train": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0, "lr": {"loguniform": [1e-3, 0.3]}},
        "augment": {"crop": 0, "rotation": 0},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--images-per-class", type=int, default=30)
    p.add_argument("--workdir", type=Path, help="default: a temporary folder")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fer-tune-load-"))
    work.mkdir(parents=True, exist_ok=True)
    data = synthetic(args.images_per_class)
    csv = save_csv(data, work / "fer2013.csv")
    (work / "load.yaml").write_text(yaml.safe_dump(space(args.trials)))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("WANDB_MODE", "disabled")

    from fer_tune.cli import main as fer_tune

    argv = ["--space", str(work / "load.yaml"), "--data", str(csv), "--gpus", "0", "--cpus", "2"]
    argv += ["--results", str(work / "results"), "--name", "load"]
    t0 = time.perf_counter()
    status = fer_tune(argv)
    search_s = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    folder = work / "results" / "load"
    t0 = time.perf_counter()
    report = subprocess.run(
        [sys.executable, "-m", "fer_tune.cli", "report", str(folder)], capture_output=True, text=True
    )
    report_s = time.perf_counter() - t0
    trials = pd.read_csv(folder / "trials.csv")
    figures = {
        "trials_asked": args.trials,
        "images": len(data),
        "exit_status": status,
        "search_seconds": round(search_s, 1),
        "driver_peak_rss_mib": round(peak_mib, 1),
        "trials_csv_rows": len(trials),
        "stop_reasons": trials["stop_reason"].value_counts().to_dict(),
        "report_exit_status": report.returncode,
        "report_seconds": round(report_s, 2),
        "load_average": os.getloadavg(),
        "folder": str(folder),
    }
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
