"""How many trials to pack on one GPU, measured rather than guessed (`--gpus-per-trial auto`).

Small FER models leave most of a large GPU idle: one trial's kernels are too small to fill it, and its Python
loop launches them one by one. Several trials on one GPU overlap, up to the point where the GPU is busy.
`measure_packing` finds that point for one model: it starts `max(ks)` worker processes on one GPU (as Ray
would run packed trials), each building the model and training it on random batches, and for each k in `ks`
lets k of them train at once for `seconds`, counting images. `choose_share` then takes the largest k whose
aggregate throughput still rose by at least `min_gain` over the previous k, and whose memory fits: k times
(peak reserved memory + CUDA context) within `MEMORY_SAFETY` of the GPU. The share of a trial is 1/k.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fer_tune.training.device import MEMORY_SAFETY

KS = (1, 2, 4, 8)
MIN_GAIN = 1.1  # packing twice as many trials must add at least 10% aggregate images/s


@dataclass
class PackingResult:
    """One model's aggregate training throughput with k trials packed on one GPU.

    Args:
        model: the model config probed (a `model:` mapping).
        batch_size: images per training step.
        input_size: the image side, px.
        precision: `train.precision` of the probe.
        images_per_second: k -> aggregate images/s of k concurrent trials.
        peak_reserved_bytes: one trial's caching-allocator peak.
        context_bytes: one process's CUDA context (device memory used beyond the allocator).
        total_bytes: the GPU's memory.
        device_name: the GPU's name.
    """

    model: dict[str, Any]
    batch_size: int
    input_size: int
    precision: str
    images_per_second: dict[int, float]  # k -> aggregate images/s of k concurrent trials
    peak_reserved_bytes: int  # one trial's caching allocator peak
    context_bytes: int  # one process's CUDA context (device memory used beyond the allocator)
    total_bytes: int  # the GPU's memory
    device_name: str

    def footprint(self) -> int:
        """One packed trial's device memory: its allocator's peak plus its CUDA context, in bytes.

        Returns:
            `peak_reserved_bytes + context_bytes`.
        """
        return self.peak_reserved_bytes + self.context_bytes

    def to_dict(self) -> dict[str, Any]:
        """The result as plain values (for JSON).

        Returns:
            `dataclasses.asdict` of it.
        """
        return dataclasses.asdict(self)


def choose_share(result: PackingResult, min_gain: float = MIN_GAIN) -> float:
    """The GPU share per trial (1, 1/2, 1/4, ...) that packs as many trials as still raise throughput.

    Args:
        result: the probe's measurements.
        min_gain: the factor by which each step up in k must raise aggregate images/s (1.1: 10%).

    Returns:
        1/k for the largest k that still gained and whose trials fit in `MEMORY_SAFETY` of the GPU.
    """
    budget = MEMORY_SAFETY * result.total_bytes
    fits = [k for k in sorted(result.images_per_second) if k * result.footprint() <= budget]
    best = 1
    for k in fits[1:]:
        if result.images_per_second[k] >= min_gain * result.images_per_second[best]:
            best = k
        else:
            break
    return 1.0 / best


def _worker(
    index: int,
    model: dict[str, Any],
    batch_size: int,
    input_size: int,
    precision: str,
    commands: Any,
    results: Any,
) -> None:
    """One packed trial: build, warm up, then on ("run", start, seconds) train until start + seconds."""
    import torch
    import torch.nn.functional as F

    from fer_tune.models import NUM_CLASSES, build_model
    from fer_tune.training import setup_device

    try:
        dev, amp = setup_device("cuda", precision)
        torch.manual_seed(index)
        net = build_model(model).to(dev, memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        scaler = amp.scaler()
        x = torch.randn(batch_size, 1, input_size, input_size, device=dev).contiguous(
            memory_format=torch.channels_last
        )
        y = torch.randint(0, NUM_CLASSES, (batch_size,), device=dev)

        def step() -> None:
            with amp.autocast():
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

        for _ in range(15):  # cuDNN autotuning and allocator growth happen here
            step()
        torch.cuda.synchronize(dev)
        peak, now = torch.cuda.max_memory_reserved(dev), torch.cuda.memory_reserved(dev)
        results.put(("ready", index, peak, now, torch.cuda.get_device_name(dev)))
        while (cmd := commands.get())[0] != "stop":
            if cmd[0] == "memory":  # device-wide, once every worker is up: contexts included
                free, total = torch.cuda.mem_get_info(dev)
                results.put(("memory", index, total - free, total))
                continue
            _, start, seconds = cmd
            time.sleep(max(0.0, start - time.time()))
            n, end = 0, start + seconds
            while time.time() < end:
                for _ in range(4):  # a few steps between clock reads; the queue of kernels stays full
                    step()
                    n += 1
            torch.cuda.synchronize(dev)
            results.put(("done", index, n * batch_size, time.time() - start))
    except Exception as e:  # noqa: BLE001 - report any failure to the parent as one line
        results.put(("error", index, f"{type(e).__name__}: {e}"))


def measure_packing(
    model: Mapping[str, Any],
    *,
    batch_size: int = 128,
    input_size: int = 48,
    precision: str = "auto",
    ks: Sequence[int] = KS,
    seconds: float = 3.0,
    timeout: float = 300.0,
) -> PackingResult:
    """Aggregate training images/s of k concurrent copies of `model` on the current GPU, for each k in ks.

    Args:
        model: a `model:` mapping.
        batch_size: images per training step.
        input_size: the image side, px.
        precision: `train.precision`: `auto`, `bf16`, `fp16` or `fp32`.
        ks: the numbers of concurrent trials to measure; `max(ks)` worker processes are started.
        seconds: how long each k trains, in seconds.
        timeout: the most the whole probe may take, in seconds.

    Returns:
        The measurements.

    Raises:
        RuntimeError: a worker failed (its message says why) or the probe ran past `timeout`.
    """
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    n = max(ks)
    commands = [ctx.Queue() for _ in range(n)]
    results = ctx.Queue()
    args = (dict(model), batch_size, input_size, precision)
    procs = [
        ctx.Process(target=_worker, args=(i, *args, commands[i], results), daemon=True) for i in range(n)
    ]
    for p in procs:
        p.start()
    deadline = time.time() + timeout

    def get(kind: str) -> tuple:
        try:
            msg = results.get(timeout=max(1.0, deadline - time.time()))
        except queue.Empty:
            raise RuntimeError(f"packing probe: no answer from its workers within {timeout:.0f} s") from None
        if msg[0] == "error":
            raise RuntimeError(f"packing probe worker {msg[1]} failed: {msg[2]}")
        assert msg[0] == kind, msg
        return msg

    try:
        ready = [get("ready") for _ in range(n)]
        reserved, name = max(r[2] for r in ready), ready[0][4]
        commands[0].put(("memory",))
        _, _, used, total = get("memory")
        # What n processes use beyond their allocators is n CUDA contexts (plus cuDNN/cuBLAS workspaces).
        context = max(0, (used - sum(r[3] for r in ready)) // n)
        speeds = {}
        for k in sorted(ks):
            start = time.time() + 0.5
            for i in range(k):
                commands[i].put(("run", start, seconds))
            done = [get("done") for _ in range(k)]
            speeds[k] = sum(d[2] for d in done) / max(d[3] for d in done)
        for c in commands:
            c.put(("stop",))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return PackingResult(
        dict(model), batch_size, input_size, precision, speeds, reserved, context, total, name
    )


def auto_shares(
    configs: Sequence[Mapping[str, Any]],
    probe: Callable[..., PackingResult] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """GPU share per model family of a search: each family probed with its heaviest config among `configs`.

    `configs` are sampled run configs (dicts); the heaviest of a family is the one with the most multiply-adds
    per batch, the one that needs the most memory and compute, so the share is safe for the rest.

    Args:
        configs: sampled run configs.
        probe: measures one config as `measure_packing` does; None for `measure_packing` itself.
        log: prints one line per family probed.

    Returns:
        Family name -> GPU share per trial.
    """
    from fer_tune.models import model_stats
    from fer_tune.training import RunConfig

    probe = probe or measure_packing
    heaviest: dict[str, tuple[float, RunConfig]] = {}
    for raw in configs:
        cfg = RunConfig.from_dict(raw)
        batch = cfg.train.batch_size * cfg.augment.views  # images per step through the model
        cost = model_stats(cfg.model, cfg.augment.input_size)["macs"] * batch
        if cfg.model.arch not in heaviest or cost > heaviest[cfg.model.arch][0]:
            heaviest[cfg.model.arch] = (cost, cfg)
    shares = {}
    for arch, (_, cfg) in sorted(heaviest.items()):
        t0 = time.time()
        result = probe(
            dataclasses.asdict(cfg.model),
            batch_size=cfg.train.batch_size * cfg.augment.views,
            input_size=cfg.augment.input_size,
            precision=cfg.train.precision,
        )
        shares[arch] = choose_share(result)
        speeds = ", ".join(f"{k}: {v:,.0f}" for k, v in sorted(result.images_per_second.items()))
        log(
            f"fer-tune: packing {arch}: images/s with k trials on one GPU {{{speeds}}}, "
            f"{result.footprint() / 2**30:.1f} GiB per trial -> {round(1 / shares[arch])} per GPU "
            f"({time.time() - t0:.0f} s)"
        )
    return shares
