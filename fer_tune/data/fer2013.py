"""FER2013 in every common format: Kaggle CSVs and image folders, checked, parsed fast and cached.

Formats read by `load_fer2013`:

- `fer2013.csv` (`emotion,pixels,Usage`) and `icml_face_data.csv` (`emotion, Usage, pixels`);
- `train.csv` (`emotion,pixels`; every row is Training); Kaggle's `test.csv` has no labels and is refused;
- an image-folder tree `<root>/<split>/<class>/*.{png,jpg,jpeg}`, Usage from the file-name prefix
  (`Training_`, `PublicTest_`, `PrivateTest_`) or else from the split folder (train, val, test);
- a folder holding any of these (also in a `fer2013/` subfolder, torchvision's layout); CSVs win.

Parsed arrays are cached in `cache_dir()` keyed by the source's path, size and mtime, so reloads are instant.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fer_tune.base import DataError, OutputError, atomic_write

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")

log = logging.getLogger(__name__)

SIZE = 48
N_PIXELS = SIZE * SIZE
# Smallest image side (px) taken as a face: FER2013's are 48 px, and enlarging past 3x invents the detail
# the model learned from (a 1x1 image becomes a flat 48x48 grey "face" without a word otherwise).
MIN_SIDE = 16
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv", "train.csv")  # torchvision's precedence
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what Pillow and OpenCV both read
# Split folder -> Usage, used only when the file name carries no Usage prefix.
SPLIT_DIRS = {
    "train": "Training",
    "training": "Training",
    "val": "PublicTest",
    "valid": "PublicTest",
    "validation": "PublicTest",
    "publictest": "PublicTest",
    "test": "PrivateTest",
    "privatetest": "PrivateTest",
}
_CACHE_VERSION = 2  # bump when the parse or the cache file changes (2: images under MIN_SIDE refused)
WORKERS = min(8, os.cpu_count() or 1)
_cache_used: dict[str, Path] = {}  # source -> cache file it was read from or written to, for describe()


@dataclass(frozen=True, eq=False)
class FER2013:
    """The whole dataset, or one or more of its Usage splits, as plain numpy arrays.

    Args:
        images: (N, 48, 48) uint8 grayscale faces.
        labels: (N,) int64 class indices into `EMOTIONS`.
        usage: (N,) str, each one of `USAGES`.
        source: where it was read from, for messages and provenance; empty when built in memory.
    """

    images: np.ndarray  # (N, 48, 48) uint8
    labels: np.ndarray  # (N,) int64, index into EMOTIONS
    usage: np.ndarray  # (N,) str, one of USAGES
    source: str = ""  # where it was read from, for messages and provenance

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def splits(self) -> list[str]:
        """The Usage values present, in USAGES order."""
        present = set(np.unique(self.usage).tolist())
        return [u for u in USAGES if u in present]

    def sizes(self) -> dict[str, int]:
        """Images per Usage split present, in USAGES order."""
        return {u: int((self.usage == u).sum()) for u in self.splits}

    def split(self, *usages: str) -> FER2013:
        """The rows whose Usage is one of `usages` (e.g. `split("Training", "PublicTest")`).

        Args:
            *usages: Usage names out of `USAGES`.

        Returns:
            A new FER2013 holding those rows, in their order here.

        Raises:
            DataError: a name is not one of `USAGES`.
        """
        for u in usages:
            if u not in USAGES:
                raise DataError(f"{self.source or 'dataset'}: unknown Usage {u!r}; expected one of {USAGES}")
        keep = np.isin(self.usage, usages)
        return FER2013(self.images[keep], self.labels[keep], self.usage[keep], self.source)


# --------------------------------------------------------------------------------------------- loading


def cache_dir() -> Path:
    """Where parsed arrays are cached: `$FER_TUNE_CACHE`, else `~/.cache/fer-tune`.

    Returns:
        The folder, `~` expanded (not created here).
    """
    return Path(os.environ.get("FER_TUNE_CACHE") or Path.home() / ".cache" / "fer-tune").expanduser()


def load_fer2013(path: str | os.PathLike, *, cache: bool = True) -> FER2013:
    """Load FER2013 from a CSV (fer2013, icml_face_data, train), an image-folder tree or a folder of either.

    Args:
        path: a CSV file, an image-folder root (`<root>/<split>/<class>/*.png`), one split folder
            (`<split>/<class>/*.png`), or a folder holding a CSV (checked before images).
        cache: read and write the parsed arrays in `cache_dir()`.

    Returns:
        Every row of the source, with `source` set to its resolved path.

    Raises:
        DataError: the path is missing or the data is malformed; the message names the file and row or image.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        if p.name.lower().endswith((".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz")):
            raise DataError(f"{p}: an archive; unpack it and pass the CSV or the image folder inside")
        csv_file, images = p, None
    else:
        csv_file = _find_csv(p)
        images = None if csv_file else _scan_image_tree(p)
    source = str((csv_file or p).resolve())
    key = _csv_key(csv_file) if csv_file else _tree_key(p, images)
    if cache and (ds := _cache_read(key, source)) is not None:
        return ds
    if csv_file:
        imgs, labels, usage = _parse_csv(csv_file)
    else:
        imgs, labels, usage = _read_image_tree(p, images)
    if cache:
        _cache_write(key, source, imgs, labels, usage)
    return FER2013(imgs, labels, np.asarray(USAGES)[usage], source)


