"""Copy bytes while hashing them: one pipelined pass both copies a member and proves the copy.

Proving a kernel copy (``copy_file_range``) used to mean a second pass after the commit: read the
output again and hash it, with nothing left to overlap it. Here the member is copied chunk by
chunk, and each chunk of the *output* is hashed (per tensor, from a short-lived read-only map of
the output's page-cache pages: no copy into this process) by worker threads while the next chunks
are copied. When the output is to be fsynced, the write-back of each chunk is started as soon as
it is copied (``sync_file_range``), so the disk writes while the hashes are computed and the final
fsync finds little left. The digests are those of the bytes the output file holds.

Memory: at most one ``_CHUNK`` window mapped per worker at a time, whatever the member's size.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


_CHUNK = 16 << 20


def _hash_output(fd: int, start: int, n: int, hashers: list[Any], pieces: list[tuple[int, int, int]]) -> None:
    """Update ``hashers[r]`` with output bytes [lo, hi) (relative to ``start``) for each piece."""
    first = start - start % mmap.ALLOCATIONGRANULARITY
    skip = start - first
    with mmap.mmap(fd, skip + n, offset=first, access=mmap.ACCESS_READ) as mm, memoryview(mm) as mv:
        for r, lo, hi in pieces:
            hashers[r].update(mv[skip + lo:skip + hi])  # hashlib releases the GIL on large buffers


def copy_hashed(copy: Callable[[int, int], None], out_fd: int, out_start: int, size: int,
                regions: Sequence[tuple[int, int]], workers: int = 2,
                copied: Callable[[int, int], None] | None = None) -> list[str]:
    """Copy ``size`` bytes chunk by chunk with ``copy(pos, n)``, which must put the source's bytes
    [pos, pos + n) at ``out_start + pos`` of the file ``out_fd``, then tells ``copied(pos, n)``
    (if given; from a helper thread, in order, so that a call that blocks, as starting write-back
    on a busy disk can, never holds up the copy). Returns the sha256 hex of each ``(start, end)``
    region, hashed from the output file's bytes. Regions must be sorted and must not overlap
    (bytes outside every region are copied, not hashed).

    Each region is hashed by one of ``workers`` single-thread queues (the least loaded when the
    region starts), so a region spread over several chunks is hashed in order without any thread
    waiting for another (on a busy machine every hand-off can cost a scheduler time slice), and
    the copy never waits for the hashing."""
    hashers = [hashlib.sha256() for _ in regions]
    queues = [ThreadPoolExecutor(max_workers=1) for _ in range(max(1, workers))]
    notify = ThreadPoolExecutor(max_workers=1) if copied is not None else None
    load = [0] * len(queues)
    owner: dict[int, int] = {}
    futures: list[Future] = []
    r, pos = 0, 0
    try:
        while pos < size:
            n = min(_CHUNK, size - pos)
            copy(pos, n)
            if notify is not None:
                futures.append(notify.submit(copied, pos, n))
            pieces: list[list[tuple[int, int, int]]] = [[] for _ in queues]
            while r < len(regions) and regions[r][0] < pos + n:
                start, end = regions[r]
                if r not in owner:
                    q = owner[r] = load.index(min(load))
                    load[q] += end - start
                lo, hi = max(start, pos), min(end, pos + n)
                if hi > lo:
                    pieces[owner[r]].append((r, lo - pos, hi - pos))
                if end > pos + n:
                    break  # continues in the next chunk, on the same queue
                r += 1
            futures += [queues[q].submit(_hash_output, out_fd, out_start + pos, n, hashers, p)
                        for q, p in enumerate(pieces) if p]
            pos += n
    finally:
        for q in queues + ([notify] if notify else []):  # never return (or raise) while a
            q.shutdown(wait=True)                           # worker still reads the output
    for fut in futures:
        fut.result()
    return [h.hexdigest() for h in hashers]


def kernel_copy(src_fd: int, src_start: int, out_fd: int, out_start: int) -> Callable[[int, int], None]:
    """``copy`` for ``copy_hashed``: bytes of ``src_fd`` at ``src_start`` + pos, copied by the
    kernel (``copy_file_range``, as ``cp`` does; plain reads and writes where it is missing)."""
    def copy(pos: int, n: int) -> None:
        done = 0
        while done < n:
            a, b = src_start + pos + done, out_start + pos + done
            try:
                got = os.copy_file_range(src_fd, out_fd, n - done, a, b)
            except (AttributeError, OSError):
                got = os.pwrite(out_fd, os.pread(src_fd, min(16 << 20, n - done), a), b)
            if got <= 0:
                raise OSError(f"short copy: {done} of {n} bytes at {a}")
            done += got
    return copy
