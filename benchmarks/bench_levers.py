"""Recipe levers against the same recipe without them: PublicTest accuracy per seed and what each costs.

    python benchmarks/bench_levers.py --data ../shared/datasets/fer2013 --epochs 8 --seeds 0 1 \
        --arms ema mixup sam snapshots --out results/bench-levers/2026-12-02

The recipe is `--config` (default: the `cpu` reference search's best config, the model the README's first
command retrains), trained on all of Training for `--epochs` and scored on PublicTest with its last epoch's
weights (nothing chosen by looking at PublicTest). Each arm is that recipe with one lever on, trained with
each seed; the baseline is the recipe itself:

  ema        `train.ema: 0.998`: its runs are also the baseline. The averaged weights do not change training
             (tests/test_levers.py checks the live weights are bit-identical), so `live_val_acc` is the
             recipe without the lever and `val_acc` the recipe with it: a pair from one run
  mixup      `augment.mixup: 0.2`
  cutmix     `augment.cutmix: 1.0`
  sam        `train.sam: 0.05` (two forward/backward passes a step)
  snapshots  `train.snapshots: 4`: four cosine cycles; scored as the ensemble of its 4 snapshots
             (`snapshot_val_acc`) and as its last weights alone
  base       the recipe as it is (only needed without the ema arm)

Ten-crop test-time augmentation is scored on every trained model (`predict_logits` with `tta: tencrop`
against the centre view, each model's pair), with its time per image. Every finished (arm, seed) is kept in
`<out>/runs/<arm>-s<seed>.json` and a rerun with the same --out skips it; an unfinished run continues from its
checkpoint.pt. Writes
`<out>/levers.md` (the table: lever, mean of seeds, paired difference to the baseline per seed, seconds per
epoch and its ratio to the baseline's) and `<out>/levers.json`. Time per epoch is measured while whatever else
runs on the machine runs: the load average before and after each run is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from machine import cpu_name  # benchmarks/machine.py: scripts run from this folder

from fer_tune.data import load_fer2013
from fer_tune.training import RunConfig, load_model, predict_logits, train
from fer_tune.training.device import Precision

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "results" / "cpu-amx" / "best_config.yaml"
BASELINE = "recipe"

# arm -> (what the lever sets, a one-line description)
ARMS: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "base": ({}, "the recipe as it is"),
    "ema": ({"train": {"ema": 0.998}}, "EMA of the weights, decay 0.998 per step"),
    "mixup": ({"augment": {"mixup": 0.2}}, "mixup, Beta(0.2, 0.2)"),
    "cutmix": ({"augment": {"cutmix": 1.0}}, "cutmix, Beta(1, 1)"),
    "sam": ({"train": {"sam": 0.05}}, "SAM, rho 0.05"),
    "snapshots": ({"train": {"snapshots": 4}}, "4 snapshots along 4 cosine cycles, their ensemble"),
}


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def arm_config(base: RunConfig, arm: str, epochs: int, seed: int) -> RunConfig:
    """The recipe with the arm's lever on, `epochs` long, seeded."""
    d = base.to_dict()
    d.pop("provenance", None)
    for section, keys in ARMS[arm][0].items():
        d[section] = {**d[section], **keys}
    d["train"]["epochs"] = epochs
    d["seed"] = seed
    return RunConfig.from_dict(d)


