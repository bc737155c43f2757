"""Search folders in an object store (`--results s3://bucket/prefix`): what multi-node clusters need.

Ray 2.60 persists each trial's checkpoints and results from the node that runs it, so `--results` must be
reachable from every node: a path mounted at the same place on each, or a URI that Ray's storage (pyarrow's
filesystems) accepts. S3-compatible stores are reached through pyarrow's usual settings (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), which every node's Ray must have too.

fer-tune's own files (`fer_tune.json`, `space.yaml`, `optuna.db`, `trials.csv`, ...) are written by the
driver into a local mirror of the remote folder (`$FER_TUNE_CACHE/searches/<hash>/<name>`; SQLite cannot live
in an object store) and uploaded when the search ends or stops; Ray writes its experiment straight to the URI.
Commands that read a remote search (resume, extend, export, report, retrain of its best config) download it
into that mirror first, without the trials' checkpoints (Ray reads those from the store itself on resume).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from fer_tune.base.errors import DataError, OutputError

# The files and folders of a search that fer-tune writes (everything else there is Ray's).
OWN = (
    "fer_tune.json",
    "space.yaml",
    "optuna.db",
    "stopped_by.json",
    "trials.csv",
    "trials.parquet",
    "leaderboard.md",
    "best_config.yaml",
    "report",
    "final",
)


def is_uri(path: str | Path) -> bool:
    """`s3://...`, `gs://...` and other pyarrow URIs (not `file://`, not a plain path).

    Args:
        path: a local path or a URI.

    Returns:
        Whether `path` names a remote location.
    """
    text = str(path)
    return "://" in text and not text.startswith("file://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with `/` (a trailing `/` of `uri` is dropped).

    Args:
        uri: a URI or a path inside a pyarrow filesystem.
        *parts: the names to append, in order.

    Returns:
        The joined URI.
    """
    return "/".join([uri.rstrip("/"), *parts])


def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) of a URI; OutputError naming it when pyarrow cannot open it.

    Args:
        uri: an `s3://`, `gs://` or other URI pyarrow accepts.

    Returns:
        The filesystem and the path inside it.

    Raises:
        OutputError: pyarrow cannot open the URI (unknown scheme, bad credentials or endpoint).
    """
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        raise OutputError(f"{uri}: cannot open: {' '.join(str(e).split())}") from None


def check_writable_uri(uri: str, flag: str) -> str:
    """Write and delete a small object under `uri` (as `errors.check_writable` does for a folder).

    Args:
        uri: the remote output folder.
        flag: the command-line flag that named it (`--results`), for the message.

    Returns:
        `uri`, unchanged.

    Raises:
        OutputError: the store cannot be opened or written.
    """
    fs, path = filesystem(uri)
    probe = join(path, ".fer-tune-write-test")
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"\0")
        fs.delete_file(probe)
    except OSError as e:
        raise OutputError(f"{flag} {uri}: cannot write there: {' '.join(str(e).split())}") from None
    return uri


def mirror_of(uri: str) -> Path:
    """The local folder that stands for a remote search folder on this machine.

    Args:
        uri: the remote search folder.

    Returns:
        `$FER_TUNE_CACHE/searches/<hash of uri>/<last name of uri>` (not created here).
    """
    cache = Path(os.environ.get("FER_TUNE_CACHE", Path.home() / ".cache" / "fer-tune"))
    key = hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16]
    return cache / "searches" / key / uri.rstrip("/").rsplit("/", 1)[-1]


def pull(uri: str, local: Path, *, require: str | None = "fer_tune.json") -> Path:
    """Download the remote search folder `uri` into `local`, leaving out trials' `checkpoint_*` folders and
    files the local copy holds in a newer version (a driver killed before its last upload left `optuna.db`
    newer here than in the store).

    Args:
        uri: the remote search folder.
        local: the folder to download into (usually `mirror_of(uri)`); created as needed.
        require: a file the folder must hold to be a search folder; None to accept any folder.

    Returns:
        `local`.

    Raises:
        DataError: the folder cannot be listed, or lacks `require`.
    """
    from pyarrow.fs import FileSelector, FileType

    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        raise DataError(f"{uri}: cannot list: {' '.join(str(e).split())}") from None
    files = [i for i in infos if i.type == FileType.File and "/checkpoint_" not in i.path]
    rel = {i.path[len(root) :].lstrip("/"): i for i in files}
    if require and require not in rel:
        raise DataError(f"{uri}: no {require}; not a fer-tune search folder")
    for name, info in rel.items():
        dest = local / name
        if dest.is_file() and info.mtime is not None and dest.stat().st_mtime >= info.mtime.timestamp():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    return local


def push(local: Path, uri: str) -> None:
    """Upload fer-tune's own files of the local mirror `local` to the remote search folder `uri`.

    Ray's files are left alone: the copies in the mirror are older than the ones Ray wrote to the store.

    Args:
        local: the local mirror of the search folder.
        uri: the remote search folder.

    Raises:
        OutputError: a file cannot be uploaded.
    """
    import pyarrow.fs

    fs, root = filesystem(uri)
    for p in local.rglob("*"):
        rel = p.relative_to(local)
        if not p.is_file() or p.name.startswith(".") or not _own(rel):
            continue
        try:
            pyarrow.fs.copy_files(str(p), join(root, rel.as_posix()), destination_filesystem=fs)
        except OSError as e:
            raise OutputError(f"{uri}: cannot upload {rel}: {' '.join(str(e).split())}") from None


def _own(rel: Path) -> bool:
    """Whether a path of a search folder (relative to it) is fer-tune's: its own files, in any phase."""
    parts = rel.parts
    if parts and parts[0].startswith("phase") and parts[0][5:].isdigit():
        parts = parts[1:]
    return bool(parts) and parts[0] in OWN


def local_folder(path: str | Path) -> Path:
    """A local search folder to read: `path` itself, or a remote one downloaded into its mirror.

    Args:
        path: a local search folder or a URI of a remote one.

    Returns:
        The local folder (for a URI: its mirror, refreshed by `pull`).
    """
    if not is_uri(path):
        return Path(path)
    uri = str(path).rstrip("/")
    return pull(uri, mirror_of(uri))


def local_file(path: str | Path) -> Path:
    """A local copy of a file given as a URI (say a remote search's `best_config.yaml`), or `path` itself.

    Args:
        path: a local file or a URI of a remote one.

    Returns:
        The local file (for a URI: a fresh download into its folder's mirror).

    Raises:
        DataError: the remote file cannot be read.
    """
    if not is_uri(path):
        return Path(path)
    uri = str(path)
    fs, p = filesystem(uri)
    local = mirror_of(uri.rsplit("/", 1)[0]) / uri.rsplit("/", 1)[1]
    local.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs.open_input_stream(p) as src, open(local, "wb") as out:
            shutil.copyfileobj(src, out)
    except OSError as e:
        raise DataError(f"{uri}: cannot read: {' '.join(str(e).split())}") from None
    return local
