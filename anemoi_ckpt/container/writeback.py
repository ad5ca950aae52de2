"""Write-behind for durable saves: the kernel writes finished stretches of the output to disk
while the writer goes on, so the closing ``fsync`` has little left to flush.

Without it a 1 GB file sits dirty in the page cache until the ``fsync`` (the kernel's own
background write-back only starts past ``dirty_background_ratio`` of memory), and the save then
waits for the whole disk write after all the writing and hashing: two phases one after the
other. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux) only *starts* write-back of the dirty
pages; it guarantees nothing by itself. The ``fsync`` at the end still decides durability
(docs/format.md 10.1). Where the call is missing (not Linux) this does nothing.
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Callable
from typing import Any

#: Start write-back each time this many bytes have been written since the last start: large
#: enough that the syscall is rare, small enough that the disk starts early and stays busy.
WRITE_BEHIND_EVERY = 8 << 20
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>; the same value on every Linux architecture


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        fn: Any = ctypes.CDLL(None, use_errno=True).sync_file_range  # releases the GIL
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int = 0, nbytes: int = 0) -> None:
    """Ask the kernel to start writing the dirty pages of ``fd`` in ``[offset, offset+nbytes)``
    that are not already being written; by default the whole file (members are patched behind
    the write position, and copied ranges never pass through :meth:`WriteBehindFile.write`).
    Advice only; errors are ignored."""
    fn = _sync_file_range()
    if fn is not None:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # length 0: to the end of the file


class WriteBehindFile(io.BufferedRandom):
    """A buffered read/write file over ``fd`` (as ``os.fdopen(fd, "w+b")``) that starts
    write-back every :data:`WRITE_BEHIND_EVERY` bytes written."""

    def __init__(self, fd: int, every: int = WRITE_BEHIND_EVERY) -> None:
        size = getattr(os.fstat(fd), "st_blksize", 0)  # as io.open picks it (absent on Windows)
        super().__init__(io.FileIO(fd, "r+"), buffer_size=size if size > 1 else io.DEFAULT_BUFFER_SIZE)
        self._every = every
        self._since = 0

    def write(self, data: Any) -> int:
        n = super().write(data)
        self._since += n
        if self._since >= self._every:
            self._since = 0
            start_writeback(self.fileno())
        return n
