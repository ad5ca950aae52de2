"""Where a :class:`~anemoi_ckpt.reader.Checkpoint` gets its bytes: one interface, two backings.

- :class:`MappedBytes`, a local file: one private (copy-on-write) memory map. Slices and tensor
  views are zero-copy, and a write to a tensor never reaches the file. The map is advised
  ``MADV_RANDOM``: the kernel's default readahead would read megabytes around every small JSON
  member or header (``inspect`` and ``lineage`` must read almost nothing of a large file). Whole
  reads ask for their own ranges.
- :class:`FetchedBytes`, a URL: ranges fetched through :class:`~anemoi_ckpt.container.rangefile.RangeFile`.
  Spans fetched ahead (a section for a model load, named tensors) are kept and served from
  memory.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Sequence
from typing import Any

from .hashing import sha256_hex
from .rangefile import RangeFile


def advise(mm: mmap.mmap | None, how: str, start: int = 0, length: int | None = None) -> None:
    flag = getattr(mmap, how, None)
    if mm is None or flag is None or not hasattr(mm, "madvise"):
        return
    try:
        if length is None:
            mm.madvise(flag)
        else:
            lo = start // mmap.PAGESIZE * mmap.PAGESIZE
            mm.madvise(flag, lo, min(len(mm), start + length) - lo)
    except (OSError, ValueError):
        pass  # advice only


def prefetch(mm: mmap.mmap | None, start: int, length: int) -> None:
    """Ask the kernel to read ``[start, start+length)`` ahead (a tensor or section about to be
    read whole), overriding the map's no-readahead default for that range."""
    if length > 0:
        advise(mm, "MADV_WILLNEED", start, length)


class MappedBytes:
    def __init__(self, fileno: int) -> None:
        self.mm: mmap.mmap | None = mmap.mmap(fileno, 0, access=mmap.ACCESS_COPY)
        advise(self.mm, "MADV_RANDOM")

    def read(self, start: int, n: int) -> bytes:
        return self.mm[start:start + n]  # type: ignore[index]

    def buffer(self, start: int, n: int) -> tuple[Any, int]:
        prefetch(self.mm, start, n)
        return self.mm, start

    def digest(self, start: int, n: int) -> str:
        prefetch(self.mm, start, n)
        view = memoryview(self.mm)[start:start + n]  # type: ignore[arg-type]
        try:
            return sha256_hex(view)
        finally:
            view.release()

    def ahead(self, start: int, n: int) -> None:
        # Normal readahead over a range read whole: MADV_RANDOM pages a full read in a fault at a
        # time (2.7x slower from a cold cache for a 0.9 GB section here; benchmarks/README.md).
        advise(self.mm, "MADV_NORMAL", start, n)

    def ahead_spans(self, spans: Sequence[tuple[int, int]]) -> None:
        for a, b in spans:
            prefetch(self.mm, a, b - a)

    def release(self) -> None:
        # Never mm.close(): torch.frombuffer keeps a reference to the map but no buffer export,
        # so closing would unmap memory that live tensors still point at (a segfault on their
        # next use). Dropping our reference unmaps it as soon as the last tensor is freed.
        self.mm = None


class FetchedBytes:
    mm = None

    def __init__(self, remote: RangeFile) -> None:
        self.remote = remote
        self._spans: list[tuple[int, bytearray]] = []  # fetched ahead: (file offset, bytes)

    def _held(self, start: int, n: int) -> tuple[bytearray, int] | None:
        for base, buf in self._spans:
            if base <= start and start + n <= base + len(buf):
                return buf, start - base
        return None

    def read(self, start: int, n: int) -> bytes:
        held = self._held(start, n)
        if held is not None:
            return bytes(held[0][held[1]:held[1] + n])
        return self.remote.pread(start, n)

    def buffer(self, start: int, n: int) -> tuple[Any, int]:
        held = self._held(start, n)
        if held is not None:
            return held
        buf = bytearray(n)
        self.remote.read_into(memoryview(buf), start)
        return buf, 0

    def digest(self, start: int, n: int) -> str:
        held = self._held(start, n)
        if held is not None:
            return sha256_hex(memoryview(held[0])[held[1]:held[1] + n])
        h = hashlib.sha256()
        chunk = 8 << 20
        for off in range(start, start + n, chunk):
            h.update(self.remote.pread(off, min(chunk, start + n - off), cache=False))
        return h.hexdigest()

    def ahead(self, start: int, n: int) -> None:
        # One transfer in concurrent chunks rather than a request per tensor.
        if self._held(start, n) is None:
            buf = bytearray(n)
            self.remote.read_into(memoryview(buf), start)
            self._spans.append((start, buf))

    def ahead_spans(self, spans: Sequence[tuple[int, int]]) -> None:
        todo = [(a, b) for a, b in spans if b > a and self._held(a, b - a) is None]
        self._spans.extend(self.remote.fetch_spans(todo))

    def release(self) -> None:
        self._spans = []
