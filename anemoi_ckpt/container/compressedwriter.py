"""Writing a compressed tensor section (format 1.2; the layout is in :mod:`.compressed`).

Each tensor's chunks are transformed and compressed in the writer's thread pool, a bounded
number ahead of the write position, and written in order; the logical bytes are hashed exactly
as for an uncompressed section (so the digests agree), the stored bytes CRC'd as they are written.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import codec, hashing, stformat
from .schema import TensorTable
from .tensorio import FlatTensor
from .tensorsection import TensorSectionWriter

#: Frames compressed ahead of the write position (each at most one chunk of input and output).
_MAX_AHEAD = 2 * (os.cpu_count() or 1) + 2


class CompressedSectionWriter(TensorSectionWriter):
    """Streams one compressed section into the zip: each tensor's chunks are transformed and
    compressed in the writer's pool (a bounded number ahead), written in order, while the logical
    bytes are hashed as for an uncompressed section and the stored bytes CRC'd."""

    def __init__(self, *args: Any, compression: codec.Compression, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._compression = compression
        self._frames: list[int] = []
        self._ahead: collections.deque[tuple[Future[bytes], Callable[[], None] | None]] = \
            collections.deque()

    def add(self, name: str, flat: FlatTensor, release: Callable[[], None] | None = None) -> None:
        n = flat.nbytes
        self._entries.append(stformat.TensorEntry(name, flat.code, flat.shape, self._pos, self._pos + n))
        hash_fut = self._pool.submit(hashing.sha256_hex, flat.data)
        self._futures[name] = hash_fut
        k, level, chunk = codec.transform_of(flat.code), self._compression.level, self._compression.chunk_size
        starts = list(range(0, n, chunk))
        for j, a in enumerate(starts):
            fut = self._pool.submit(codec.encode_chunk, flat.data[a:a + chunk], k, level)
            last = j == len(starts) - 1
            self._ahead.append((fut, (lambda: _when_done(hash_fut, release)) if last and release else None))
            while len(self._ahead) > _MAX_AHEAD:
                self._write_next()
        if not starts and release is not None:
            _when_done(hash_fut, release)
        self._pos += n
        if self._on_bytes:
            self._on_bytes(n)

    def _write_next(self) -> None:
        fut, after = self._ahead.popleft()
        frame = fut.result()
        self._stream.write(frame)  # CRC over the stored bytes, in order
        self._frames.append(len(frame))
        if after is not None:
            after()

    def close(self) -> tuple[TensorTable, str, int, list[stformat.TensorEntry]]:
        while self._ahead:
            self._write_next()
        table, digest, size, entries, head = self._finish()
        self.encoding = self._compression.encoding(self._frames, head + self._pos)
        return table, digest, size, entries


def _when_done(fut: Future[Any], fn: Callable[[], None]) -> None:
    fut.add_done_callback(lambda _: fn())
