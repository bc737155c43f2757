"""How the face detector's scale step trades recall for time, on FER2013 faces pasted into 640x480 scenes.

    python benchmarks/bench_detect.py [DATA] [--scenes 150] [--steps 1.1 1.15 1.2 1.25]

Each scene is 640x480 smooth gray clutter (as in tests/test_predict.py) with 4 FER2013 PublicTest faces
pasted at random non-overlapping places, each 48-192 px on a side and padded with its own edge pixels by a
quarter of its side (a FER2013 crop is tight; a real face has a head around it). For each `scale_step` of
`fer_tune.inference.detect.FaceDetector` (OpenCV's `scaleFactor`): the share of pasted faces found (a
FER2013-framed box with IoU >= 0.5 with the pasted square), boxes that match no face, the median ms per
scene (detection alone), and the median ms per 640x480 photo of scikit-image's astronaut; ratios against the
first step, in the same run. The scenes, faces and places are the same for every step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from fer_tune.data import load_fer2013
from fer_tune.inference import Box, FaceDetector
from fer_tune.inference.detect import to_gray

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "test"
W, H, PER_SCENE = 640, 480, 4


def iou(a: Box, b: tuple[int, int, int, int]) -> float:
    ax1, ay1, bx1, by1 = a.x + a.w, a.y + a.h, b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a.x, b[0]))
    ih = max(0, min(ay1, by1) - max(a.y, b[1]))
    inter = iw * ih
    return inter / (a.w * a.h + b[2] * b[3] - inter)


def scenes(
    faces: np.ndarray, n: int, seed: int = 0
) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """n scenes, each with PER_SCENE faces pasted at random places: (image, [(x, y, side, side)])."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for _ in range(n):
        noise = rng.integers(60, 200, (H, W), dtype=np.uint8)
        canvas = cv2.GaussianBlur(noise, (31, 31), 0)
        placed: list[tuple[int, int, int, int]] = []
        while len(placed) < PER_SCENE:
            s = int(rng.integers(48, 193))
            pad = s // 4
            x, y = int(rng.integers(pad, W - s - pad)), int(rng.integers(pad, H - s - pad))
            if any(
                x < px + ps + pad and px < x + s + pad and y < py + ps + pad and py < y + s + pad
                for px, py, ps, _ in placed
            ):
                continue  # its head would overlap a face already placed
            face = cv2.resize(faces[k % len(faces)], (s, s), interpolation=cv2.INTER_CUBIC)
            k += 1
            head = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            canvas[y - pad : y + s + pad, x - pad : x + s + pad] = head
            placed.append((x, y, s, s))
        out.append((canvas, placed))
    return out


def astronaut_gray() -> np.ndarray | None:
    try:
        from skimage.data import astronaut
    except ImportError:
        return None
    return to_gray(cv2.resize(astronaut(), (W, H), interpolation=cv2.INTER_AREA))


def median_ms(fn: Callable[[np.ndarray], object], image: np.ndarray, repeats: int) -> float:
    fn(image)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(SHARED), help="FER2013 CSV or image folder")
    ap.add_argument("--scenes", type=int, default=150, help="640x480 scenes of 4 faces (default 150)")
    ap.add_argument("--steps", type=float, nargs="+", default=[1.1, 1.15, 1.2, 1.25], help="scale steps")
    args = ap.parse_args()
    ds = load_fer2013(args.data).split("PublicTest")
    faces = ds.images[np.random.default_rng(0).permutation(len(ds))]
    made = scenes(faces, args.scenes)
    photo = astronaut_gray()
    n = args.scenes * PER_SCENE
    print(f"{args.data}: {args.scenes} scenes, {n} faces; OpenCV threads {cv2.getNumThreads()}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    rows = []
    for step in args.steps:
        det = FaceDetector(scale_step=step)
        found = extra = 0
        times = []
        for image, placed in made:
            t = time.perf_counter()
            boxes = det.detect(image)
            times.append(time.perf_counter() - t)
            hits = [max((iou(b, p) for p in placed), default=0) >= 0.5 for b in boxes]
            found += sum(any(iou(b, p) >= 0.5 for b in boxes) for p in placed)
            extra += hits.count(False)
        ms_photo = median_ms(det.detect, photo, 30) if photo is not None else float("nan")
        rows.append((step, found / (len(made) * PER_SCENE), extra, statistics.median(times) * 1e3, ms_photo))
    print("| scale step | faces found | boxes on no face | ms per scene | ms per astronaut photo | speed |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step, recall, extra, ms, ms_photo in rows:
        print(f"| {step:.2f} | {recall:.1%} | {extra} | {ms:.1f} | {ms_photo:.1f} | {rows[0][3] / ms:.2f}x |")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
