"""Streams one safetensors member into the zip: tensors go straight to disk as they are added.

The header is only complete once the last tensor is in, so the member starts with a reserved
region that the header fills at the end (:meth:`_MemberStream.set_prefix`). Each tensor's sha256
runs in a worker thread while the calling thread writes it and updates the CRC: hashing and CRC,
not I/O, bound the speed of a save (see docs/format.md, "Digest choice").
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from . import hashing, stformat
from .schema import TensorTable
from .tensorio import FlatTensor
from .zipwrite import ZipWriter

#: Bytes of tensors kept alive only for a pending hash; beyond it the writer waits.
_MAX_PENDING = 512 << 20


class TensorSectionWriter:
    def __init__(self, zw: ZipWriter, member: str, pool: ThreadPoolExecutor, *,
                 reserve: int, on_bytes: Callable[[int], None] | None = None) -> None:
        self._stream = zw.open_member(member)
        reserve = max(64, reserve + (-reserve) % 64)
        self._stream.reserve(reserve)
        self._pool = pool
        self._entries: list[stformat.TensorEntry] = []
        self._futures: dict[str, Future[str]] = {}
        self._pending: collections.deque[tuple[Future[str], int]] = collections.deque()
        self._pending_bytes = 0
        self._pos = 0
        self.aliases: dict[str, str] = {}
        self._on_bytes = on_bytes

    @property
    def names(self) -> set[str]:
        return set(self._futures) | set(self.aliases)

    def add(self, name: str, flat: FlatTensor) -> None:
        n = flat.nbytes
        self._entries.append(stformat.TensorEntry(name, flat.code, flat.shape, self._pos, self._pos + n))
        # The future holds ``flat`` (and so the tensor) until its digest is done.
        fut = self._pool.submit(hashing.sha256_hex, flat.data)
        self._futures[name] = fut
        self._pending.append((fut, n))
        self._pending_bytes += n
        if n:
            self._stream.write(flat.data)
        self._pos += n
        if self._on_bytes:
            self._on_bytes(n)
        while self._pending_bytes > _MAX_PENDING and self._pending:
            done, size = self._pending.popleft()
            done.result()
            self._pending_bytes -= size

    def add_alias(self, alias: str, target: str) -> None:
        self.aliases[alias] = target

    def digests(self) -> dict[str, str]:
        return {name: fut.result() for name, fut in self._futures.items()}

    def close(self) -> tuple[TensorTable, str, int, list[stformat.TensorEntry]]:
        """Write the header, close the member. Returns (table, section digest, size, entries)."""
        prefix = stformat.padded_header(stformat.header_json(self._entries), self._stream._reserved)
        self._stream.set_prefix(prefix)
        size = self._stream.record.size
        self._stream.close()
        digests = self.digests()
        header_hex = hashlib.sha256(prefix).hexdigest()
        table = TensorTable(count=len(self._entries), header_digest=header_hex, digests=digests,
                            aliases=dict(self.aliases))
        digest = hashing.section_digest(header_hex, (digests[e.name] for e in self._entries))
        return table, digest, size, list(self._entries)


def exact_reserve(specs: list[tuple[str, str, tuple[int, ...], int]]) -> int:
    """Header size for tensors known in advance (name, code, shape, nbytes), so a one-shot save
    reserves exactly the right room and never moves data."""
    pos = 0
    entries = []
    for name, code, shape, n in specs:
        entries.append(stformat.TensorEntry(name, code, shape, pos, pos + n))
        pos += n
    return stformat.header_size_for(len(stformat.header_json(entries)))
