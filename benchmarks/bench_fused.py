"""Fused trials against separate ones: training images/s of K members of one architecture as one fused model
(`fer_tune.training.fused`) and as K models stepped one after another, the same steps on the same batches.

    python benchmarks/bench_fused.py                        # configs/cpu_small.yaml, K = 2 4 8
    python benchmarks/bench_fused.py --config configs/vgg.yaml --ks 4 --steps 1

For each K, members vary around the config: lr x 0.25..1, weight decay x 0.5..2, dropout 0..0.5, label
smoothing 0..0.2, seed `seed + k`. Both arms start from the same weights and RNG streams and take `--warmup`
untimed steps, then `--rounds` rounds of `--steps` timed steps each, separate then fused, so load from other
jobs falls on both; the best round of each arm counts. The ratio fused/separate is the result (the baseline,
separate, is measured in the same run); last, the largest relative difference between the arms' weights,
which trained the same steps: float32 rounding only, which grows with the steps (`tests/test_fused.py` checks
the two to 1e-9 in float64). Both arms keep a constant lr per member (no schedule), the trainer's
channels-last layout and the config's precision. Prints the machine, torch threads and the load average
before and after each K; `--json` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py: scripts run from this folder

from fer_tune.base import DataError
from fer_tune.data import load_fer2013
from fer_tune.models import build_model, model_stats
from fer_tune.training import Precision, RunConfig, build_optimizer, normalize
from fer_tune.training.fused import (
    FusedModel,
    FusedOptimizer,
    MemberStreams,
    check_fusable,
    fused_step,
    reference_step,
)
from fer_tune.training.splits import pixel_stats

ROOT = Path(__file__).resolve().parents[1]


def machine(dev: torch.device) -> str:
    """The CPU's model name (lscpu) or the GPU's name."""
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name()


def members(cfg: RunConfig, k: int) -> list[RunConfig]:
    """K run configs of the config's architecture, spread over what a search varies within it."""
    spread = np.linspace(-1, 1, k) if k > 1 else np.zeros(1)
    out = []
    for i, s in enumerate(spread):
        d = cfg.to_dict()
        d["train"].update(
            lr=cfg.train.lr * 2 ** (s - 1),  # at most the config's peak lr: no schedule warms it up here
            weight_decay=cfg.train.weight_decay * 2**s,
            label_smoothing=0.1 * (s + 1),
        )
        d["model"]["dropout"] = 0.25 * (s + 1)
        d["seed"] = cfg.seed + i
        out.append(RunConfig.from_dict(d))
    check_fusable(out)
    return out


