"""Face detectors side by side: faces found, stray boxes, time; on pasted, covered, turned, cut-off faces.

    python benchmarks/bench_detect.py [DATA] [--scenes 150] [--photos 60] [--ssd-sides 640 480 300]

Two kinds of test image, both made from real faces, the same for every detector:
- Scenes: 640x480 smooth gray clutter (as in tests/test_predict.py) with 4 FER2013 PublicTest faces pasted at
  random non-overlapping places, each 48-192 px on a side and padded with its own edge pixels by a quarter of
  its side (a FER2013 crop is tight; a real face has a head around it).
- Photos: scikit-image's astronaut (a real colour photo), scaled so that her face is 60-200 px, at a random
  place in a 640x480 frame filled with the photo's own edge pixels.
Each comes in four sets: `pasted` (as is); `covered` (a hand-like shape, a palm and four fingers in a skin
tone, over one quarter of each face's square, its quadrant at random); `turned` (each face turned by +30 or
-30 degrees in the image plane, the head around it turned with it); `cut off` (each face placed across an
edge of the frame with 10-40% of its square outside).

A face counts as found when a detector's FER2013-framed square (what predict classifies) overlaps the face's
square by IoU >= 0.5, both clipped to the frame; `located` is the looser IoU >= 0.3 (the face was found but
framed off). A stray box overlaps no face (IoU < 0.1 with every one). Time is the median ms per image of
detection alone, and of a 640x480 copy of the astronaut photo; the speed column is against the first
detector, in the same run.
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
from fer_tune.inference import Box, FaceDetector, HaarDetector, SsdDetector
from fer_tune.inference.detect import CONFIDENCE, SSD_SIDE

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fer2013" / "test"
W, H, PER_SCENE = 640, 480, 4
ASTRONAUT_FACE = (175, 64, 98, 98)  # the FER2013-framed square of her face in the 512x512 photo
SKIN = (224, 172, 140)  # RGB; its luma (~184) for gray scenes
SETS = ("pasted", "covered", "turned", "cut off")
Truth = tuple[int, int, int]  # x, y, side of a face's square (may reach past the frame for `cut off`)


def clipped_iou(a: Box, b: Truth) -> float:
    """IoU of a box and a face's square, both clipped to the W x H frame."""
    ax0, ay0, ax1, ay1 = max(a.x, 0), max(a.y, 0), min(a.x + a.w, W), min(a.y + a.h, H)
    bx0, by0, bx1, by1 = max(b[0], 0), max(b[1], 0), min(b[0] + b[2], W), min(b[1] + b[2], H)
    iw, ih = max(0, min(ax1, bx1) - max(ax0, bx0)), max(0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = max(0, ax1 - ax0) * max(0, ay1 - ay0) + max(0, bx1 - bx0) * max(0, by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def hand(image: np.ndarray, face: Truth, rng: np.random.Generator) -> None:
    """Draw a palm with four fingers over one quadrant of `face` (about a quarter of its square), in place."""
    x, y, s = face
    qx, qy = int(rng.integers(2)), int(rng.integers(2))  # which quadrant
    cx, cy = x + s * (0.25 + 0.5 * qx), y + s * (0.25 + 0.5 * qy)
    colour = SKIN if image.ndim == 3 else round(0.299 * SKIN[0] + 0.587 * SKIN[1] + 0.114 * SKIN[2])
    # A palm of the quadrant's area (an ellipse of semi-axes a, b has area pi a b = (s/2)^2)...
    a = b = s / 2 / np.sqrt(np.pi)
    cv2.ellipse(image, (round(cx), round(cy)), (round(a * 1.1), round(b / 1.1)), 0, 0, 360, colour, -1)
    # ...and fingers reaching away from the face's centre, outside the face's square mostly.
    out = -1 if qx == 0 else 1
    for k in range(4):
        fy = cy - b * 0.75 + k * b * 0.5
        x0, x1 = sorted((round(cx), round(cx + out * s * 0.55)))
        cv2.rectangle(image, (x0, round(fy - s * 0.05)), (x1, round(fy + s * 0.05)), colour, -1)


def head(face: np.ndarray, s: int, angle: float) -> tuple[np.ndarray, int]:
    """A face resized to s, padded by a quarter of s with its edge pixels, turned by `angle` degrees."""
    pad = s // 4
    big = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    if angle:
        c = (big.shape[1] / 2, big.shape[0] / 2)
        big = cv2.warpAffine(
            big, cv2.getRotationMatrix2D(c, angle, 1.0), big.shape[1::-1], borderMode=cv2.BORDER_REPLICATE
        )
    return big, pad


def paste(canvas: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Paste `patch` with its top-left at (x0, y0), the parts outside the canvas dropped."""
    h, w = patch.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
    if cx1 > cx0 and cy1 > cy0:
        canvas[cy0:cy1, cx0:cx1] = patch[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]


def edge_place(s: int, pad: int, edge: int, rng: np.random.Generator) -> tuple[int, int]:
    """A face's top-left across frame edge `edge` (0 left, 1 right, 2 top, 3 bottom), 10-40% outside."""
    cut = round(s * rng.uniform(0.1, 0.4))
    along_x = int(rng.integers(pad, W - s - pad))
    along_y = int(rng.integers(pad, H - s - pad))
    return [(-cut, along_y), (W - s + cut, along_y), (along_x, -cut), (along_x, H - s + cut)][edge]


def scenes(faces: np.ndarray, n: int, kind: str, seed: int = 0) -> list[tuple[np.ndarray, list[Truth]]]:
    """n gray scenes of PER_SCENE FER2013 faces each, as set `kind` makes them."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for _ in range(n):
        canvas = cv2.GaussianBlur(rng.integers(60, 200, (H, W), dtype=np.uint8), (31, 31), 0)
        placed: list[Truth] = []
        edges = rng.permutation(4)
        while len(placed) < PER_SCENE:
            s = int(rng.integers(48, 193))
            pad = s // 4
            if kind == "cut off":
                x, y = edge_place(s, pad, int(edges[len(placed)]), rng)
            else:
                x, y = int(rng.integers(pad, W - s - pad)), int(rng.integers(pad, H - s - pad))
            if any(
                x < px + ps + pad and px < x + s + pad and y < py + ps + pad and py < y + s + pad
                for px, py, ps in placed
            ):
                continue  # its head would overlap a face already placed
            angle = float(rng.choice([-30.0, 30.0])) if kind == "turned" else 0.0
            patch, pad = head(faces[k % len(faces)], s, angle)
            k += 1
            paste(canvas, patch, x - pad, y - pad)
            placed.append((x, y, s))
        if kind == "covered":
            for face in placed:
                hand(canvas, face, rng)
        out.append((canvas, placed))
    return out


def photos(n: int, kind: str, seed: int = 0) -> list[tuple[np.ndarray, list[Truth]]]:
    """n 640x480 RGB frames of the astronaut photo, her face 60-200 px, as set `kind` makes them."""
    from skimage.data import astronaut

    rng = np.random.default_rng(seed + 1)
    photo = astronaut()
    fx, fy, fs, _ = ASTRONAUT_FACE
    out = []
    for i in range(n):
        s = int(rng.integers(60, 201))
        z = s / fs
        small = cv2.resize(
            photo, None, fx=z, fy=z, interpolation=cv2.INTER_AREA if z < 1 else cv2.INTER_CUBIC
        )
        ux, uy = fx * z, fy * z  # her face's top-left in `small`
        if kind == "turned":  # about her face's centre, in the image plane
            c = (ux + s / 2, uy + s / 2)
            turn = cv2.getRotationMatrix2D(c, float(rng.choice([-30.0, 30.0])), 1.0)
            small = cv2.warpAffine(small, turn, small.shape[1::-1], borderMode=cv2.BORDER_REPLICATE)
        pad = s // 2
        if kind == "cut off":
            x, y = edge_place(s, pad, i % 4, rng)
        else:
            x, y = int(rng.integers(pad, W - s - pad)), int(rng.integers(pad, H - s - pad))
        # The photo placed so her face lands at (x, y); the frame around it repeats the photo's edge pixels.
        ox, oy = round(x - ux), round(y - uy)
        shift = np.float32([[1, 0, ox], [0, 1, oy]])
        frame = cv2.warpAffine(small, shift, (W, H), borderMode=cv2.BORDER_REPLICATE)
        face = (x, y, s)
        if kind == "covered":
            hand(frame, face, rng)
        out.append((frame, [face]))
    return out


def median_ms(fn: Callable[[np.ndarray], object], image: np.ndarray, repeats: int) -> float:
    fn(image)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def score(
    det: FaceDetector, images: list[tuple[np.ndarray, list[Truth]]]
) -> tuple[int, int, int, int, list[float]]:
    """Faces found (IoU >= 0.5), located (>= 0.3), in all, stray boxes, and seconds per image."""
    found = located = faces = stray = 0
    times = []
    for image, truth in images:
        t = time.perf_counter()
        boxes = det.detect(image)
        times.append(time.perf_counter() - t)
        best = [max((clipped_iou(b, f) for b in boxes), default=0.0) for f in truth]
        found += sum(v >= 0.5 for v in best)
        located += sum(v >= 0.3 for v in best)
        faces += len(truth)
        stray += sum(max(clipped_iou(b, f) for f in truth) < 0.1 for b in boxes)
    return found, located, faces, stray, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(SHARED), help="FER2013 CSV or image folder")
    ap.add_argument("--scenes", type=int, default=150, help="640x480 scenes of 4 FER2013 faces per set")
    ap.add_argument("--photos", type=int, default=60, help="640x480 frames of the astronaut per set")
    ap.add_argument("--ssd-sides", type=int, nargs="+", default=[640, 480], help="SSD input sides to try")
    ap.add_argument("--confidences", type=float, nargs="+", default=[0.5], help="SSD thresholds to try")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS, help="which sets to run")
    args = ap.parse_args()
    ds = load_fer2013(args.data).split("PublicTest")
    faces = ds.images[np.random.default_rng(0).permutation(len(ds))]
    detectors: list[tuple[str, FaceDetector]] = [("haar (step 1.1)", HaarDetector())]
    detectors += [
        (
            f"ssd side {s} conf {c}{' (default)' if (s, c) == (SSD_SIDE, CONFIDENCE) else ''}",
            SsdDetector(c, s),
        )
        for s in args.ssd_sides
        for c in args.confidences
    ]
    from skimage.data import astronaut

    photo = cv2.resize(astronaut(), (W, H), interpolation=cv2.INTER_AREA)
    print(f"{args.data}: {args.scenes} scenes x {PER_SCENE} faces and {args.photos} astronaut frames per set")
    print(
        f"OpenCV {cv2.__version__}, threads {cv2.getNumThreads()}; load average before: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}\n"
    )
    print("| set | detector | faces found | located | stray boxes | ms per image |")
    print("|---|---|---:|---:|---:|---:|")
    for kind in args.sets:
        for source, images in (
            ("scenes", scenes(faces, args.scenes, kind)),
            ("astronaut", photos(args.photos, kind)),
        ):
            for name, det in detectors:
                found, located, n, stray, times = score(det, images)
                ms = statistics.median(times) * 1e3
                print(
                    f"| {kind}, {source} | {name} | {found / n:.1%} | {located / n:.1%} | {stray} "
                    f"| {ms:.1f} |"
                )
    print("\n| detector | ms per 640x480 astronaut photo | speed |")
    print("|---|---:|---:|")
    base = None
    for name, det in detectors:
        ms = median_ms(det.detect, photo, 30)
        base = base or ms
        print(f"| {name} | {ms:.1f} | {base / ms:.2f}x |")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
