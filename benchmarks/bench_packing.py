"""Throughput of trials packed on one GPU: 1, 2, 4 and 8 copies of a run config's training step at once.

    python benchmarks/bench_packing.py [--config configs/resnet.yaml configs/vgg.yaml] [--seconds 4]

For each run config, `fer_tune.search.packing.measure_packing` starts 8 worker processes on the GPU (as Ray
runs packed trials), each building the config's model and training it (its batch size, input size,
precision, SGD) on random batches; for k = 1, 2, 4, 8 it lets k of them train at once and counts images.
Prints a table of aggregate images/s with the ratio to the baseline, one trial alone, measured in the same
run; the share `--gpus-per-trial auto` would choose; and the memory per trial. `--json` writes the
measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--config",
        nargs="+",
        default=[str(ROOT / "configs" / "resnet.yaml"), str(ROOT / "configs" / "vgg.yaml")],
        help="run configs to measure",
    )
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="trials packed at once")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per k")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()

    import torch

    from fer_tune.models import model_stats
    from fer_tune.search.packing import choose_share, measure_packing
    from fer_tune.training import RunConfig

    if not torch.cuda.is_available():
        print("bench_packing: needs a CUDA GPU", file=sys.stderr)
        return 2
    rows = []
    for path in args.config:
        cfg = RunConfig.from_yaml(path)
        model = cfg.to_dict()["model"]
        batch = cfg.train.batch_size * cfg.augment.views  # images per step through the model
        r = measure_packing(
            model,
            batch_size=batch,
            input_size=cfg.augment.input_size,
            precision=cfg.train.precision,
            ks=args.ks,
            seconds=args.seconds,
        )
        stats = model_stats(cfg.model, cfg.augment.input_size)
        share = choose_share(r)
        rows.append({"config": Path(path).name, **stats, "auto_share": share, **r.to_dict()})
        base = r.images_per_second[min(r.images_per_second)]
        print(
            f"\n{Path(path).name}: {cfg.model.arch}, {stats['params'] / 1e6:.2f}M params, "
            f"batch {batch}, {cfg.augment.input_size} px, precision {cfg.train.precision}, "
            f"{r.device_name}; {r.footprint() / 2**30:.2f} GiB per trial "
            f"({r.peak_reserved_bytes / 2**30:.2f} allocator + {r.context_bytes / 2**30:.2f} context); "
            f"auto packs {round(1 / share)} per GPU\n"
        )
        print("| trials on one GPU | aggregate images/s | per trial | vs one trial alone |")
        print("|---:|---:|---:|---:|")
        for k, speed in sorted(r.images_per_second.items()):
            print(f"| {k} | {speed:,.0f} | {speed / k:,.0f} | {speed / base:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
