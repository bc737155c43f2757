"""Training images/s of one config in bf16 autocast against fp32 (the baseline), on this CPU, in one run.

    python benchmarks/bench_precision.py --data ../shared/datasets/fer2013
    python benchmarks/bench_precision.py --config configs/cpu_small.yaml --repeats 5 --images 4096

After one untimed epoch of each precision, each repeat trains one epoch (no lr warm-up) of the config on
the same stratified subset, fp32 then bf16, so the two share the machine's state; prints each epoch's
images/s, the mean and std of each precision, and the ratio to fp32. `train.precision: auto` picks bf16 on a
CPU only where this ratio was well above 1 (CPUs with AMX or AVX512-BF16; see
`fer_tune.training.device.cpu_has_native_bf16`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

from fer_tune.data import load_fer2013
from fer_tune.training.device import Precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import throughput  # noqa: E402  (a sibling script, not a package)
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data", default=str(ROOT.parent / "shared" / "datasets" / "fer2013"), help="FER2013 path"
    )
    p.add_argument(
        "--config",
        default=str(ROOT / "results" / "cpu-amx" / "best_config.yaml"),
        help="run config (default: the CPU reference search's best)",
    )
    p.add_argument("--images", type=int, default=3072, help="training images per timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="epochs timed per precision")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = p.parse_args()

    caps = torch.cpu.get_capabilities()
    flags = [k for k in ("amx_bf16", "avx512_bf16", "avx512_f", "avx2") if caps.get(k)]
    print(
        f"{cpu_name()} ({', '.join(flags) or 'no listed flags'}; auto -> "
        f"{Precision.select('auto', torch.device('cpu')).name}), torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.2f}, {Path(args.config).name}, {args.images} images an epoch"
    )
    data = load_fer2013(args.data)
    seen: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for precision in seen:  # untimed: the first epoch in a process pays oneDNN's set-up (fp32 ran first)
        throughput(Path(args.config), data, 256, [f"train.precision={precision}"], "cpu", args.threads)
    for r in range(args.repeats):
        for precision, rates in seen.items():
            sets = [f"train.precision={precision}"]
            rates.append(throughput(Path(args.config), data, args.images, sets, "cpu", args.threads))
            print(f"repeat {r}: {precision} {rates[-1]:,.0f} images/s", flush=True)
    base = statistics.mean(seen["fp32"])
    for precision, rates in seen.items():
        spread = statistics.stdev(rates) if len(rates) > 1 else 0.0
        mean = statistics.mean(rates)
        print(
            f"{precision}: {mean:,.0f} +- {spread:,.0f} images/s"
            f" over {len(rates)} epochs, {mean / base:.2f}x fp32"
        )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
