"""`fer-tune retrain`: train an exported config on the full budget, with one or more seeds, and evaluate it.

"The model" of a retrain is what `fer_tune.training.trainer.train` leaves in `seed_<s>/model.pt` after the
config's `train.epochs` (or `--epochs`) epochs: the epoch count is fixed before training, and nothing is
chosen by looking at PrivateTest. Each seed's folder works with `fer-tune evaluate`. PrivateTest, when the
data has it, is only ever scored, and the scores of every split are written with the seeds and config that
produced them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fer_tune.base import MAX_SEED, ConfigError, DataError, check_writable, json_safe, read_yaml
from fer_tune.data import FER2013, USAGES, load_fer2013
from fer_tune.training.checkpoint import check_resumable
from fer_tune.training.config import RunConfig
from fer_tune.training.device import resolve_device
from fer_tune.training.distill import check_teacher
from fer_tune.training.evaluate import (
    evaluate_dir,
    evaluate_ensemble,
    format_ensemble,
    format_metrics,
    save_confusion_png,
)
from fer_tune.training.snapshots import SNAPSHOT_DIR
from fer_tune.training.trainer import train

SCORES = ("accuracy", "macro_f1")  # summarised over seeds
# What 2+ seeds and their ensemble are scored with (ten-crop on the held-out splits only: TRAINING_TTAS).
ENSEMBLE_TTAS = ("none", "flip", "tencrop")


def _provenance(path: Path) -> dict[str, Any] | None:
    """The `provenance:` block `fer-tune export` writes (RunConfig ignores it; the results keep it)."""
    raw = read_yaml(path) or {}
    prov = raw.get("provenance") if isinstance(raw, Mapping) else None
    return dict(prov) if isinstance(prov, Mapping) else prov


def _notes(cfg: RunConfig, splits: list[str]) -> list[str]:
    notes = []
    if "PrivateTest" not in splits:
        notes.append(
            "PrivateTest is absent from the data: no held-out test score. PublicTest chose this config "
            "during the search, so its score is optimistic."
        )
    if "PublicTest" in cfg.train.train_usages:
        notes.append(
            "PublicTest is part of the training data (train_on=Training+PublicTest): "
            "its score is not held out."
        )
    return notes


def _summary(per_seed: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per split: each score's values over seeds, their mean and (2+ seeds) sample standard deviation."""
    out: dict[str, dict[str, Any]] = {}
    splits = [u for u in USAGES if any(u in m for m in per_seed.values())]
    for split in splits:
        out[split] = {}
        for key in SCORES:
            values = [float(m[split][key]) for m in per_seed.values() if split in m and key in m[split]]
            if not values:
                continue
            stats = {"values": values, "mean": float(np.mean(values))}
            if len(values) > 1:
                stats["std"] = float(np.std(values, ddof=1))
            out[split][key] = stats
    return out


def _confusions(per_seed: Mapping[str, Mapping[str, Any]], out: Path) -> list[str]:
    """Confusion matrices summed over seeds, one PNG per split (a single seed's own matrix with one seed)."""
    written = []
    for split in USAGES:
        mats = [
            np.asarray(m[split]["confusion"]) for m in per_seed.values() if "confusion" in m.get(split, {})
        ]
        if not mats:
            continue
        n = len(mats)
        title = f"{split}" + (f", summed over {n} seeds" if n > 1 else "")
        path = out / f"confusion_{split}.png"
        save_confusion_png(np.sum(mats, axis=0), path, title)
        written.append(path.name)
    return written


def _snapshot_scores(run_dir: Path, ds: FER2013, tta: str, device: str | None) -> dict[str, dict[str, Any]]:
    """A seed's snapshot ensemble (`train.snapshots`: `run_dir/snapshots`) scored on every split, printed."""
    result = evaluate_ensemble(run_dir / SNAPSHOT_DIR, ds, ttas=(tta,), device=device)
    print(format_ensemble(result))
    scores = result["results"]["ensemble"][tta]
    return {split: {k: m[k] for k in ("n", *SCORES)} for split, m in scores.items()}


def _print_summary(summary: Mapping[str, Mapping[str, Any]], seeds: int) -> None:
    for split, scores in summary.items():
        parts = []
        for key, s in scores.items():
            std = f" ± {100 * s['std']:.2f}" if "std" in s else ""
            parts.append(f"{key} {100 * s['mean']:.2f}{std}%")
        print(f"{split}: " + ", ".join(parts) + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""))


