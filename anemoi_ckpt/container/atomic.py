"""Atomic file creation: a temporary file in the target's folder, fsync, rename, fsync the folder.

A crash or SIGKILL at any point leaves the target either absent or as it was before; at worst a
stray ``.<name>.*.tmp`` file remains beside it, never a half-written target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from .writeback import WriteBehindFile


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = True,
                  durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file to write; on success it replaces ``path`` atomically. ``durable`` adds the
    fsync calls that make the new file survive a power cut, not only a crash of this process."""
    target = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(target)
    if not overwrite and os.path.exists(target):
        raise FileExistsError(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        # Durable: the disk writes the file while it is being written, so the fsync below only
        # waits for the last few MB (writeback.py).
        with WriteBehindFile(fd) if durable else os.fdopen(fd, "w+b") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(folder)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable. Not all filesystems allow opening a directory; that is fine.
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
