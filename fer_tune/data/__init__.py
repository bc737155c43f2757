"""FER2013: reading the Kaggle CSVs and image-folder exports, the parse cache, and writing copies."""

from fer_tune.data.copies import save_csv, save_image_folder
from fer_tune.data.fer2013 import (
    EMOTIONS,
    FER2013,
    IMAGE_EXTS,
    MIN_SIDE,
    SIZE,
    USAGES,
    cache_dir,
    describe,
    load_fer2013,
)
from fer_tune.data.locate import find_data

__all__ = [
    "EMOTIONS",
    "FER2013",
    "IMAGE_EXTS",
    "MIN_SIDE",
    "SIZE",
    "USAGES",
    "cache_dir",
    "describe",
    "find_data",
    "load_fer2013",
    "save_csv",
    "save_image_folder",
]
