"""Benchmark training throughput of every model family's default config against a 2-layer CNN baseline.

    python benchmarks/bench_models.py [--device cpu|cuda] [--batch 64] [--threads 2] [--warmup N] [--steps N]

Times forward + backward (cross-entropy on random labels, no optimizer step) of batches of random 48x48
images and prints a markdown table: parameters, multiply-adds per image (`model_stats`), images/s and the
ratio to the baseline. On CUDA it runs as training would: channels_last, the GPU's autocast precision
(`train.precision: auto`: bf16 on compute capability >= 8, else fp16), synchronised timing.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from fer_tune.base import FerTuneError
from fer_tune.models import NUM_CLASSES, build_model, list_models, model_stats
from fer_tune.training import Precision, resolve_device

# The "2-layer CNN that overfits": no batch-norm, a flattened 6x6 map into a wide FC layer.
BASELINE = {
    "arch": "cnn",
    "kernels": [32, 64],
    "batchnorm": False,
    "pool_size": 6,
    "head_width": 256,
    "dropout": 0.0,
}


def images_per_second(
    cfg: dict, device: torch.device, batch: int, size: int, warmup: int, steps: int
) -> float:
    """Forward + backward images/s of a freshly built model in train mode."""
    cuda = device.type == "cuda"
    amp = Precision.select("auto", device)
    model = build_model(cfg).to(device).train()
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)

    def step() -> None:
        with amp.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=48, help="image side, px")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: cpu 2, cuda 10)")
    parser.add_argument("--steps", type=int, help="timed steps (default: cpu 5, cuda 50)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
    except FerTuneError as e:
        raise SystemExit(f"bench_models: {e}") from None
    args.warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 2)
    args.steps = args.steps if args.steps is not None else (50 if device.type == "cuda" else 5)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    rows = [("cnn 2-layer (baseline)", BASELINE)] + [
        (f"{arch} (default)", {"arch": arch}) for arch in list_models()
    ]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    amp = Precision.select("auto", device)
    precision = f"{amp.name} autocast, channels_last" if device.type == "cuda" else "fp32"
    size = f"{args.size}x{args.size}"
    print(f"forward+backward, batch {args.batch}, {size}, {where}, {precision}, {args.steps} timed steps\n")
    print("| model | params (M) | MACs/image (M) | images/s | vs baseline |")
    print("|---|---:|---:|---:|---:|")
    base = None
    for name, cfg in rows:
        stats = model_stats(cfg, args.size)
        speed = images_per_second(cfg, device, args.batch, args.size, args.warmup, args.steps)
        base = base or speed
        params, macs = stats["params"] / 1e6, stats["macs"] / 1e6
        print(f"| {name} | {params:.2f} | {macs:,.0f} | {speed:,.0f} | {speed / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
