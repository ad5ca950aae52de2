"""Streams one safetensors member into the zip: tensors go straight to disk as they are added.

The header is only complete once the last tensor is in, so the member starts with a reserved
region that the header fills at the end (:meth:`_MemberStream.set_prefix`). The calling thread
only writes; each tensor's sha256 runs in a worker pool and the member's running CRC-32 in one
more thread (in order, so no CRC combination per tensor is needed): hashing and CRC, not I/O,
bound the speed of a save (see docs/format.md, "Digest choice").
"""

from __future__ import annotations

import collections
import hashlib
import threading
import zlib
from collections.abc import Callable
from typing import Any
from concurrent.futures import Future, ThreadPoolExecutor

from . import hashing, stformat
from .schema import TensorTable
from .tensorio import FlatTensor
from .zipwrite import ZipWriter

#: Bytes of tensors kept alive only for a pending hash; beyond it the writer waits.
_MAX_PENDING = 32 << 20  # in-flight bytes awaiting hash/CRC: bounds memory, keeps the overlap


class TensorSectionWriter:
    def __init__(self, zw: ZipWriter, member: str, pool: ThreadPoolExecutor,
                 crc_pool: ThreadPoolExecutor, *, reserve: int,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self._stream = zw.open_member(member)
        reserve = max(64, reserve + (-reserve) % 64)
        self._stream.reserve(reserve)
        self._pool = pool
        self._crc_pool = crc_pool  # exactly one worker: CRC steps run in submission order
        self._crc = 0
        self._crc_last: Future[None] | None = None
        self._entries: list[stformat.TensorEntry] = []
        self._futures: dict[str, Future[str]] = {}
        self._pending: collections.deque[tuple[Future[str], Future[None] | None, int]] = collections.deque()
        self._pending_bytes = 0
        self._pos = 0
        self.aliases: dict[str, str] = {}
        self._on_bytes = on_bytes

    @property
    def names(self) -> set[str]:
        return set(self._futures) | set(self.aliases)

    def add(self, name: str, flat: FlatTensor, release: Callable[[], None] | None = None) -> None:
        """``release`` runs once the tensor's bytes are written, hashed and CRC'd: a source
        backed by a file map drops those pages then, so memory stays bounded."""
        n = flat.nbytes
        self._entries.append(stformat.TensorEntry(name, flat.code, flat.shape, self._pos, self._pos + n))
        # The future holds ``flat`` (and so the tensor) until its digest is done.
        fut = self._pool.submit(hashing.sha256_hex, flat.data)
        self._futures[name] = fut
        crc_fut = None
        if n:
            self._stream.write(flat.data, crc=False)
            crc_fut = self._crc_last = self._crc_pool.submit(self._crc_step, flat.data)
        if release is not None:
            _after_all([f for f in (fut, crc_fut) if f is not None], release)
        self._pending.append((fut, crc_fut, n))
        self._pending_bytes += n
        self._pos += n
        if self._on_bytes:
            self._on_bytes(n)
        while self._pending_bytes > _MAX_PENDING and self._pending:
            done, crc_done, size = self._pending.popleft()
            done.result()
            if crc_done is not None:
                crc_done.result()
            self._pending_bytes -= size

    def _crc_step(self, data: memoryview) -> None:
        # zlib.crc32 releases the GIL on large buffers: it runs beside the writes and the hashes.
        self._crc = zlib.crc32(data, self._crc)

    def add_alias(self, alias: str, target: str) -> None:
        self.aliases[alias] = target

    def digests(self) -> dict[str, str]:
        return {name: fut.result() for name, fut in self._futures.items()}

    def close(self) -> tuple[TensorTable, str, int, list[stformat.TensorEntry]]:
        """Write the header, close the member. Returns (table, section digest, size, entries)."""
        if self._crc_last is not None:
            self._crc_last.result()  # FIFO: the last step done means all are
        self._stream.record.crc = self._crc
        return self._finish()[:4]

    def _finish(self) -> tuple[TensorTable, str, int, list[stformat.TensorEntry], int]:
        """Write the header into the reserved region and close the member: (table, section
        digest, stored size, entries, header length). Shared by the compressed writer, whose
        digests are those of the same logical bytes."""
        prefix = stformat.padded_header(stformat.header_json(self._entries), self._stream._reserved)
        self._stream.set_prefix(prefix)
        size = self._stream.record.size
        self._stream.close()
        digests = self.digests()
        header_hex = hashlib.sha256(prefix).hexdigest()
        table = TensorTable(count=len(self._entries), header_digest=header_hex, digests=digests,
                            aliases=dict(self.aliases))
        digest = hashing.section_digest(header_hex, (digests[e.name] for e in self._entries))
        return table, digest, size, list(self._entries), len(prefix)


def _after_all(futures: list[Any], fn: Callable[[], None]) -> None:
    """Call ``fn`` once every future is done (from whichever thread finishes last)."""
    left = [len(futures)]
    lock = threading.Lock()

    def done(_: Any) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            fn()
    for f in futures:
        f.add_done_callback(done)


def exact_reserve(specs: list[tuple[str, str, tuple[int, ...], int]]) -> int:
    """Header size for tensors known in advance (name, code, shape, nbytes), so a one-shot save
    reserves exactly the right room and never moves data."""
    pos = 0
    entries = []
    for name, code, shape, n in specs:
        entries.append(stformat.TensorEntry(name, code, shape, pos, pos + n))
        pos += n
    return stformat.header_size_for(len(stformat.header_json(entries)))
