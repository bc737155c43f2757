"""Base layer: user-facing errors, files written whole, typed config fields, local and remote storage.

Nothing here imports another fer_tune package."""

from fer_tune.base.errors import (
    ConfigError,
    DataError,
    DeviceError,
    FerTuneError,
    OutputError,
    check,
    check_writable,
)
from fer_tune.base.fields import coerce, config_field
from fer_tune.base.files import atomic_write, atomic_write_text, json_safe

__all__ = [
    "atomic_write",
    "atomic_write_text",
    "check",
    "check_writable",
    "coerce",
    "config_field",
    "ConfigError",
    "DataError",
    "DeviceError",
    "FerTuneError",
    "json_safe",
    "OutputError",
]
