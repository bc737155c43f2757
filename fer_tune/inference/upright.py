"""Turning a tilted face upright before it is classified, from where its eyes are.

Neither detector gives landmarks, so the eyes come from OpenCV's eye cascade (`haarcascade_eye.xml`, in the
same opencv-python-headless wheel) run on the face's crop. FER2013's faces are upright, and a model trained on
them loses about 10 points of PublicTest accuracy on faces turned by 30 degrees (65.2% -> 54.4-55.3% for the
distilled reference); `benchmarks/bench_upright.py` measures what levelling the eyes gives back.
"""

from __future__ import annotations

import math
import os

import numpy as np

from fer_tune.base import DataError
from fer_tune.inference.detect import Box, _cv2, crop

EYE_CASCADE = "haarcascade_eye.xml"
LOOK = 192  # the face is enlarged to this side to look for eyes: the cascade's window is 20 px
# Eye boxes from 1/8 to 5/12 of the face's side, centred in its upper 5/8: smaller or lower ones are nostrils,
# mouth corners and hair.
EYE_MIN, EYE_MAX, EYE_LOW = LOOK // 8, LOOK * 5 // 12, LOOK * 5 // 8
EYES_APART = LOOK // 5  # two eyes closer than this are one eye found twice
MAX_TILT = 45.0  # degrees; a steeper line between two "eyes" is not a pair of eyes
# Degrees: a smaller tilt is left as it is. The eyes' angle is off by about 4.5 degrees (median), and turning
# every face by it cost 0.6 points on upright PublicTest faces (benchmarks/bench_upright.py, 2026-12-02).
MIN_TILT = 10.0


class EyeLeveller:
    """Finds a face's eyes and turns the face so that they lie level.

    Raises:
        DataError: OpenCV cannot read its eye cascade.
    """

    def __init__(self) -> None:
        cv2 = _cv2()
        path = os.path.join(cv2.data.haarcascades, EYE_CASCADE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise DataError(f"{path}: OpenCV cannot read its eye cascade (opencv-python-headless 5 has none)")

    def tilt(self, face: np.ndarray) -> float | None:
        """The angle (degrees) of the line from the left eye to the right one; None without two eyes.

        Args:
            face: a (LOOK, LOOK) uint8 gray face, framed as FER2013's.

        Returns:
            Degrees, positive when the right eye (in the image) is lower; None when no eye pair is found.
        """
        found = self.cascade.detectMultiScale(
            face, scaleFactor=1.1, minNeighbors=5, minSize=(EYE_MIN, EYE_MIN), maxSize=(EYE_MAX, EYE_MAX)
        )
        eyes = sorted((r for r in found if r[1] + r[3] / 2 < EYE_LOW), key=lambda r: -r[2])[:2]
        if len(eyes) < 2:
            return None
        (x1, y1), (x2, y2) = sorted((x + w / 2, y + h / 2) for x, y, w, h in eyes)
        if x2 - x1 < EYES_APART:
            return None
        angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
        return angle if abs(angle) <= MAX_TILT else None  # MIN_TILT is `crop`'s: `tilt` reports what it saw

    def crop(self, gray: np.ndarray, box: Box, size: int = 48) -> tuple[np.ndarray, float | None]:
        """The `box` of a photo as a size x size face, turned upright when its eyes are found.

        Args:
            gray: a (H, W) uint8 photo.
            box: the face's FER2013-framed square, px.
            size: the side of the result, px.

        Returns:
            The (size, size) uint8 face (exactly `crop(gray, box, size)` when no eye pair is found or its
            tilt is under `MIN_TILT`) and the angle it was turned by (None when it was not).
        """
        cv2 = _cv2()
        angle = self.tilt(crop(gray, box, LOOK))
        if angle is None or abs(angle) < MIN_TILT:
            return crop(gray, box, size), None
        # Cut a quarter more on each side, turn that about the face's centre, keep the middle: the corners
        # the turn brings in are the photo's, not a fill.
        m = box.w // 4
        outer = Box(box.x - m, box.y - m, box.w + 2 * m, box.h + 2 * m)
        side = round(size * outer.w / box.w)
        patch = crop(gray, outer, side)
        turn = cv2.getRotationMatrix2D((side / 2, side / 2), angle, 1.0)
        patch = cv2.warpAffine(
            patch, turn, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        off = (side - size) // 2
        return np.ascontiguousarray(patch[off : off + size, off : off + size]), angle