def retrain(
    config_path: str | Path,
    *,
    data: str | Path | FER2013,
    out_dir: str | Path,
    epochs: int | None = None,
    seeds: int = 1,
    train_on: str | None = None,
    tta: str = "none",
    device: str | None = None,
    jobs: int = 1,
    resume: bool = False,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Train `config_path` with seeds seed..seed+seeds-1 into `out_dir/seed_<s>` and evaluate every split.

    `resume` continues each seed from its `checkpoint.pt` when there is one (a finished seed trains no
    further; a crashed one goes on from its last epoch, with its random state), so an interrupted retrain
    ends with the metrics of an uninterrupted one.

    `teacher` (sets `train.teacher`) distils each seed from that model, e.g. another retrain's ensemble.

    `jobs` > 1 trains that many seeds at once in separate processes (small models share one GPU better than
    they use it alone: see `fer_tune.search.packing`); the data must then be a path, which each process loads.

    Writes `out_dir/config.yaml` (the resolved config, with the file's provenance), `out_dir/metrics.json`
    (per split and seed, and mean/std over seeds) and `out_dir/confusion_<split>.png`. Returns the metrics.
    Every refusal comes before the first of these writes (and before the data is parsed where it can).

    Args:
        config_path: a run config YAML (`best_config.yaml` of `fer-tune export`), local or a URI.
        data: the dataset, or a path `load_fer2013` reads (a path when `jobs` > 1).
        out_dir: the retrain folder; `seed_<s>` folders go in it.
        epochs: replaces `train.epochs`; None keeps the config's.
        seeds: how many seeds, counting up from the config's `seed`.
        train_on: replaces `train.train_on` (`Training` or `Training+PublicTest`); None keeps the config's.
        tta: `none`, `flip` or `tencrop`, for the per-seed evaluation.
        device: where to train; None to pick CUDA when available.
        jobs: seeds trained at once, each in its own process.
        resume: continue seeds from their `checkpoint.pt`.
        teacher: replaces `train.teacher`; None keeps the config's.

    Returns:
        The report written to metrics.json (with 2+ seeds, each seed's and the ensemble's scores with each of
        `ENSEMBLE_TTAS` and `tta` under `evaluation`; with `train.snapshots` each seed's snapshot ensemble
        under `runs.seed_<s>.snapshot_ensemble`, and its mean and std over seeds under `snapshot_summary`).

    Raises:
        ConfigError: `seeds` or `jobs` below 1, a bad config, a teacher in `out_dir`, `jobs` > 1 with a
            loaded dataset, or (`resume`) a seed's checkpoint of another config.
        DataError: the config, the teacher, a seed's checkpoint or the data cannot be read, or the data lacks
            the training splits.
        DeviceError: the device cannot be used.
        OutputError: `out_dir` cannot be written.
    """
    from fer_tune.base.storage import local_file

    config_path, out = local_file(config_path), Path(out_dir)  # a URI: a remote search's best_config.yaml
    if seeds < 1:
        raise ConfigError(f"seeds: must be >= 1, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"jobs: must be >= 1, got {jobs}")
    teacher = None if teacher is None else str(teacher)
    cfg = RunConfig.from_yaml(config_path).override(epochs=epochs, train_on=train_on, teacher=teacher)
    if cfg.seed + seeds - 1 > MAX_SEED:  # seeds count up from the config's: the last must be a seed too
        raise ConfigError(f"seeds: {seeds} from seed {cfg.seed} pass {MAX_SEED}, numpy's largest seed")
    if cfg.train.teacher is not None:
        check_teacher(cfg.train.teacher, out)  # before anything is parsed or trained
    if jobs > 1 and seeds > 1 and isinstance(data, FER2013):
        raise ConfigError("jobs: training seeds in parallel needs the data as a path, not a loaded dataset")
    if device is not None:
        resolve_device(device)  # a device that cannot be used: refused before anything is written
    if resume:  # a seed's checkpoint of another config: refused before config.yaml is rewritten
        for s in range(cfg.seed, cfg.seed + seeds):
            if (out / f"seed_{s}" / "checkpoint.pt").is_file():
                check_resumable(out / f"seed_{s}", cfg.override(seed=s))
    provenance = _provenance(config_path)
    check_writable(out, "--out")  # before the data is parsed and anything trained
    ds = data if isinstance(data, FER2013) else load_fer2013(data)
    missing = [u for u in cfg.train.train_usages if u not in ds.splits]
    if missing:
        raise DataError(
            f"{ds.source or data}: no {', '.join(missing)} rows to train on (has {', '.join(ds.splits)})"
        )
    notes = _notes(cfg, ds.splits)
    for note in notes:
        print(f"note: {note}")

    out.mkdir(parents=True, exist_ok=True)
    resolved = cfg.to_dict() | ({"provenance": provenance} if provenance is not None else {})
    header = f"# resolved from {config_path} by fer-tune retrain; seeds {cfg.seed}..{cfg.seed + seeds - 1}\n"
    (out / "config.yaml").write_text(header + yaml.safe_dump(resolved, sort_keys=False))

    per_seed: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, Any]] = {}
    seed_list = list(range(cfg.seed, cfg.seed + seeds))
    for seed in seed_list:
        print(
            f"seed {seed}: training {cfg.model.arch} for {cfg.train.epochs} epochs "
            f"on {cfg.train.train_on} -> {out / f'seed_{seed}'}"
        )
    results = _train_seeds(cfg, seed_list, ds, data, out, device, jobs, resume)
    for seed, result in zip(seed_list, results, strict=True):
        run_dir = out / f"seed_{seed}"
        metrics = evaluate_dir(run_dir / "model.pt", ds, tta=tta, out_dir=run_dir, device=device)
        print(format_metrics(metrics))
        per_seed[f"seed_{seed}"] = metrics["splits"]
        runs[f"seed_{seed}"] = {
            "dir": run_dir.name,
            "epochs": metrics["epoch"],
            "last_val_acc": _last(result, "val_acc"),
            "best_val_acc": result.get("best_val_acc"),
            "val_held_out": result.get("val_held_out"),
            "best_epoch": result.get("best_epoch"),
        }
        if cfg.train.snapshots:  # the seed's snapshots are also one model: score it
            runs[f"seed_{seed}"]["snapshot_ensemble"] = _snapshot_scores(run_dir, ds, tta, device)

    summary = _summary(per_seed)
    report = {
        "config_file": str(config_path),
        "provenance": provenance,
        "config": cfg.to_dict(),
        "model": f"seed_<s>/model.pt: weights of the last epoch ({cfg.train.epochs}); no split chose it",
        "data": ds.source,
        "train_on": cfg.train.train_on,
        "tta": tta,
        "seeds": list(range(cfg.seed, cfg.seed + seeds)),
        "splits": ds.splits,
        "private_test": "PrivateTest" in ds.splits,
        "public_test_held_out": "PublicTest" not in cfg.train.train_usages,
        "notes": notes,
        "runs": runs,
        "per_seed": per_seed,
        "summary": summary,
    }
    if cfg.train.snapshots:
        report["snapshot_summary"] = _summary({s: r["snapshot_ensemble"] for s, r in runs.items()})
    report = json_safe(report | {"confusion_png": _confusions(per_seed, out)})
    (out / "metrics.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    _print_summary(summary, seeds)
    if cfg.train.snapshots:
        print(f"snapshot ensembles (mean softmax of each seed's {cfg.train.snapshots} snapshots, tta={tta}):")
        _print_summary(report["snapshot_summary"], seeds)
    if seeds > 1:  # the seeds are also one model: score it (written into metrics.json as "evaluation")
        # Ten-crop too, on the held-out splits: one seed with it is what `fer-tune predict` runs by default.
        ttas = tuple(dict.fromkeys((*ENSEMBLE_TTAS, tta)))
        ensemble = evaluate_ensemble(out, ds, ttas=ttas, device=device)
        print(format_ensemble(ensemble))
        report["evaluation"] = json_safe(ensemble)
    for note in notes:  # again below the scores, where they are read
        print(f"note: {note}")
    print(f"wrote {out / 'metrics.json'}")
    return report


def _train_seeds(
    cfg: RunConfig,
    seeds: list[int],
    ds: FER2013,
    data: str | Path | FER2013,
    out: Path,
    device: str | None,
    jobs: int,
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Train every seed: one after the other, or `jobs` at a time in spawned processes."""

    def start(seed: int) -> str | None:  # the checkpoint a seed continues from
        folder = out / f"seed_{seed}"
        if resume and (folder / "checkpoint.pt").is_file():
            print(f"seed {seed}: continuing from {folder / 'checkpoint.pt'}")
            return str(folder)
        return None

    if jobs == 1 or len(seeds) == 1:
        return [
            train(
                cfg.override(seed=s),
                ds,
                out_dir=out / f"seed_{s}",
                device=device,
                progress=True,
                resume=start(s),
            )
            for s in seeds
        ]
    assert not isinstance(data, FER2013)  # refused by retrain before anything was written
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = min(jobs, len(seeds))
    with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as pool:
        args = [
            (cfg.override(seed=s).to_dict(), str(data), str(out / f"seed_{s}"), device, n, start(s))
            for s in seeds
        ]
        futures = [pool.submit(_train_one, *a) for a in args]
        return [f.result() for f in futures]


def _train_one(
    config: dict[str, Any], data: str, out_dir: str, device: str | None, jobs: int, resume: str | None
) -> dict[str, Any]:
    """One seed in a worker process (loads the data from its parse cache)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)  # the CPU's cores split between the jobs
    ds = load_fer2013(data)
    result = train(config, ds, out_dir=out_dir, device=device, threads=threads, resume=resume)
    print(f"{out_dir}: done, last val_acc {result['history'][-1]['val_acc']:.4f}", flush=True)
    return result


def _last(result: Mapping[str, Any], key: str) -> float | None:
    history = result.get("history") or []
    return history[-1].get(key) if history else None