def _find_csv(folder: Path) -> Path | None:
    for d in (folder, folder / "fer2013"):
        for name in CSV_NAMES:
            if (d / name).is_file():
                return d / name
    return None


# --------------------------------------------------------------------------------------------- CSV

_EMOTION_CODES = {str(i).encode(): i for i in range(len(EMOTIONS))}
_USAGE_CODES = {u.encode(): i for i, u in enumerate(USAGES)}


def _parse_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse a Kaggle FER2013 CSV: a Python pass over lines (cheap: ~36k), numpy over all pixel bytes."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: empty file")
    nl = data.find(b"\n")
    header_end = len(data) if nl < 0 else nl
    header = data[:header_end].decode("utf-8-sig", errors="replace").strip()
    names = [c.strip().strip('"').strip().lower() for c in header.split(",")]
    if "pixels" not in names:
        shown = header if len(header) < 80 else header[:60] + "..."
        raise DataError(f"{path} line 1: no 'pixels' column in header {shown!r}; want emotion,pixels,Usage")
    if "emotion" not in names:
        raise DataError(
            f"{path}: no 'emotion' column, so no labels (Kaggle's test.csv is unlabelled); "
            "use fer2013.csv, icml_face_data.csv or train.csv"
        )
    ncol, ie, ip = len(names), names.index("emotion"), names.index("pixels")
    iu = names.index("usage") if "usage" in names else None  # train.csv: every row is Training

    find = data.find
    spans, emotions, usages, linenos = [], [], [], []
    pos, lineno, n = header_end + 1, 1, len(data)
    while pos < n:
        end = find(b"\n", pos)
        end = n if end < 0 else end
        lineno += 1
        stop = end - 1 if end > pos and data[end - 1] == 13 else end  # drop \r of CRLF
        if stop > pos and (stop - pos > 64 or data[pos:stop].strip()):  # skip blank lines
            cuts, c = [pos - 1], pos - 1
            for _ in range(ncol - 1):
                c = find(b",", c + 1, stop)
                if c < 0:
                    raise DataError(f"{path} line {lineno}: {len(cuts)} fields, expected {ncol} ({header})")
                cuts.append(c)
            if find(b",", c + 1, stop) >= 0:
                raise DataError(f"{path} line {lineno}: more than {ncol} fields ({header})")
            cuts.append(stop)
            emo = data[cuts[ie] + 1 : cuts[ie + 1]].strip(b' "')
            if (code := _EMOTION_CODES.get(emo)) is None:
                raise DataError(f"{path} line {lineno}: emotion {emo.decode(errors='replace')!r} is not 0..6")
            emotions.append(code)
            if iu is not None:
                use = data[cuts[iu] + 1 : cuts[iu + 1]].strip(b' "')
                if (code := _USAGE_CODES.get(use)) is None:
                    raise DataError(
                        f"{path} line {lineno}: Usage {use.decode(errors='replace')!r} is not one of {USAGES}"
                    )
                usages.append(code)
            a, b = cuts[ip] + 1, cuts[ip + 1]
            while a < b and data[a] in b' "':
                a += 1
            while b > a and data[b - 1] in b' "':
                b -= 1
            spans.append((a, b))
            linenos.append(lineno)
        pos = end + 1
    if not spans:
        raise DataError(f"{path}: no data rows after the header")
    images = _parse_pixels(data, spans, linenos, path)
    labels = np.asarray(emotions, dtype=np.int64)
    usage = np.asarray(usages, dtype=np.uint8) if iu is not None else np.zeros(len(labels), np.uint8)
    return images, labels, usage


