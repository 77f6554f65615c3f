"""Where model artifacts live: a local folder (or a shared mount), or any fsspec URL (``s3://``, ``gs://``,
``file://``), so a worker that trains a model and a web node that serves it need no shared disk.

A local store is written in place (the caller renames a finished folder into it). A remote store receives a
finished local folder with ``publish``, which uploads it and writes a ``_COMPLETE`` marker last: a reader never
sees a half-uploaded model. Readers get a local folder with ``local_copy`` (a remote artifact is downloaded once
into a per-user cache, keyed by its location). fsspec is imported only for remote stores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

COMPLETE_MARKER = "_COMPLETE"


def is_remote(location: str | Path) -> bool:
    """An fsspec URL (``s3://``, ``gs://``, ``file://`` …) rather than a plain local path."""
    return "://" in str(location)


def join(root: str | Path, *parts: str) -> str:
    """``root/parts…`` for a local path or a URL."""
    if is_remote(root):
        return "/".join([str(root).rstrip("/"), *parts])
    return str(Path(root).resolve().joinpath(*parts))


def _fs(location: str) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(location)
    return fs, path


def publish(local_dir: Path, location: str) -> str:
    """Upload a finished local folder to ``location`` (a URL), marker last; returns the location."""
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        target = f"{path}/{file.relative_to(local_dir).as_posix()}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(file), target)
    fs.pipe_file(f"{path}/{COMPLETE_MARKER}", b"")
    return location


def exists(location: str | None) -> bool:
    """Whether a complete artifact is at ``location``."""
    if not location:
        return False
    if not is_remote(location):
        return Path(location).exists()
    fs, path = _fs(location)
    return bool(fs.exists(f"{path}/{COMPLETE_MARKER}"))


def delete(location: str) -> None:
    if not is_remote(location):
        shutil.rmtree(location, ignore_errors=True)
        return
    fs, path = _fs(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def cache_dir() -> Path:
    """The per-user folder remote artifacts are downloaded into."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "flywheel" / "artifacts"


def local_copy(location: str) -> Path:
    """A local folder holding the artifact at ``location``: the folder itself when local, else a cached download
    (downloaded once: into a temporary folder, then renamed into place)."""
    if not is_remote(location):
        return Path(location)
    target = cache_dir() / hashlib.sha256(location.encode()).hexdigest()[:32]
    if (target / COMPLETE_MARKER).exists():
        return target
    fs, path = _fs(location)
    if not fs.exists(f"{path}/{COMPLETE_MARKER}"):
        raise FileNotFoundError(f"no complete artifact at {location}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        for remote in fs.find(path):
            rel = remote[len(path) :].lstrip("/")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(tmp / rel))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_text(location: str, name: str) -> str | None:
    """One small file of an artifact (``lineage.json``), or None when it is not there."""
    if not is_remote(location):
        file = Path(location) / name
        return file.read_text() if file.exists() else None
    fs, path = _fs(location)
    target = f"{path}/{name}"
    return fs.cat_file(target).decode() if fs.exists(target) else None
