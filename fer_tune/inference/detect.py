"""Faces in photos: read any image as FER2013 sees it, find faces, cut them as FER2013 frames them.

The detector is OpenCV's Viola-Jones cascade `haarcascade_frontalface_default.xml`, which ships inside the
opencv-python-headless 4.x wheel (nothing is downloaded at run time; docs/predict.md says why this one). A
detector's box is looser than a FER2013 face: `FRAMING` maps one to the other, measured by
`benchmarks/face_framing.py` on FER2013 faces (see there for how).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_tune.base import DataError, check

CASCADE = "haarcascade_frontalface_default.xml"
# FER2013 crop of a detector box (x, y, w, h): side = SCALE * w, centre = box centre + (DX, DY) * w.
# Medians over the 1,503 of 2,000 FER2013 PublicTest faces (upscaled 4x) the cascade found
# (benchmarks/face_framing.py, 2026-11-30; quartiles of scale 0.97..1.11): FER2013's faces were cut around
# nearly the cascade's own box: consistent with the dataset's report that its faces were cut with OpenCV's
# face detection. A scale near 1 is measured, not assumed: other detectors' boxes are looser.
FRAMING = {"scale": 1.021, "dx": -0.003, "dy": 0.0}
DETECT_SIDE = 960  # longer side (px) an image is shrunk to before detection: Haar time grows with area
# Smallest face looked for (px of the image): FER2013's faces are 48 px, so a smaller one has less detail than
# the model learned from. The cascade's time grows fast as this shrinks: its first scale is its largest image.
MIN_FACE = 40
CASCADE_WINDOW = 24  # the cascade's own window (px): the smallest face it can find in the image it is given
# Ratio between the cascade's successive window sizes: its time grows about as 1 / log(SCALE_STEP) (one image
# per size), and each size finds faces within a band around it (benchmarks/bench_detect.py measures both).
SCALE_STEP = 1.1


@dataclass(frozen=True)
class Box:
    """A face's FER2013-framed square in image pixels (may reach past the image's edges).

    Args:
        x: left edge, px from the image's left.
        y: top edge, px from the image's top.
        w: width, px.
        h: height, px (equal to `w` for a detected face).
    """

    x: int
    y: int
    w: int
    h: int


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:  # a base dependency; this says which one when a user's install lacks it
        raise DataError(
            f"face detection needs OpenCV: pip install 'opencv-python-headless<5' ({e})"
        ) from None
    return cv2


class FaceDetector:
    """OpenCV's frontal-face cascade; `detect(gray)` gives FER2013-framed boxes, largest first.

    Args:
        min_face: the smallest face looked for, px of the image.
        detect_side: the longer side an image is shrunk to before detection, px.
        scale_step: the ratio between the cascade's successive window sizes, in (1, 2]; smaller finds more
            faces, more slowly.

    Raises:
        ConfigError: `scale_step` out of range.
        DataError: OpenCV is missing or cannot read its cascade.
    """

    def __init__(
        self, min_face: int = MIN_FACE, detect_side: int = DETECT_SIDE, scale_step: float = SCALE_STEP
    ) -> None:
        check(1 < scale_step <= 2, "scale_step", f"must be in (1, 2], got {scale_step}")
        cv2 = _cv2()
        path = os.path.join(cv2.data.haarcascades, CASCADE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise DataError(
                f"{path}: OpenCV cannot read its face cascade (opencv-python-headless 5 has none)"
            )
        self.min_face, self.detect_side, self.scale_step = min_face, detect_side, scale_step

    def raw_boxes(self, gray: np.ndarray) -> np.ndarray:
        """The detector's own boxes (N, 4) as x, y, w, h floats in `gray`'s pixels, largest first.

        Args:
            gray: a (H, W) uint8 image.

        Returns:
            (N, 4) float64 boxes; (0, 4) when no face is found.
        """
        cv2 = _cv2()
        h, w = gray.shape
        shrink = min(1.0, self.detect_side / max(h, w))
        small = gray
        if shrink < 1.0:
            small = cv2.resize(gray, (round(w * shrink), round(h * shrink)), interpolation=cv2.INTER_AREA)
        side = max(CASCADE_WINDOW, round(self.min_face * shrink))
        found = self.cascade.detectMultiScale(
            small, scaleFactor=self.scale_step, minNeighbors=5, minSize=(side, side)
        )
        boxes = np.asarray(found, dtype=np.float64).reshape(-1, 4) / shrink
        return boxes[np.argsort(-boxes[:, 2], kind="stable")]

    def detect(self, gray: np.ndarray) -> list[Box]:
        """FER2013-framed square boxes of the faces in a (H, W) uint8 image.

        Args:
            gray: a (H, W) uint8 image.

        Returns:
            The boxes, largest first; empty when no face is found.
        """
        return [fer_box(b) for b in self.raw_boxes(gray)]


def fer_box(box: np.ndarray | tuple[float, float, float, float]) -> Box:
    """The square FER2013 would have cut around a detector box (x, y, w, h), per `FRAMING`.

    Args:
        box: the detector's box, px.

    Returns:
        The square, rounded to whole pixels.
    """
    x, y, w, h = (float(v) for v in box)
    side = FRAMING["scale"] * w
    cx, cy = x + w / 2 + FRAMING["dx"] * w, y + h / 2 + FRAMING["dy"] * w
    return Box(round(cx - side / 2), round(cy - side / 2), round(side), round(side))


def crop(gray: np.ndarray, box: Box, size: int = 48) -> np.ndarray:
    """The `box` of a (H, W) uint8 image as size x size uint8; parts outside the image repeat its edge.

    Args:
        gray: a (H, W) uint8 image.
        box: the square to cut, px.
        size: the side of the result, px.

    Returns:
        The (size, size) uint8 face.

    Raises:
        ValueError: the box lies wholly outside the image.
    """
    cv2 = _cv2()
    h, w = gray.shape
    x0, y0, x1, y1 = box.x, box.y, box.x + box.w, box.y + box.h
    inside = gray[max(0, y0) : max(0, min(h, y1)), max(0, x0) : max(0, min(w, x1))]
    if inside.size == 0:
        raise ValueError(f"box {box} lies outside the {w}x{h} image")
    pads = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pads):
        inside = cv2.copyMakeBorder(inside, *pads, cv2.BORDER_REPLICATE)
    # Area averaging when shrinking (as FER2013's own downscaled faces), cubic when enlarging.
    interp = cv2.INTER_AREA if box.w >= size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(inside), (size, size), interpolation=interp)


def to_uint8_rgb(im: Any) -> np.ndarray:
    """A PIL image of any mode (RGBA, palette, 16-bit, float, grayscale) as (H, W, 3) uint8 RGB.

    Transparency is laid over white (what a viewer shows); 16-bit and float grays are scaled to 0..255, since
    PIL's own `convert("L")` clips them at 255.

    Args:
        im: a `PIL.Image.Image`.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        if im.mode == "F":
            top = 1.0 if a.max() <= 1.0 else 255.0
        g = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H, W) uint8 luma (ITU-R 601, as PIL's and OpenCV's grayscale).

    Args:
        rgb: a (H, W, 3) uint8 RGB image.

    Returns:
        The (H, W) uint8 gray image.
    """
    return _cv2().cvtColor(rgb, _cv2().COLOR_RGB2GRAY)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright per its EXIF orientation; DataError naming it if bad.

    Args:
        path: any image file Pillow reads.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        DataError: the file cannot be read or decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phones store portraits sideways plus a rotation tag
            im.load()  # decode now: a truncated file fails here, inside the try
            return to_uint8_rgb(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