def _parse_pixels(data: bytes, spans: list[tuple[int, int]], linenos: list[int], path: Path) -> np.ndarray:
    """Parse the pixel fields `data[a:b]` (2304 space-separated integers 0..255 each) into (N, 48, 48) uint8.

    Vectorised over bytes: a token ends where a digit is followed by a non-digit, and its value is read from
    the (at most 3) digits before that end. Chunks of rows run on a thread pool (numpy releases the GIL).
    """
    pad = 3  # spaces before a chunk, so looking back 3 bytes never leaves it
    buf = np.frombuffer(data, dtype=np.uint8)
    field = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    out = np.empty((len(field), N_PIXELS), dtype=np.uint8)

    def parse(r0: int, r1: int) -> None:
        lo, hi = int(field[r0, 0]), int(field[r1 - 1, 1])
        b = np.empty(hi - lo + pad + 1, dtype=np.uint8)  # the chunk's bytes, framed by spaces
        b[:pad], b[pad:-1], b[-1] = 32, buf[lo:hi], 32
        starts = field[r0:r1, 0] - lo + pad  # row starts in b
        for r in range(r0 + 1, r1):  # blank the other columns between two pixel fields
            b[field[r - 1, 1] - lo + pad : field[r, 0] - lo + pad] = 32
        d = b - np.uint8(48)  # digit values; non-digits wrap to >= 10
        isd = d < 10

        def error(at: int, what: str) -> DataError:
            row = r0 + int(np.searchsorted(starts, at, side="right")) - 1
            return DataError(f"{path} line {linenos[row]}: {what}")

        if np.count_nonzero(isd) + np.count_nonzero(b == 32) != len(b):  # only digits and spaces allowed
            at = int(np.argmax(~isd & (b != 32)))
            spaces = np.flatnonzero(b == 32)
            i = int(np.searchsorted(spaces, at))
            tok = bytes(b[spaces[i - 1] + 1 : spaces[i]]).decode(errors="replace")
            raise error(at, f"pixel value {tok!r} is not an integer 0..255")
        ends = np.flatnonzero(isd[:-1] & ~isd[1:])
        d1 = isd[ends - 1]  # token has a tens digit
        d2 = d1 & isd[ends - 2]  # ... and a hundreds digit
        d3 = d2 & isd[ends - 3]  # ... and one more: too long
        if d3.any():
            raise error(int(ends[np.argmax(d3)]), "a pixel value has more than 3 digits (not 0..255)")
        v = d[ends].astype(np.uint16)
        v += (d[ends - 1] * d1).astype(np.uint16) * 10
        v += (d[ends - 2] * d2).astype(np.uint16) * 100
        counts = np.diff(np.searchsorted(ends, np.append(starts, len(b))))  # token ends per row
        if (wrong := counts != N_PIXELS).any():
            r = int(np.argmax(wrong))
            raise DataError(f"{path} line {linenos[r0 + r]}: {counts[r]} pixel values, expected {N_PIXELS}")
        if (v > 255).any():
            raise error(int(ends[np.argmax(v > 255)]), f"pixel value {int(v.max())} is not an integer 0..255")
        out[r0:r1] = v.reshape(r1 - r0, N_PIXELS)

    step = 32  # rows per chunk: ~260 kB of text, so the temporaries stay in the CPU cache
    chunks = [(r, min(r + step, len(field))) for r in range(0, len(field), step)]
    with ThreadPoolExecutor(WORKERS) as pool:
        for f in [pool.submit(parse, *c) for c in chunks]:
            f.result()  # re-raises the first DataError in row order
    return out.reshape(-1, SIZE, SIZE)


# --------------------------------------------------------------------------------------------- image folders


class _Image(NamedTuple):  # a tuple, not Paths: a 32k-file listing must take milliseconds
    path: str
    label: int
    usage: int
    size: int
    mtime_ns: int


def _scan_image_tree(root: Path) -> list[_Image]:
    """List `<root>/<split>/<class>/*.{png,jpg,jpeg}` (or `<root>/<class>/*` for one split folder)."""
    for base in (root, root / "fer2013"):
        if not base.is_dir():
            continue
        subdirs = _subdirs(base)
        if any(d.name.lower() in EMOTIONS for d in subdirs):
            images = _scan_split(base)  # root is itself a split folder
        else:
            images = [img for d in subdirs for img in _scan_split(d)]
        if images:
            return images
    if (root / "test.csv").is_file():
        raise DataError(
            f"{root / 'test.csv'}: Kaggle's test.csv has no labels; "
            "use fer2013.csv, icml_face_data.csv or train.csv"
        )
    raise DataError(
        f"{root}: no FER2013 data found: expected {' or '.join(CSV_NAMES)}, "
        "or images in <split>/<class>/*.png|jpg (class folders: " + ", ".join(EMOTIONS) + ")"
    )


def _subdirs(folder: Path) -> list[Path]:
    hidden = (".", "_")  # .ipynb_checkpoints, __MACOSX
    return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(hidden))


