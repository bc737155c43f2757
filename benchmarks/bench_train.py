"""Training speed and accuracy against wall time for one run config, with a named baseline in the same run.

    python benchmarks/bench_train.py                       # configs/cpu_small.yaml vs configs/resnet.yaml
    python benchmarks/bench_train.py --set train.subset=8000 --set train.epochs=3 --skip-throughput

1. Throughput: `images_per_second` of the config and of the baseline (default: the GPU-default ResNet), each
   trained for one epoch on the same small stratified subset, on the same device and threads.
2. The curve: the config trained in full, one line per epoch with wall-clock minutes since training started,
   train/val accuracy and images/s; then PublicTest accuracy of the final model without and with flip TTA.
Everything lands in --out (metrics.csv, model.pt, metrics.json, bench.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml

from fer_tune.data import load_fer2013
from fer_tune.training import RunConfig, evaluate_dir, train

ROOT = Path(__file__).resolve().parents[1]


def with_overrides(path: Path, sets: list[str], **extra: object) -> RunConfig:
    """The config at path with `group.key=value` overrides (values parsed as YAML) and `extra` train keys."""
    d = RunConfig.from_yaml(path).to_dict()
    for item in sets:
        key, _, value = item.partition("=")
        group, _, name = key.partition(".")
        if name:
            d[group][name] = yaml.safe_load(value)
        else:
            d[group] = yaml.safe_load(value)
    d["train"].update(extra)
    return RunConfig.from_dict(d)


def throughput(
    path: Path, data, images: int, sets: list[str], device: str | None, threads: int | None
) -> float:
    """Training images/s of one epoch on a stratified subset (no warm-up, so no schedule effects)."""
    cfg = with_overrides(path, sets, subset=images, epochs=1, warmup_epochs=0.0)
    return train(cfg, data, device=device, threads=threads)["history"][0]["images_per_second"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "datasets" / "fer2013"), help="FER2013 path"
    )
    p.add_argument(
        "--config", default=str(ROOT / "configs" / "cpu_small.yaml"), help="run config to benchmark"
    )
    p.add_argument(
        "--baseline", default=str(ROOT / "configs" / "resnet.yaml"), help="throughput baseline config"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="GROUP.KEY=VALUE", help="override the config"
    )
    p.add_argument("--throughput-images", type=int, default=512, help="subset size for the throughput epochs")
    p.add_argument("--target", type=float, default=0.60, help="PublicTest accuracy to report the time to")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_train"), help="output folder")
    p.add_argument("--skip-throughput", action="store_true", help="only the curve")
    args = p.parse_args()

    t = time.perf_counter()
    data = load_fer2013(args.data)
    print(f"data: {len(data)} images from {args.data} in {time.perf_counter() - t:.1f}s", flush=True)
    cfg = with_overrides(Path(args.config), args.set)
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bench = {
        "config": args.config,
        "overrides": args.set,
        "device": dev,
        "threads": args.threads or torch.get_num_threads(),
    }
    print(f"device {dev}, torch threads {bench['threads']}, torch {torch.__version__}", flush=True)

    if not args.skip_throughput:
        for name, path, sets in (("config", args.config, args.set), ("baseline", args.baseline, [])):
            # Training split only: no PublicTest scoring, so the baseline's slow forward passes cost little.
            train_only = data.split("Training")
            ips = throughput(Path(path), train_only, args.throughput_images, sets, args.device, args.threads)
            bench[f"{name}_images_per_second"] = ips
            print(f"throughput {name:8s} {Path(path).name:16s} {ips:8.0f} training images/s", flush=True)

    start = time.perf_counter()
    curve = []

    def report(metrics: dict, _checkpoint: Path) -> None:
        row = {"minutes": (time.perf_counter() - start) / 60, **metrics}
        curve.append(row)
        print(
            f"{row['minutes']:6.1f} min  epoch {row['epoch']:3d}  train_acc {row['train_acc']:.3f}  "
            f"clean_train_acc {row['clean_train_acc']:.3f}  val_acc {row['val_acc']:.4f}  "
            f"{row['images_per_second']:.0f} img/s",
            flush=True,
        )

    out = Path(args.out)
    result = train(cfg, data, device=args.device, threads=args.threads, out_dir=out, report=report)
    bench["train_minutes"] = (time.perf_counter() - start) / 60
    bench["curve"] = curve
    hit = next((r for r in curve if r["val_acc"] >= args.target), None)
    bench["minutes_to_target"] = hit["minutes"] if hit else None
    for tta in ("none", "flip"):
        m = evaluate_dir(
            out, data.split("PublicTest"), tta=tta, out_dir=out / f"eval_{tta}", device=args.device
        )
        bench[f"public_test_acc_tta_{tta}"] = m["splits"]["PublicTest"]["accuracy"]
    (out / "bench.json").write_text(json.dumps(bench, indent=2) + "\n")
    print(
        f"final: {result['history'][-1]['val_acc']:.4f} PublicTest accuracy "
        f"after {bench['train_minutes']:.1f} min "
        f"(best {result['best_val_acc']:.4f} at epoch {result['best_epoch']}); flip TTA "
        f"{bench['public_test_acc_tta_flip']:.4f}; target {args.target:.2f} "
        + (f"reached at {hit['minutes']:.1f} min (epoch {hit['epoch']})" if hit else "not reached")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
