"""Run directories on a local disk or in Cloud Storage (`gs://bucket/...`).

On a multi-host TPU every worker must see the same checkpoints, and they must
outlive a preempted VM, so `sparrow train` writes its workdir to a bucket. Paths
go through etils.epath, as orbax's do (gs:// through gcsfs: the `tpu` extra).
Cloud Storage objects cannot be appended to: a log appended to at a URL is kept in
memory and the whole object rewritten on flush (training logs are kilobytes).
"""
from __future__ import annotations

import os
from typing import IO

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    return "://" in os.fspath(path)


def run_path(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute (orbax requires it); a URL kept as given."""
    path = os.fspath(path)
    return epath.Path(path if is_url(path) else os.path.abspath(path))


def join(path: str | os.PathLike, *parts: str) -> str:
    """`run_path(path)/parts...` as a string: `gs://b/run` + `logs` -> `gs://b/run/logs`."""
    return os.fspath(run_path(path).joinpath(*parts))


def makedirs(path: str | os.PathLike) -> None:
    run_path(path).mkdir(parents=True, exist_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    run_path(path).write_text(text)


def require_local(path: str, what: str, error: type[Exception] = ValueError) -> None:
    """Commands that read a run directory file by file (eval, chat) need it on this machine."""
    if is_url(path):
        raise error(
            f"{what} {path!r} is a URL; this command works on a local directory: copy the run "
            f"down first (gcloud storage rsync -r {path} DIR) and pass DIR")


class RewrittenObject:
    """A file at a URL, appended to in memory and rewritten whole on every flush.

    Opened for append, it starts from the object's current content, so a resumed run
    keeps the lines of the runs before it.
    """

    def __init__(self, path: epath.Path, binary: bool):
        self._path, self._binary = path, binary
        empty = b"" if binary else ""
        self._content = (path.read_bytes() if binary else path.read_text()) \
            if path.exists() else empty
        self._dirty = False

    def write(self, data):
        self._content += data
        self._dirty = True
        return len(data)

    def flush(self) -> None:
        if not self._dirty:
            return
        if self._binary:
            self._path.write_bytes(self._content)
        else:
            self._path.write_text(self._content)
        self._dirty = False

    def close(self) -> None:
        self.flush()


def open_append(path: str | os.PathLike, binary: bool = False) -> IO | RewrittenObject:
    """A file to append to: an ordinary file on disk, a `RewrittenObject` at a URL."""
    if is_url(path):
        return RewrittenObject(run_path(path), binary)
    return open(os.fspath(path), "ab" if binary else "a")
