"""mkdocs hooks (mkdocs.yml `hooks:`): the generated run-config key reference, and links to repository files.

- `on_page_markdown` replaces the marker `<!-- run-config-keys -->` with `run_config_reference()`: one table
  per group (`train`, `augment`, `seed`, then each registered model family), read from the config dataclasses'
  own fields (`fer_tune.base.config_field` puts each key's type and one-line doc in the field's metadata), so
  the reference cannot drift from the code. `tests/test_docs.py` checks it lists every key with its default.
- Pages link to repository files outside `docs/` the way GitHub resolves them (`../results/...` from
  `docs/benchmarks.md`). `on_files` publishes every such file that exists and is not Markdown (figures, JSON,
  CSV, YAML) into the site at its repository path, and `on_page_markdown` points the link there. A link to a
  repository folder or Markdown file (a committed report, a README) is not a page of this site: it becomes its
  repository path in a code span, so `mkdocs build --strict` passes either way.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

MARKER = "<!-- run-config-keys -->"

# Keys of RunConfig that are plain fields (no `config_field` metadata yet): their one-line doc.
FALLBACK_DOCS = {"seed": "model init, batch order, augmentation, subset"}

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# [text](../path) or ![alt](../path "title"): a link that leaves docs/ for the repository.
REPO_LINK = re.compile(r"(!?)\[([^\]]*)\]\((\.\./[^)\s]+)((?:\s+\"[^\"]*\")?)\)")


# ---------------------------------------------------------------------------------------------------------
# The run-config key reference


def _kind(f: dataclasses.Field) -> str:
    kind = f.metadata.get("type", f.type)
    name = "list of int" if kind is list else getattr(kind, "__name__", str(kind))
    return f"{name} or null" if f.metadata.get("optional") else name


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def format_default(value: Any) -> str:
    """A default as YAML would read it back: `null`, `true`, `[64, 128]`, `0.0005`, `sgd`."""
    if value is dataclasses.MISSING:
        return "(required)"
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(prefix: str, fields: list[tuple[str, str, str, str]]) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, kind, default, doc in fields:
        key = f"{prefix}.{name}" if prefix else name
        rows.append(f"| `{key}` | {kind} | `{_cell(default)}` | {_cell(doc)} |")
    return rows


def _group(cls: type) -> list[tuple[str, str, str, str]]:
    return [
        (f.name, _kind(f), format_default(_default(f)), f.metadata.get("doc", ""))
        for f in dataclasses.fields(cls)
    ]


def run_config_keys() -> dict[str, list[tuple[str, str, str, str]]]:
    """Every run-config key, grouped: `train`, `augment`, the top-level scalars (`seed`), then
    `model (<arch>)` per registered family; each key as (name, type, default as YAML, doc)."""
    from fer_tune.models import list_models
    from fer_tune.models.registry import _REGISTRY
    from fer_tune.training import RunConfig

    groups: dict[str, list[tuple[str, str, str, str]]] = {}
    scalars = []
    for f in dataclasses.fields(RunConfig):
        default = _default(f)
        if f.name == "model":
            continue
        if dataclasses.is_dataclass(default):
            groups[f.name] = _group(type(default))
        else:
            doc = f.metadata.get("doc") or FALLBACK_DOCS.get(f.name, "")
            scalars.append((f.name, _kind(f), format_default(default), doc))
    groups[""] = scalars
    for arch in list_models():
        groups[f"model ({arch})"] = _group(_REGISTRY[arch][0])
    return groups


def run_config_reference() -> str:
    """The Markdown that replaces MARKER: a table per group, every key with its type, default and doc."""
    out: list[str] = []
    for group, fields in run_config_keys().items():
        if group.startswith("model ("):
            arch = group[len("model (") : -1]
            out += [f"### `model` for `arch: {arch}`", ""]
            out += _table("model", fields)
        elif group:
            out += [f"### `{group}`", ""]
            out += _table(group, fields)
        else:
            out += ["### Top level", ""]
            out += _table("", fields)
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------
# Links from pages to repository files


def _repo_target(page_src_uri: str, url: str) -> str | None:
    """The repository path (`results/x/y.png`) a link leaving docs/ points to, or None if it stays inside."""
    path = url.split("#", 1)[0]
    joined = posixpath.normpath(posixpath.join("docs", posixpath.dirname(page_src_uri), path))
    if joined == "docs" or joined.startswith(("docs/", "../")) or joined.startswith("/"):
        return None
    return joined + ("/" if path.endswith("/") else "")


def _publishable(target: str) -> bool:
    p = REPO / target
    return not target.endswith("/") and p.is_file() and p.suffix != ".md"


def _repo_links(markdown: str, page_src_uri: str) -> list[str]:
    out = []
    for m in REPO_LINK.finditer(markdown):
        target = _repo_target(page_src_uri, m.group(3))
        if target is not None:
            out.append(target)
    return out


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    wanted: set[str] = set()
    for f in files.documentation_pages():
        wanted.update(t for t in _repo_links(Path(f.abs_src_path).read_text(), f.src_uri) if _publishable(t))
    for target in sorted(wanted):
        if files.get_file_from_path(target) is None:
            files.append(File(target, str(REPO), config["site_dir"], config["use_directory_urls"]))
    return files


def _rewrite_links(markdown: str, page_src_uri: str) -> str:
    def replace(m: re.Match) -> str:
        bang, text, url, title = m.groups()
        target = _repo_target(page_src_uri, url)
        if target is None:
            return m.group(0)
        if _publishable(target):
            anchor = url[len(url.split("#", 1)[0]) :]
            rel = posixpath.relpath(target, posixpath.dirname(page_src_uri) or ".")
            return f"{bang}[{text}]({rel}{anchor}{title})"
        if not (REPO / target).exists():
            raise FileNotFoundError(f"{page_src_uri}: link to {url}: no {target} in the repository")
        # A folder or a Markdown file of the repository: name it.
        if text.strip("`") == target or text.strip("`") == target.rstrip("/"):
            return f"`{target}`"
        return f"{text} (`{target}`)"

    return REPO_LINK.sub(replace, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, run_config_reference())
    return _rewrite_links(markdown, page.file.src_uri)
