"""Whether turning a tilted face upright from its eyes pays: PublicTest accuracy with and without it.

    python benchmarks/bench_upright.py [MODEL] [--data DATA] [--angles 0 15 -15 30 -30]

Each FER2013 PublicTest face is enlarged 4x (cubic), padded by half its side with its own edge pixels (a head
around it) and turned by each angle about its centre: a photo of a tilted face. Its FER2013 square is known
(the upright face's), so detection is left out: the crop is cut from there as predict cuts it, once as is and
once through `fer_tune.inference.upright.EyeLeveller` (the eye cascade's angle, the crop turned to level it
when the tilt is at least `MIN_TILT`).
Prints, per angle, the model's accuracy both ways, the share of faces whose eyes were found, the median error
of the angle found, and the ms per face the levelling adds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from fer_tune.data import load_fer2013
from fer_tune.inference import load
from fer_tune.inference.detect import Box, crop
from fer_tune.inference.upright import LOOK, MIN_TILT, EyeLeveller

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fer2013" / "test"


def photo(face: np.ndarray, angle: float, up: int = 4) -> tuple[np.ndarray, Box]:
    """The face enlarged `up` times, padded by half its side, turned by `angle`; its square in the photo."""
    s = 48 * up
    big = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, s // 2, s // 2, s // 2, s // 2, cv2.BORDER_REPLICATE)
    c = big.shape[0] / 2
    big = cv2.warpAffine(
        big, cv2.getRotationMatrix2D((c, c), angle, 1.0), big.shape[::-1], borderMode=cv2.BORDER_REPLICATE
    )
    return big, Box(s // 2, s // 2, s, s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(ROOT / "results" / "cpu-amx" / "distilled"))
    ap.add_argument("--data", default=str(SHARED), help="FER2013 CSV or image folder (its PublicTest)")
    ap.add_argument("--angles", type=float, nargs="+", default=[0, 15, -15, 30, -30])
    ap.add_argument("--n", type=int, default=0, help="faces (a seeded sample; 0 for all)")
    args = ap.parse_args()
    ds = load_fer2013(args.data).split("PublicTest")
    pick = np.random.default_rng(0).permutation(len(ds))
    pick = pick[: args.n] if args.n else pick
    faces, labels = ds.images[pick], ds.labels[pick]
    pred, level = load(args.model, device="cpu"), EyeLeveller()
    print(
        f"{args.model}: {len(faces)} PublicTest faces, MIN_TILT {MIN_TILT:g} deg; load average before "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        "\n| turned | accuracy as cut | with --upright | eyes found | faces turned back | median angle error "
        "| ms per face |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for angle in args.angles:
        plain, levelled, errors, times, n_turned = [], [], [], [], 0
        for face in faces:
            big, box = photo(face, angle)
            plain.append(crop(big, box))
            t = time.perf_counter()
            cut, turned = level.crop(big, box)
            times.append(time.perf_counter() - t)
            levelled.append(cut)
            found = level.tilt(crop(big, box, LOOK))  # the eyes' angle, turned by or not (MIN_TILT)
            if found is not None:
                errors.append(abs(found + angle))  # levelled exactly when found == -angle
                n_turned += turned is not None
        acc = [(pred.predict_crops(np.stack(c)).argmax(1) == labels).mean() for c in (plain, levelled)]
        err = f"{statistics.median(errors):.1f} deg" if errors else "-"
        print(
            f"| {angle:+.0f} deg | {acc[0]:.2%} | {acc[1]:.2%} | {len(errors) / len(faces):.0%} "
            f"| {n_turned / len(faces):.0%} | {err} "
            f"| {statistics.median(times) * 1e3:.1f} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
