"""`fer-tune predict` over files: photos, folders (recursively) and videos, one line per face.

With an output folder, each image is copied there annotated (box, emotion, probability), each video becomes
`<name>.annotated.mp4` of the frames read, and `predictions.csv` holds every face with all seven
probabilities. A file that cannot be read is one error line on stderr and the others go on; `predict_files`
then returns exit status 1.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from fer_tune.base import DataError, OutputError, check_writable
from fer_tune.data import EMOTIONS, IMAGE_EXTS
from fer_tune.inference.detect import read_image
from fer_tune.inference.predictor import Face, Predictor

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
CSV_COLUMNS = ("file", "frame", "face", "x", "y", "w", "h", "emotion", "probability", *EMOTIONS)
NO_FACE = "no face"


@dataclass(frozen=True)
class Input:
    """A file to predict on and the path its annotated copy takes under --out.

    Args:
        path: the file.
        name: its output name, relative to --out: the file's name, or `<folder name>/<path inside it>`.
        video: whether it is a video (by its extension).
    """

    path: Path
    name: Path  # relative output name: the file's name, or <folder name>/<path inside the folder>
    video: bool

    @property
    def annotated(self) -> Path:
        """Its annotated copy, relative to --out: `name`, or `<name>.annotated.mp4` for a video."""
        return self.name.with_name(self.name.name + ".annotated.mp4") if self.video else self.name


def expand(inputs: list[str]) -> tuple[list[Input], list[str]]:
    """Files as given, folders' images and videos (recursively, sorted); and an error per missing path.

    Args:
        inputs: files and folders, as given on the command line.

    Returns:
        (the inputs found, one message per path that does not exist or folder with nothing to read).
    """
    found, errors = [], []
    for arg in inputs:
        p = Path(arg)
        if p.is_dir():
            before = len(found)
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                ext = f.suffix.lower()
                if ext in IMAGE_EXTS or ext in VIDEO_EXTS:
                    found.append(Input(f, Path(p.resolve().name) / f.relative_to(p), ext in VIDEO_EXTS))
            if len(found) == before:
                kinds = " ".join(e.lstrip(".") for e in (*IMAGE_EXTS, *VIDEO_EXTS))
                errors.append(f"{p}: no image or video in this folder (by extension: {kinds})")
        elif p.is_file():
            found.append(Input(p, Path(p.name), p.suffix.lower() in VIDEO_EXTS))
        else:
            errors.append(f"{p}: no such file or folder")
    return found, errors


def frames(path: Path, every: int) -> Iterator[tuple[int, np.ndarray, float, int]]:
    """(index, RGB frame, fps, frames in the file) of every `every`-th frame; DataError if unreadable.

    Args:
        path: a video file OpenCV (FFmpeg) reads.
        every: keep one frame in this many, from the first.

    Yields:
        (frame index from 0, (H, W, 3) uint8 RGB, the file's fps, its frame count as the container says).

    Raises:
        DataError: the file cannot be opened, or no frame can be decoded.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"{path}: cannot read video (OpenCV/FFmpeg cannot open it)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))  # from the container: an estimate for some formats
    try:
        i, read = 0, 0
        while True:
            # grab() skips a frame without converting it; only the frames kept are decoded to pixels.
            ok = cap.read() if i % every == 0 else (cap.grab(), None)
            if not ok[0]:
                break
            if ok[1] is not None:
                read += 1
                yield i, cv2.cvtColor(ok[1], cv2.COLOR_BGR2RGB), fps, count
            i += 1
        if read == 0:
            raise DataError(f"{path}: cannot read video (no frame could be decoded)")
    finally:
        cap.release()


def annotate(rgb: np.ndarray, faces: list[Face]) -> np.ndarray:
    """A copy of the image with each face's box and `emotion probability` drawn on it.

    Args:
        rgb: a (H, W, 3) uint8 RGB image.
        faces: its faces.

    Returns:
        The annotated copy; `rgb` is unchanged.
    """
    import cv2

    out = np.ascontiguousarray(rgb.copy())
    scale = max(out.shape[:2]) / 800  # lines and text readable on a phone photo and on a thumbnail
    thick = max(1, round(2 * scale))
    for f in faces:
        b = f.box
        cv2.rectangle(out, (b.x, b.y), (b.x + b.w, b.y + b.h), (0, 255, 0), thick)
        label = f"{f.emotion} {f.probability:.2f}"
        size = max(0.4, 0.6 * scale)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, size, thick)
        y = b.y - base if b.y - th - base > 0 else b.y + b.h + th + base
        cv2.rectangle(out, (b.x, y - th - base), (b.x + tw, y + base), (0, 255, 0), cv2.FILLED)
        cv2.putText(out, label, (b.x, y), cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def _rows(file: str, frame: int | None, faces: list[Face]) -> list[dict[str, Any]]:
    if not faces:
        return [{"file": file, "frame": frame, "emotion": NO_FACE}]
    return [
        {
            "file": file,
            "frame": frame,
            "face": k,
            "x": f.box.x,
            "y": f.box.y,
            "w": f.box.w,
            "h": f.box.h,
            "emotion": f.emotion,
            "probability": round(f.probability, 4),
        }
        | {c: round(float(p), 4) for c, p in zip(EMOTIONS, f.probs, strict=True)}
        for k, f in enumerate(faces)
    ]


def format_row(row: dict[str, Any]) -> str:
    """The stdout line of one predictions.csv row.

    Args:
        row: a row with `file`, `frame`, `emotion`, and for a face its box and `probability`.

    Returns:
        `<file>[ frame N]: face at x=.. y=.. WxH: <emotion> <probability>`, or `<file>: no face`.
    """
    where = row["file"] + (f" frame {row['frame']}" if row.get("frame") is not None else "")
    if row["emotion"] == NO_FACE:
        return f"{where}: {NO_FACE}"
    box = f"x={row['x']} y={row['y']} {row['w']}x{row['h']}"
    return f"{where}: face at {box}: {row['emotion']} {row['probability']:.2f}"


class _Writer:
    """Where results go: stdout lines, and with an output folder, annotated files and predictions.csv."""

    def __init__(self, out: Path | None, stdout: IO[str]) -> None:
        self.out, self.stdout = out, stdout
        self.csv_file = open(out / "predictions.csv", "w", newline="") if out else None  # noqa: SIM115
        self.csv = csv.DictWriter(self.csv_file, CSV_COLUMNS) if self.csv_file else None
        if self.csv:
            self.csv.writeheader()

    def rows(self, rows: list[dict[str, Any]], write: Any) -> None:
        for row in rows:
            write(format_row(row), file=self.stdout)
            if self.csv:
                self.csv.writerow(row)

    def path(self, name: Path) -> Path:
        assert self.out is not None
        dest = self.out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def close(self) -> None:
        if self.csv_file:
            self.csv_file.close()


def _image(pred: Predictor, item: Input, w: _Writer, write: Any, detect: bool, tta: str) -> None:
    rgb = read_image(item.path)
    faces = pred.faces(rgb, detect=detect, tta=tta)
    w.rows(_rows(str(item.path), None, faces), write)
    if w.out:
        from PIL import Image

        Image.fromarray(annotate(rgb, faces)).save(w.path(item.annotated))


def _video(
    pred: Predictor, item: Input, w: _Writer, write: Any, detect: bool, tta: str, every: int, bar: bool
) -> None:
    import cv2
    from tqdm import tqdm

    writer = None
    progress = tqdm(desc=item.path.name, unit="frame", leave=False, disable=not bar, file=sys.stderr)
    try:
        for i, rgb, fps, count in frames(item.path, every):
            progress.total = -(-count // every) or None
            progress.update()
            faces = pred.faces(rgb, detect=detect, tta=tta)
            w.rows(_rows(str(item.path), i, faces), write)
            if w.out:
                if writer is None:
                    dest = str(w.path(item.annotated))
                    size = (rgb.shape[1], rgb.shape[0])
                    rate = max(1.0, fps / every)
                    writer = cv2.VideoWriter(dest, cv2.VideoWriter_fourcc(*"mp4v"), rate, size)
                writer.write(cv2.cvtColor(annotate(rgb, faces), cv2.COLOR_RGB2BGR))
    finally:
        progress.close()
        if writer is not None:
            writer.release()


def predict_files(
    pred: Predictor,
    inputs: list[str],
    *,
    out: str | Path | None = None,
    detect: bool = True,
    tta: str = "none",
    every: int = 10,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    progress: bool | None = None,
) -> int:
    """Classify the faces in every input; 0 when all were read, 1 when any failed (each said on stderr).

    Args:
        pred: the loaded predictor.
        inputs: image and video files, and folders of them (searched recursively).
        out: a folder for annotated copies and predictions.csv; None for stdout lines only.
        detect: find faces; False takes each image (frame) as one face.
        tta: `none`, `flip` or `tencrop`.
        every: in a video, classify one frame in this many.
        stdout: where the result lines go; None for `sys.stdout`.
        stderr: where errors and progress bars go; None for `sys.stderr`.
        progress: bars on stderr, of files and of a video's frames; None: when stderr is a terminal and
            there is a folder or a video.

    Returns:
        The exit status: 0 when every input was read, 1 when any failed.

    Raises:
        DataError: `every` below 1, or no image or video among the inputs.
        OutputError: `out` cannot be written, or an annotated copy would be written over an input.
    """
    from tqdm import tqdm

    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    if every < 1:
        raise DataError(f"--every {every}: must be 1 or more")
    items, errors = expand(inputs)
    if not items:  # nothing to do is not success: one line, exit 2 (not rc 0 and no output)
        raise DataError("; ".join(errors) or "no input given")
    if out is not None:  # before anything is written: never an annotated copy over a photo it reads
        originals, root = {i.path.resolve() for i in items}, Path(out).expanduser().resolve()
        for item in items:
            dest = root / item.annotated
            if dest in originals:
                raise OutputError(
                    f"--out {out}: the annotated copy of {item.path} would be written over {dest}, "
                    "which this command reads; give another --out"
                )
    folder = check_writable(out, "--out") if out is not None else None
    status = 0
    for e in errors:
        print(f"fer-tune: error: {e}", file=stderr)
        status = 1
    w = _Writer(folder, stdout)
    if progress is None:
        many = any(i.video for i in items) or any(Path(a).is_dir() for a in inputs)
        progress = many and stderr.isatty()
    bar = tqdm(items, unit="file", file=stderr, disable=not progress)

    def write(line: str, file: IO[str]) -> None:
        tqdm.write(line, file=file)  # keeps the bar below the lines instead of tearing it

    try:
        for item in bar:
            try:
                if item.video:
                    _video(pred, item, w, write, detect, tta, every, progress)
                else:
                    _image(pred, item, w, write, detect, tta)
            except (DataError, OSError, ValueError) as e:
                msg = str(e) if str(item.path) in str(e) else f"{item.path}: {e}"
                write(f"fer-tune: error: {msg}", file=stderr)
                status = 1
    finally:
        bar.close()
        w.close()
    return status
