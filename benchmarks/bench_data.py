"""Benchmark FER2013 loading: full-size CSV cold parse and cached reload vs torchvision, and the image folder.

    python benchmarks/bench_data.py [IMAGE_ROOT] [--repeats 3] [--workdir DIR]

Builds a full-size fer2013.csv (35,887 rows) from the image folder at IMAGE_ROOT (default: the shared copy
beside the checkout; rows short of 35,887 are filled by repeating images with Usage PrivateTest) or, where it
is absent, from synthetic images. Then times, in one process on the same file:
`load_fer2013(csv, cache=False)` (cold parse), `torchvision.datasets.FER2013` (train + test splits, which
together decode every row; its MD5 check is skipped, as our parse does none), and the cached reload; and
`load_fer2013(IMAGE_ROOT)` cold and cached.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fer_tune.data import EMOTIONS, FER2013, load_fer2013, save_csv

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "fer2013"
FULL_ROWS = 35_887


def timed(fn, repeats: int) -> tuple[list[tuple[float, float]], object]:
    """(wall, CPU) seconds of `repeats` calls of fn(), and the last result.

    CPU seconds (all threads of this process) are reported too: on a shared machine they move less than wall.
    """
    times, result = [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times, result


def full_size(ds: FER2013 | None, rng: np.random.Generator) -> FER2013:
    """35,887 rows: `ds` padded by repeating its images as PrivateTest, or synthetic images."""
    if ds is None:
        images = rng.integers(0, 256, size=(FULL_ROWS, 48, 48), dtype=np.uint8)
        labels = rng.integers(0, len(EMOTIONS), size=FULL_ROWS)
        usage = np.array(["Training"] * 28_709 + ["PublicTest"] * 3_589 + ["PrivateTest"] * 3_589)
        return FER2013(images, labels.astype(np.int64), usage, "synthetic")
    extra = rng.choice(len(ds), size=max(0, FULL_ROWS - len(ds)), replace=False)
    return FER2013(
        np.concatenate([ds.images, ds.images[extra]]),
        np.concatenate([ds.labels, ds.labels[extra]]),
        np.concatenate([ds.usage, np.full(len(extra), "PrivateTest")]),
        "padded",
    )


def torchvision_load(root: Path) -> int:
    """torchvision.datasets.FER2013 on root/fer2013/fer2013.csv, both splits (every row decoded)."""
    import torchvision.datasets.fer2013 as tv

    tv.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)  # our copy is not Kaggle's: no MD5
    return len(tv.FER2013(str(root), split="train")) + len(tv.FER2013(str(root), split="test"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=str(DEFAULT_ROOT), help="image folder (default: shared)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of our loads (default 3)")
    ap.add_argument("--workdir", help="where to write the CSV and cache (default: a temporary folder)")
    args = ap.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fer-bench-"))
    os.environ["FER_TUNE_CACHE"] = str(work / "cache")
    rows: list[tuple[str, list[tuple[float, float]]]] = []
    root = Path(args.root)
    tree = None
    if root.is_dir():
        t, tree = timed(lambda: load_fer2013(root, cache=False), args.repeats)
        rows.append((f"image folder, cold ({len(tree):,} files)", t))
        load_fer2013(root)  # writes the cache
        rows.append(("image folder, cached", timed(lambda: load_fer2013(root), args.repeats)[0]))
    else:
        print(f"{root} not found: using synthetic images", file=sys.stderr)
    csv = save_csv(full_size(tree, np.random.default_rng(0)), work / "fer2013" / "fer2013.csv")
    mb = csv.stat().st_size / 1e6

    t_cold, ds = timed(lambda: load_fer2013(csv, cache=False), args.repeats)
    rows.append((f"fer-tune CSV, cold parse ({len(ds):,} rows, {mb:.0f} MB)", t_cold))
    t_tv, n_tv = timed(lambda: torchvision_load(work), 1)
    assert n_tv == len(ds), (n_tv, len(ds))
    rows.append(("torchvision FER2013 train+test", t_tv))
    load_fer2013(csv)  # writes the cache
    rows.append(("fer-tune CSV, cached reload", timed(lambda: load_fer2013(csv), args.repeats)[0]))

    wall, cpu = (statistics.median(x[k] for x in t_tv) for k in (0, 1))
    print(f"\nFER2013 loading, {os.cpu_count()} CPUs, median of {args.repeats} (torchvision: 1 run)")
    print(f"{'':52} {'wall s':>7} {'min s':>7} {'CPU s':>7} {'vs torchvision (wall, CPU)':>27}")
    for name, t in rows:
        w, c = statistics.median(x[0] for x in t), statistics.median(x[1] for x in t)
        print(f"{name:52} {w:7.3f} {min(x[0] for x in t):7.3f} {c:7.3f} {wall / w:12.1f}x {cpu / c:12.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
