"""Config fields that carry their type and documentation, and the coercion of sampled values to that type.

Every config dataclass (a model family's, `train`, `augment`) declares its keys with `config_field`, so the
type a sampled value is coerced to, its documentation and the generated key reference all come from one place.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from fer_tune.base.errors import ConfigError, shown

# Bounds of the numbers a user gives, shared by the config and space checks and the command line's flags.
MAX_INT = 2**63 - 1  # any integer key: torch and numpy hold them in 64 bits
MAX_SEED = 2**32 - 1  # seeds: numpy's are 32-bit (`seed: -5` or 2**32 would fail inside a trial)
MAX_TRIALS = 100_000  # search.num_samples, --num-samples (Ray reads -1 as "no limit")
MAX_FAILURES = 10  # search.max_failures, --max-failures: retries of a failed trial (Ray's -1: forever)
MAX_SECONDS = 366 * 86400  # a time budget or trial timeout: more than a year is a typo


def config_field(default: Any, kind: type, doc: str, optional: bool = False) -> Any:
    """A dataclass field with its type, its documentation and whether it may be null, in its metadata.

    Args:
        default: the value a config that omits the key gets (a list is copied for each instance).
        kind: `int`, `float`, `bool`, `str`, or `list` (of ints): what `coerce` turns a value into.
        doc: one line for people: what the key does, its unit or its choices.
        optional: whether `null` is a valid value (None then means "derive it").

    Returns:
        A `dataclasses.field` to assign in a dataclass body.
    """
    meta = {"type": kind, "doc": doc, "optional": optional}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def coerce(key: str, value: Any, kind: type) -> Any:
    """Coerce sampler output (numpy scalars, 64.0, tuples) to the declared type, or fail naming the key.

    Args:
        key: the dotted key, for the error message (`model.kernels`).
        value: the value read from YAML or sampled by a search algorithm.
        kind: `int`, `float`, `bool`, `str`, or `list` (a list of ints).

    Returns:
        The value as a plain Python value of `kind`: a number is finite (no NaN or infinity), an int at most
        `MAX_INT` in size.

    Raises:
        ConfigError: the value cannot be read as `kind` without losing information, or is not finite.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy/torch scalars and arrays -> Python values
    if kind is list:  # a list of ints (channel widths)
        if isinstance(value, (list, tuple)):
            try:
                return [coerce(key, v, int) for v in value]
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected a list of ints, got {shown(value)}")
    if kind is bool:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
    elif kind in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
        if kind is float:
            try:
                return float(value)
            except OverflowError:  # an int past 1.8e308
                raise ConfigError(f"{key}: must be a finite number, got {shown(value)}") from None
        if abs(value) > MAX_INT:
            raise ConfigError(f"{key}: {shown(value)} is too large for an integer (at most {MAX_INT})")
        if isinstance(value, numbers.Integral) or float(value).is_integer():
            return int(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {kind.__name__}, got {shown(value)}")


def coerce_fields(config: Any, prefix: str) -> None:
    """Coerce every `config_field` of a config dataclass in place (a `__post_init__`'s first step), so a
    config built in Python is checked as one read from YAML: types, and finite numbers.

    Args:
        config: a dataclass instance whose fields were declared with `config_field`.
        prefix: the group's key, for messages (`train`).

    Raises:
        ConfigError: a value that `coerce` refuses, named `prefix.key`.
    """
    for f in dataclasses.fields(config):
        kind, value = f.metadata.get("type"), getattr(config, f.name)
        if kind is not None and not (value is None and f.metadata.get("optional")):
            setattr(config, f.name, coerce(f"{prefix}.{f.name}", value, kind))
