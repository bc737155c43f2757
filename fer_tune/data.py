"""FER2013 in every common format: Kaggle CSVs and image folders, checked, parsed fast and cached."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_tune.errors import DataError

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGES: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")


@dataclass(frozen=True, eq=False)
class FER2013:
    """The whole dataset, or one or more of its Usage splits, as plain numpy arrays."""

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

    def split(self, *usages: str) -> FER2013:
        """The rows whose Usage is one of `usages` (e.g. `split("Training", "PublicTest")`)."""
        for u in usages:
            if u not in USAGES:
                raise DataError(f"{self.source or 'dataset'}: unknown Usage {u!r}; expected one of {USAGES}")
        keep = np.isin(self.usage, usages)
        return FER2013(self.images[keep], self.labels[keep], self.usage[keep], self.source)
