"""Releasing the pages of a read-only file map as a stream moves past them.

Tensors read zero-copy from a map count in the process's resident memory once touched, even
though the kernel could drop them at will. A writer that has written and hashed a tensor asks
for its pages to be unmapped (``MADV_DONTNEED``): memory stays near the tensors in flight, and a
later read of the same range simply faults the bytes back in from the file.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any


def map_base(mapping: Any) -> int:
    if mapping is None or not len(mapping):
        return 0
    import torch

    return torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr()


def page_releaser(mapping: Any) -> Callable[[Any], Callable[[], None] | None]:
    """For a tensor viewing ``mapping``, a callable dropping its pages from this process (the
    file keeps them; a later read faults them back in). None for tensors elsewhere (copies)."""
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return lambda t: None
    import torch

    size = len(mapping)
    base = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr() if size else 0
    page = mmap.PAGESIZE

    def for_tensor(t: Any) -> Callable[[], None] | None:
        start = t.data_ptr() - base
        n = t.numel() * t.element_size()
        if n == 0 or start < 0 or start + n > size:
            return None
        lo, hi = start // page * page, -(-(start + n) // page) * page

        def release() -> None:
            try:
                mapping.madvise(mmap.MADV_DONTNEED, lo, min(hi, size) - lo)
            except (OSError, ValueError):
                pass  # closed or not releasable: memory is only an optimisation here
        return release
    return for_tensor


class BufferPool:
    """A few reusable fp32 buffers for tensors computed on the way to the writer (merge).

    A computed tensor is held by the writer until its hash and CRC are done; with fresh
    allocations each time, the C allocator keeps the freed multi-megabyte blocks and memory
    grows with the model. Here a buffer returns to the pool from the writer's ``release``
    callback, so at most ``count`` of them exist: memory stays near ``count`` x largest tensor.
    """

    def __init__(self, nbytes: int, count: int = 3) -> None:
        import threading

        import torch

        self._size = max(1, nbytes // 4) * 4
        self._free = [torch.empty(self._size // 4, dtype=torch.float32) for _ in range(count)]
        self._cond = threading.Condition()

    def take(self, shape: tuple[int, ...]) -> tuple[Any, Callable[[], None]]:
        """(an fp32 tensor of ``shape`` over a free buffer, the callable that gives it back)."""
        import math

        with self._cond:
            while not self._free:
                self._cond.wait()
            buf = self._free.pop()
        n = math.prod(shape)
        if n > buf.numel():
            raise ValueError(f"buffer of {buf.numel()} floats cannot hold {list(shape)}")

        def give_back() -> None:
            with self._cond:
                self._free.append(buf)
                self._cond.notify()
        return buf[:n].view(shape), give_back

    @property
    def nbytes(self) -> int:
        """Bytes each buffer holds."""
        return self._size

    def take_bytes(self, nbytes: int) -> tuple[Any, Callable[[], None]]:
        """(a uint8 tensor of ``nbytes`` over a free buffer, the callable that gives it back):
        room for a tensor of any dtype read from a file (``pread_into``)."""
        import torch

        words, give_back = self.take((-(-nbytes // 4),))
        return words.view(torch.uint8)[:nbytes], give_back


def pread_into(fd: int, offset: int, raw: Any) -> None:
    """Fill the uint8 tensor ``raw`` with the file's bytes at ``offset`` by ``preadv``: the kernel
    copies from the page cache straight into it. Reading a tensor through the map instead costs
    a page fault per 4 KiB (5x the CPU time of this copy for 0.5 GB here) and leaves the pages
    resident until released."""
    import os

    view = memoryview(raw.numpy()).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise OSError(f"short read: {done} of {len(view)} bytes at offset {offset}")
        done += n