def images_for(path: str, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(N, 48, 48) uint8 Training images and labels, or random ones when the data is missing (speed does not
    depend on pixel values); and which."""
    try:
        tr = load_fer2013(path).split("Training")
        return torch.from_numpy(tr.images[:n]), torch.from_numpy(tr.labels[:n]).long(), f"FER2013 {path}"
    except DataError:
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=gen)
        return x, torch.randint(0, 7, (n,), generator=gen), "random images (no FER2013 found)"


class Arms:
    """The two arms of one K: K lone models with their optimisers, and the fused model, same start."""

    def __init__(self, cfgs: list[RunConfig], dev: torch.device) -> None:
        self.cfgs, self.dev = cfgs, dev
        self.amp = Precision.select(cfgs[0].train.precision, dev)
        self.streams = MemberStreams([c.seed for c in cfgs], dev)
        self.fused_streams = MemberStreams([c.seed for c in cfgs], dev)
        self.models = []
        for k, c in enumerate(cfgs):
            with self.streams.use(k):
                self.models.append(build_model(c.model).to(dev, memory_format=torch.channels_last).train())
            with self.fused_streams.use(k):
                build_model(c.model)  # the same draws, so both streams go on from the same state
        self.opts = [build_optimizer(m, c.train) for m, c in zip(self.models, cfgs, strict=True)]
        self.fused = FusedModel(self.models, self.fused_streams).train()
        self.fopt = FusedOptimizer(self.fused, [c.train for c in cfgs])

    def separate(self, x: torch.Tensor, y: torch.Tensor) -> None:
        for k, (m, o, c) in enumerate(zip(self.models, self.opts, self.cfgs, strict=True)):
            reference_step(m, o, x, y, c, self.streams, k, self.amp)

    def together(self, x: torch.Tensor, y: torch.Tensor) -> None:
        fused_step(self.fused, self.fopt, x, y, self.cfgs, self.fused_streams, self.amp)

    def max_weight_diff(self) -> float:
        """The largest max|fused - separate| / max|separate| over every member's floating-point weights and
        buffers."""
        worst = 0.0
        for k, m in enumerate(self.models):
            mine = self.fused.member_state_dict(k)
            for name, t in m.state_dict().items():
                if t.is_floating_point():
                    diff = (mine[name].float() - t.float()).abs().max() / t.float().abs().max().clamp(
                        min=1e-12
                    )
                    worst = max(worst, float(diff))
        return worst


def measure(cfg: RunConfig, k: int, batches: list, dev: torch.device, args: argparse.Namespace) -> dict:
    """images/s of both arms for K members: warm-up, then alternating timed rounds; the best of each."""
    arms = Arms(members(cfg, k), dev)
    load_before = os.getloadavg()
    it = iter(batches)
    for _ in range(args.warmup):
        x, y = next(it)
        arms.separate(x, y)
        arms.together(x, y)
    best = {"separate": float("inf"), "fused": float("inf")}
    for _ in range(args.rounds):
        chunk = [next(it) for _ in range(args.steps)]
        for name, step in (("separate", arms.separate), ("fused", arms.together)):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            for x, y in chunk:
                step(x, y)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            best[name] = min(best[name], time.perf_counter() - t)
    images = k * cfg.train.batch_size * cfg.augment.views * args.steps  # every view counts, as in the trainer
    sep, fus = images / best["separate"], images / best["fused"]
    return {
        "k": k,
        "separate_images_per_second": sep,
        "fused_images_per_second": fus,
        "fused_over_separate": fus / sep,
        "max_relative_weight_diff": arms.max_weight_diff(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "cpu_small.yaml"), help="run config")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8], help="members per fused model")
    p.add_argument("--steps", type=int, default=2, help="timed steps per round and arm")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds (separate, then fused, each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per arm first")
    p.add_argument("--batch", type=int, help="images per member per step (default: the config's)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "fer2013"), help="FER2013")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = RunConfig.from_yaml(args.config)
    if args.batch:
        cfg = cfg.override(batch_size=args.batch)
    bs, size = cfg.train.batch_size, cfg.augment.input_size
    n_batches = args.warmup + args.rounds * args.steps
    images, labels, source = images_for(args.data, n_batches * bs)
    mean, std = pixel_stats(images.numpy())
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    batches = [
        (normalize(images[i].to(dev), mean, std), labels[i].to(dev))
        for i in order[: n_batches * bs].view(n_batches, bs)
    ]
    stats = model_stats(cfg.model, size)
    amp = Precision.select(cfg.train.precision, dev)
    print(
        f"machine: {machine(dev)}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {dev}, {amp.name}; data: {source}"
    )
    print(
        f"config {Path(args.config).name}: {cfg.model.arch}, {stats['params'] / 1e6:.2f}M params, "
        f"{stats['macs'] / 1e6:.0f}M MACs/image at {size} px; batch {bs} per member; "
        f"{args.warmup} warm-up + {args.rounds} x {args.steps} timed steps per arm (best round)"
    )
    print(
        f"{'K':>3} {'separate img/s':>15} {'fused img/s':>12} {'fused/separate':>15} "
        f"{'max rel diff':>13}  load average before -> after"
    )
    rows = []
    for k in args.ks:
        r = measure(cfg, k, batches, dev, args)
        rows.append(r)
        print(
            f"{k:>3} {r['separate_images_per_second']:>15.0f} {r['fused_images_per_second']:>12.0f} "
            f"{r['fused_over_separate']:>14.2f}x {r['max_relative_weight_diff']:>13.1e}  "
            f"{' '.join(f'{v:.2f}' for v in r['load_before'])} -> "
            f"{' '.join(f'{v:.2f}' for v in r['load_after'])}",
            flush=True,
        )
    if args.json:
        meta = {"config": args.config, "machine": machine(dev), "threads": torch.get_num_threads()}
        meta.update(device=str(dev), precision=amp.name, torch=torch.__version__, batch_size=bs, data=source)
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
