"""Writing FER2013 copies: a CSV in Kaggle's layouts, or an image-folder export."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fer_tune.base import DataError
from fer_tune.data.fer2013 import EMOTIONS, FER2013, WORKERS

_CSV_LAYOUTS = {
    "fer2013": ("emotion,pixels,Usage", "{e},{p},{u}"),
    "icml": ("emotion, Usage, pixels", "{e},{u},{p}"),
    "train": ("emotion,pixels", "{e},{p}"),
}


# "0 " .. "255 " as bytes, NUL padded to 4: a row is the non-NUL bytes of LUT[pixels].
_TOKENS = np.array([list(f"{v} ".encode().ljust(4, b"\0")) for v in range(256)], dtype=np.uint8)


def save_csv(ds: FER2013, path: str | os.PathLike, layout: str = "fer2013") -> Path:
    """Write `ds` as a Kaggle CSV: layout `fer2013`, `icml` (icml_face_data.csv) or `train` (Training).

    Args:
        ds: the rows to write.
        path: the CSV file to write; its folder is created.
        layout: `fer2013` (`emotion,pixels,Usage`), `icml` (`emotion, Usage, pixels`) or `train`
            (`emotion,pixels`, Training rows only).

    Returns:
        `path`.

    Raises:
        DataError: layout `train` with rows of other splits.
    """
    if layout not in _CSV_LAYOUTS:
        raise ValueError(f"layout must be one of {list(_CSV_LAYOUTS)}, not {layout!r}")
    if layout == "train" and set(ds.splits) - {"Training"}:
        raise DataError("layout 'train' holds Training rows only; pass ds.split('Training')")
    header, row = _CSV_LAYOUTS[layout]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode() + b"\n")
        for img, e, u in zip(ds.images.reshape(len(ds), -1), ds.labels, ds.usage, strict=True):
            tok = _TOKENS[img]
            pixels = tok[tok != 0].tobytes()[:-1].decode()
            f.write(row.format(e=int(e), p=pixels, u=u).encode() + b"\n")
    return path


def save_image_folder(ds: FER2013, root: str | os.PathLike, ext: str = "png") -> Path:
    """Write `ds` as `<root>/<split>/<class>/<Usage>_<row>.<ext>`; splits train, val (PublicTest), test.

    Args:
        ds: the rows to write.
        root: the folder to write the tree into; created as needed.
        ext: the image format, as a file extension Pillow writes (`png`, `jpg`, ...).

    Returns:
        `root`.
    """
    from PIL import Image

    root = Path(root)
    folder = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
    for u in ds.splits:
        for c in EMOTIONS:
            (root / folder[u] / c).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        u, c = str(ds.usage[i]), EMOTIONS[int(ds.labels[i])]
        Image.fromarray(ds.images[i], mode="L").save(root / folder[u] / c / f"{u}_{i}.{ext}")

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(write, range(len(ds))))
    return root
