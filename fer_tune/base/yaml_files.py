"""The one reader of the YAML files fer-tune is given: search spaces, run configs, `extend --space`.

`yaml.safe_load`, less what it lets through without a word: a key given twice in a mapping (the last one
silently wins), aliases that expand a few lines into gigabytes (`a: &a [*b, *b, ...]`, nine levels deep),
a binary file (a photo given as the space), and errors that are not `yaml.YAMLError` (an integer of 5,000
digits, a date of month 13). Each becomes one `ConfigError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from fer_tune.base.errors import ConfigError, cut, shown

# Values in a document once its aliases are expanded (every scalar, list and mapping counts one). The bundled
# spaces have under 300; 100,000 keeps a generated file of points to evaluate and refuses an alias bomb
# before it is expanded.
MAX_VALUES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice (a merge key `<<` may still be overridden)."""

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # SafeLoader's own error ("found unhashable key") follows
                line = key_node.start_mark.line + 1
                if key in first:
                    raise _Refused(f"line {line}: key {shown(key)} given twice (first on line {first[key]})")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


class _Refused(Exception):
    """What the loader refuses that YAML allows; `load_yaml` prefixes the file's name."""


def read_yaml(path: str | Path) -> Any:
    """A YAML file fer-tune is given, parsed as `yaml.safe_load` does, or one ConfigError naming it.

    Args:
        path: the file.

    Returns:
        The document (None for an empty file).

    Raises:
        ConfigError: the file is missing, unreadable, binary or not UTF-8, is not YAML, repeats a key in a
            mapping, or expands to more than `MAX_VALUES` values; the message starts with the path.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    if b"\0" in data[:65536]:
        raise ConfigError(f"{path}: a binary file, not YAML")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        byte = f"byte {e.start} is {data[e.start]:#04x}"
        raise ConfigError(f"{path}: not a UTF-8 text file ({byte}), so not YAML") from None
    return load_yaml(text, str(path))


def load_yaml(text: str, name: str = "<yaml>") -> Any:
    """YAML text parsed as `read_yaml` parses a file.

    Args:
        text: the document.
        name: what the messages start with (the file it came from).

    Returns:
        The document (None for an empty one).

    Raises:
        ConfigError: as `read_yaml`.
    """
    loader = None
    try:
        loader = _Loader(text)  # its reader refuses control characters here, before any parsing
        loader.name = name  # PyYAML's messages say where: "in <name>, line 3, column 5"
        node = loader.get_single_node()
        if node is None:
            return None
        values = _expanded_size(node, {}, set())
        if values > MAX_VALUES:
            raise ConfigError(
                f"{name}: {values:,} values once its aliases (*name) are expanded; at most {MAX_VALUES:,}"
            )
        return loader.construct_document(node)
    except _Refused as e:
        raise ConfigError(f"{name}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    # ValueError, OverflowError: PyYAML's int(), float() and date() of a resolved scalar. Its messages quote
    # the line under a caret, padded with spaces: folded to one short line.
    except (yaml.YAMLError, ValueError, OverflowError) as e:
        raise ConfigError(f"{name}: invalid YAML: {cut(' '.join(str(e).split()))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _expanded_size(node: Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Values in `node` with every alias expanded, counted once per node of the composed graph."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _Refused("an alias refers to a value that contains it (a recursive alias)")
    open_.add(key)
    if isinstance(node, ScalarNode):
        n = 1
    elif isinstance(node, SequenceNode):
        n = 1 + sum(_expanded_size(v, sizes, open_) for v in node.value)
    else:  # MappingNode
        n = 1 + sum(_expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_) for k, v in node.value)
    open_.discard(key)
    sizes[key] = n
    return n
