"""Measure how FER2013 frames a face relative to a detector's box: `FRAMINGS` in fer_tune/inference/detect.py.

    python benchmarks/face_framing.py [DATA] [--n 2000] [--upscale 4] [--detector ssd|haar]

Each of N FER2013 faces (default: the shared copy's `test` folder, which holds PublicTest) is upscaled
(cubic), padded with its own edge pixels on every side (the detector's box is larger than the crop), and
given to the detector (a box under half the face's side is a feature, not the face, and is ignored).
For every face found (the largest box), the FER2013 crop is expressed in units of the box's width: its side
(`scale`) and its centre's offset from the box's centre (`dx`, `dy`). Prints the detection rate, the median
and quartiles of each, and the `FRAMINGS` entry to paste.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fer_tune.data import load_fer2013
from fer_tune.inference import HaarDetector, SsdDetector

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "test"


def measure(images: np.ndarray, upscale: int, detector: str) -> tuple[np.ndarray, int]:
    """(found, 3) rows of scale, dx, dy for the faces the detector found, and how many it missed."""
    import cv2

    side = 48 * upscale
    # A FER2013 face fills its crop: smaller boxes are features.
    det = HaarDetector(min_face=side // 2) if detector == "haar" else SsdDetector()
    pad = side // 2
    rows, missed = [], 0
    for img in images:
        big = cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        boxes, _ = det.raw_boxes(big)
        boxes = boxes[boxes[:, 2] >= side / 2]
        if not len(boxes):
            missed += 1
            continue
        x, y, w, h = boxes[0]
        cx, cy = x + w / 2 - pad, y + h / 2 - pad  # box centre in the crop's pixels
        rows.append((side / w, (side / 2 - cx) / w, (side / 2 - cy) / w))
    return np.asarray(rows).reshape(-1, 3), missed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(SHARED), help="FER2013 CSV or image folder")
    ap.add_argument("--n", type=int, default=2000, help="faces measured (a seeded random sample)")
    ap.add_argument("--upscale", type=int, default=4, help="FER2013's 48 px faces are upscaled this much")
    ap.add_argument("--detector", choices=["ssd", "haar"], default="ssd", help="the detector measured")
    args = ap.parse_args()
    ds = load_fer2013(args.data)
    pick = np.random.default_rng(0).permutation(len(ds))[: args.n]
    rows, missed = measure(ds.images[pick], args.upscale, args.detector)
    found = f"{len(rows)} ({len(rows) / len(pick):.1%})"
    print(f"{args.data}: {len(pick)} faces, {args.detector} detector found {found}")
    for name, col in zip(("scale", "dx", "dy"), rows.T, strict=True):
        q1, med, q3 = np.percentile(col, [25, 50, 75])
        print(f"{name:>5}: median {med:+.3f}  quartiles {q1:+.3f} .. {q3:+.3f}")
    scale, dx, dy = np.median(rows, axis=0)
    print(f'"{args.detector}": {{"scale": {scale:.3f}, "dx": {dx:.3f}, "dy": {dy:.3f}}}')


if __name__ == "__main__":
    main()
