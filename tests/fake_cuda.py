"""A fake `torch.cuda` at fer-tune's CUDA boundary, strict where the real one is strict.

It lets the GPU branches (device checks, memory caps, precision choice) run on machines without a GPU. Each
fake refuses what torch refuses, with torch's own checks where they need no GPU: an unindexed device for
`set_per_process_memory_fraction` (torch's `_get_device_index`), a fraction outside 0..1 or not a float, a
device index beyond `device_count()`, any call when no device exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch.cuda._utils import _get_device_index


@dataclass
class FakeCuda:
    """`count` GPUs of compute capability `capability`; records the memory fractions set per device."""

    count: int = 1
    capability: tuple[int, int] = (9, 0)
    name: str = "Fake H100"
    fractions: dict[int, float] = field(default_factory=dict)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        c = torch.cuda
        monkeypatch.setattr(c, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(c, "device_count", lambda: self.count)
        monkeypatch.setattr(c, "current_device", self.current_device)
        monkeypatch.setattr(c, "set_per_process_memory_fraction", self.set_per_process_memory_fraction)
        monkeypatch.setattr(c, "get_device_capability", lambda d=None: self._get(d, self.capability))
        monkeypatch.setattr(c, "get_device_name", lambda d=None: self._get(d, self.name))
        monkeypatch.setattr(c, "is_bf16_supported", self.is_bf16_supported)
        monkeypatch.setattr(c, "synchronize", lambda device=None: self._index(device, optional=True) and None)
        return self

    def _lazy_init(self) -> None:
        if self.count == 0:
            raise RuntimeError("No CUDA GPUs are available")  # what torch's _lazy_init raises

    def current_device(self) -> int:
        self._lazy_init()
        return 0

    def _index(self, device: object, optional: bool) -> int:
        self._lazy_init()
        if device is None or (optional and isinstance(device, torch.device) and device.index is None):
            return self.current_device()
        index = _get_device_index(device, optional=optional)
        if not 0 <= index < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} (device_count {self.count})")
        return index

    def _get(self, device: object, value: object) -> object:
        self._index(device, optional=True)  # these accept an unindexed device: the current one
        return value

    def set_per_process_memory_fraction(self, fraction: float, device: object = None) -> None:
        index = self._index(device, optional=False)
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")
        if fraction < 0 or fraction > 1:
            raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
        self.fractions[index] = fraction

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        return self.count > 0 and (self.capability[0] >= 8 or including_emulation)