def _scan_split(split_dir: Path) -> list[_Image]:
    folder_usage = SPLIT_DIRS.get(split_dir.name.lower())
    images = []
    for class_dir in _subdirs(split_dir):
        name = class_dir.name.lower()
        if name not in EMOTIONS:
            raise DataError(f"{class_dir}: folder name is not a class; expected one of {', '.join(EMOTIONS)}")
        label = EMOTIONS.index(name)
        for e in sorted(os.scandir(class_dir), key=lambda e: e.name):
            if not e.name.lower().endswith(IMAGE_EXTS) or not e.is_file():
                continue
            prefix = e.name.split("_", 1)[0]
            usage = prefix if prefix in USAGES else folder_usage
            if usage is None:
                raise DataError(
                    f"{e.path}: cannot tell its Usage: name it Training_/PublicTest_/PrivateTest_<id> "
                    "or put it under train/, val/ or test/"
                )
            st = e.stat()
            images.append(_Image(e.path, label, USAGES.index(usage), st.st_size, st.st_mtime_ns))
    return images


def _decode(path: str) -> tuple[np.ndarray, bool]:
    """One image as 48x48 uint8 grayscale, and whether it had to be converted."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if min(im.size) < MIN_SIDE:
                w, h = im.size
                raise DataError(
                    f"{path}: {w}x{h} px is too small for a face (at least {MIN_SIDE}x{MIN_SIDE})"
                )
            converted = im.mode != "L" or im.size != (SIZE, SIZE)
            if im.mode != "L":
                im = im.convert("L")
            if im.size != (SIZE, SIZE):
                # Area averaging when shrinking (upscaled copies); bicubic when enlarging.
                small = im.width < SIZE or im.height < SIZE
                im = im.resize((SIZE, SIZE), Image.Resampling.BICUBIC if small else Image.Resampling.BOX)
            return np.asarray(im, dtype=np.uint8), converted
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def _read_image_tree(root: Path, images: list[_Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = np.empty((len(images), SIZE, SIZE), dtype=np.uint8)

    def read(lo: int, hi: int) -> int:
        converted = 0
        for i in range(lo, hi):
            out[i], c = _decode(images[i].path)
            converted += c
        return converted

    step = 512
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(read, i, min(i + step, len(images))) for i in range(0, len(images), step)]
        converted = sum(f.result() for f in futures)
    if converted:
        log.warning("%s: converted %d of %d images to 48x48 grayscale", root, converted, len(images))
    labels = np.fromiter((im.label for im in images), dtype=np.int64, count=len(images))
    usage = np.fromiter((im.usage for im in images), dtype=np.uint8, count=len(images))
    return out, labels, usage


# --------------------------------------------------------------------------------------------- cache


def _csv_key(path: Path) -> str:
    st = path.stat()
    return _digest(f"csv\0{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}")


def _tree_key(root: Path, images: list[_Image]) -> str:
    skip = len(str(root))  # paths relative to root, so /a/../b and /b give one key
    listing = "\n".join(f"{i.path[skip:]}\0{i.label}\0{i.usage}\0{i.size}\0{i.mtime_ns}" for i in images)
    return _digest(f"tree\0{root.resolve()}\0{listing}")


def _digest(text: str) -> str:
    return hashlib.sha256(f"v{_CACHE_VERSION}\0{text}".encode()).hexdigest()[:32]


def _cache_read(key: str, source: str) -> FER2013 | None:
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path) as z:
            images, labels, usage = z["images"], z["labels"], z["usage"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as e:  # a truncated or foreign file: parse again, overwrite it
        log.debug("ignoring unreadable cache file %s: %s", path, e)
        return None
    _cache_used[source] = path
    return FER2013(images, labels, np.asarray(USAGES)[usage], source)


def _cache_write(key: str, source: str, images: np.ndarray, labels: np.ndarray, usage: np.ndarray) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / f"{key}.npz", lambda f: np.savez(f, images=images, labels=labels, usage=usage))
    except (OSError, OutputError) as e:  # read-only or full cache: loading still works, only slower next time
        log.debug("not caching %s in %s: %s", source, folder, e)
        return
    _cache_used[source] = folder / f"{key}.npz"


# --------------------------------------------------------------------------------------------- describe, save


def describe(ds: FER2013) -> str:
    """A table of images per Usage and class, with totals, the source and the cache location.

    Args:
        ds: the dataset to describe.

    Returns:
        Several lines of text for the terminal.
    """
    import pandas as pd

    usage = pd.Categorical(ds.usage, categories=list(USAGES))
    labels = pd.Categorical.from_codes(ds.labels, categories=list(EMOTIONS))
    table = pd.crosstab(usage, labels, margins=True, margins_name="total", dropna=False)
    table = table.loc[[u for u in USAGES if u in ds.splits] + ["total"]]
    table.index.name = table.columns.name = None
    cache = _cache_used.get(ds.source, cache_dir())
    lines = [
        f"FER2013 from {ds.source or '(memory)'}: {len(ds):,} images, {SIZE}x{SIZE} grayscale",
        "",
        table.to_string(),
        "",
        f"cache: {cache}",
    ]
    return "\n".join(lines)
