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
    cut,
    shown,
)
from fer_tune.base.fields import (
    MAX_FAILURES,
    MAX_INT,
    MAX_SECONDS,
    MAX_SEED,
    MAX_TRIALS,
    coerce,
    coerce_fields,
    config_field,
)
from fer_tune.base.files import atomic_write, atomic_write_text, json_safe
from fer_tune.base.locks import FolderBusy, lock_folder
from fer_tune.base.outputs import check_output, folder_kind
from fer_tune.base.processes import descendants, process_stats, sigterm_pending
from fer_tune.base.yaml_files import read_yaml

__all__ = [
    "MAX_FAILURES",
    "MAX_INT",
    "MAX_SECONDS",
    "MAX_SEED",
    "MAX_TRIALS",
    "atomic_write",
    "atomic_write_text",
    "check",
    "check_output",
    "check_writable",
    "coerce",
    "coerce_fields",
    "config_field",
    "ConfigError",
    "DataError",
    "DeviceError",
    "FerTuneError",
    "folder_kind",
    "FolderBusy",
    "json_safe",
    "lock_folder",
    "OutputError",
    "read_yaml",
    "cut",
    "descendants",
    "process_stats",
    "shown",
    "sigterm_pending",
]