def tencrop(model_dir: Path, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """PublicTest accuracy of the model with the centre view and with ten crops, and ms per image of each."""
    model, meta = load_model(model_dir, device="cpu")
    out: dict[str, float] = {}
    for tta in ("none", "tencrop"):
        t0 = time.perf_counter()
        logits = predict_logits(model, meta, images, tta)
        out[f"ms_per_image_{tta}"] = 1000 * (time.perf_counter() - t0) / len(images)
        out[f"acc_{tta}"] = float((logits.argmax(1) == labels).float().mean())
    return out


def run_one(arm: str, seed: int, base: RunConfig, data: Any, args: argparse.Namespace, runs: Path) -> dict:
    """Train (or continue) one arm with one seed; its record, also written to runs/<arm>-s<seed>.json."""
    record_file = runs / f"{arm}-s{seed}.json"
    if record_file.is_file():
        print(f"{arm} seed {seed}: done before, kept ({record_file})")
        return json.loads(record_file.read_text())
    cfg = arm_config(base, arm, args.epochs, seed)
    run_dir = runs / f"{arm}-s{seed}"
    resume = run_dir / "checkpoint.pt" if (run_dir / "checkpoint.pt").is_file() else None
    load_before = load_average()
    print(f"{arm} seed {seed}: training {args.epochs} epochs -> {run_dir}" + (" (resumed)" if resume else ""))
    t0 = time.perf_counter()
    result = train(cfg, data, device="cpu", threads=args.threads, out_dir=run_dir, resume=resume)
    wall = time.perf_counter() - t0
    hist = result["history"]
    last = hist[-1]
    val = data.split("PublicTest")
    scored = tencrop(run_dir, torch.from_numpy(val.images), torch.from_numpy(val.labels).long())
    record = {
        "arm": arm,
        "seed": seed,
        "config": cfg.to_dict(),
        "epochs": len(hist),
        "val_acc": last["val_acc"],  # the last epoch's weights (the averaged ones with ema)
        "live_val_acc": last.get("live_val_acc"),
        "snapshot_val_acc": last.get("snapshot_val_acc"),
        "best_val_acc": result["best_val_acc"],
        "epoch_seconds_median": statistics.median(h["epoch_seconds"] for h in hist),
        "images_per_second_median": statistics.median(h["images_per_second"] for h in hist),
        "wall_seconds_this_call": wall,
        "resumed": resume is not None,
        "load_before": load_before,
        "load_after": load_average(),
        **scored,
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"{arm} seed {seed}: PublicTest {100 * record['val_acc']:.2f}%"
        + (
            f" (live weights {100 * record['live_val_acc']:.2f}%)"
            if record["live_val_acc"] is not None
            else ""
        )
        + (
            f" (snapshot ensemble {100 * record['snapshot_val_acc']:.2f}%)"
            if record["snapshot_val_acc"] is not None
            else ""
        )
        + f", ten-crop {100 * scored['acc_tencrop']:.2f}%, {record['epoch_seconds_median']:.1f} s/epoch"
    )
    return record


def _stats(xs: list[float]) -> str:
    if not xs:
        return "-"
    mean = 100 * statistics.mean(xs)
    spread = f" ± {100 * statistics.stdev(xs):.2f}" if len(xs) > 1 else ""
    return f"{mean:.2f}{spread}"


def _diffs(xs: list[float]) -> str:
    if not xs:
        return "-"
    each = ", ".join(f"{100 * x:+.2f}" for x in xs)
    return f"{100 * statistics.mean(xs):+.2f} ({each})"


def rows(records: list[dict]) -> list[dict[str, Any]]:
    """The table: the baseline, then each lever with its mean over seeds and paired differences.

    The baseline of seed s is the `base` run of seed s, else the live weights of the `ema` run of seed s.
    """
    by = {(r["arm"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    baseline: dict[int, tuple[float, float]] = {}  # seed -> (val_acc, s/epoch)
    for s in seeds:
        if ("base", s) in by:
            baseline[s] = (by["base", s]["val_acc"], by["base", s]["epoch_seconds_median"])
        elif ("ema", s) in by and by["ema", s]["live_val_acc"] is not None:
            baseline[s] = (by["ema", s]["live_val_acc"], by["ema", s]["epoch_seconds_median"])
    out = [
        {
            "lever": f"{BASELINE} (baseline)",
            "seeds": sorted(baseline),
            "acc": [baseline[s][0] for s in sorted(baseline)],
            "diff": [],
            "sec": [baseline[s][1] for s in sorted(baseline)],
            "ratio": [],
        }
    ]

    def add(name: str, pairs: list[tuple[int, float, float]]) -> None:  # (seed, val_acc, s/epoch)
        paired = [(s, a, t) for s, a, t in pairs if s in baseline]
        out.append(
            {
                "lever": name,
                "seeds": [s for s, _, _ in pairs],
                "acc": [a for _, a, _ in pairs],
                "diff": [a - baseline[s][0] for s, a, _ in paired],
                "sec": [t for _, _, t in pairs],
                "ratio": [t / baseline[s][1] for s, _, t in paired],
            }
        )

    for arm in ARMS:
        runs = [by[arm, s] for s in seeds if (arm, s) in by]
        if arm == "base" or not runs:
            continue
        add(f"{arm}: {ARMS[arm][1]}", [(r["seed"], r["val_acc"], r["epoch_seconds_median"]) for r in runs])
        if arm == "snapshots":
            add(
                "snapshots: the last snapshot alone",
                [(r["seed"], r["val_acc"], r["epoch_seconds_median"]) for r in runs],
            )
            out[-2]["acc"] = [r["snapshot_val_acc"] for r in runs]  # the ensemble row
            out[-2]["diff"] = [
                r["snapshot_val_acc"] - baseline[r["seed"]][0] for r in runs if r["seed"] in baseline
            ]
    # ten-crop against the centre view on every model trained: a paired check of TTA on each model
    tta_runs = sorted(records, key=lambda r: (r["arm"], r["seed"]))
    if tta_runs:
        out.append(
            {
                "lever": "ten-crop TTA (every model above, vs its centre view)",
                "seeds": [r["seed"] for r in tta_runs],
                "acc": [r["acc_tencrop"] for r in tta_runs],
                "diff": [r["acc_tencrop"] - r["acc_none"] for r in tta_runs],
                "sec": [],
                "ratio": [r["ms_per_image_tencrop"] / r["ms_per_image_none"] for r in tta_runs],
                "ms": [r["ms_per_image_tencrop"] for r in tta_runs],
            }
        )
    return out


def table(records: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| lever | seeds | PublicTest, mean ± std of seeds (%) | paired difference to the baseline, mean "
        "(per seed), points | s per epoch | time vs baseline |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows(records):
        sec = f"{statistics.mean(r['sec']):.1f}" if r["sec"] else "-"
        if "ms" in r:
            sec = f"{statistics.mean(r['ms']):.2f} ms/image"
        ratio = f"{statistics.mean(r['ratio']):.2f}x" if r["ratio"] else "-"
        seeds = " ".join(str(s) for s in r["seeds"])
        lines.append(
            f"| {r['lever']} | {seeds} | {_stats(r['acc'])} | {_diffs(r['diff'])} | {sec} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FER_TUNE_DATA"), help="FER2013 CSV or image folder")
    p.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="the recipe (default: results/cpu-amx's best)"
    )
    p.add_argument("--epochs", type=int, default=8, help="epochs of every run (default 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--arms", nargs="+", default=["ema", "mixup", "sam", "snapshots"], choices=sorted(ARMS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--out", default=str(ROOT / "results" / "bench-levers"), help="output folder")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from the kept runs")
    args = p.parse_args(argv)
    if not args.data:
        p.error("--data is required (or set FER_TUNE_DATA)")
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    base = RunConfig.from_yaml(args.config)
    recipe = Path(args.config).resolve()
    shown = recipe.relative_to(ROOT) if recipe.is_relative_to(ROOT) else recipe
    header = (
        f"{cpu_name()}, torch {torch.__version__}, {args.threads} threads, "
        f"{Precision.select(base.train.precision, torch.device('cpu')).name}; recipe {shown}, "
        f"{args.epochs} epochs on Training, scored on PublicTest with the last epoch's weights; "
        f"`python benchmarks/bench_levers.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
    )
    print(header, f"\nload average {load_average():.2f}", flush=True)
    if not args.table_only:
        data = load_fer2013(args.data)
        for arm in args.arms:
            for seed in args.seeds:
                run_one(arm, seed, base, data, args, runs)
    records = [json.loads(f.read_text()) for f in sorted(runs.glob("*-s*.json"))]
    text = table(records, header)
    (out / "levers.md").write_text(text)
    (out / "levers.json").write_text(json.dumps({"header": header, "records": records}, indent=2) + "\n")
    print(text)
    print(f"wrote {out / 'levers.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
