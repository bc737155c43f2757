"""Config fields that carry their type and documentation, and the coercion of sampled values to that type.

Every config dataclass (a model family's, `train`, `augment`) declares its keys with `config_field`, so the
type a sampled value is coerced to, its documentation and the generated key reference all come from one place.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

from fer_tune.base.errors import ConfigError


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
        The value as a plain Python value of `kind`.

    Raises:
        ConfigError: the value cannot be read as `kind` without losing information.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy/torch scalars and arrays -> Python values
    if kind is list:  # a list of ints (channel widths)
        if isinstance(value, (list, tuple)):
            try:
                return [coerce(key, v, int) for v in value]
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected a list of ints, got {value!r}")
    if kind is bool:
        if isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1)):
            return bool(value)
    elif kind is int:
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return float(value)
    elif kind is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
