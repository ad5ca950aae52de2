"""A remote file read by byte ranges: what :class:`~anemoi_ckpt.reader.Checkpoint` uses for a URL.

Only the ranges asked for cross the network. Small reads (the zip directory, headers, JSON
members) go through a cache of the spans fetched so far, each fetch rounded up to
:data:`MIN_FETCH` so neighbouring small reads share one request; tensor reads are fetched exactly
and not cached (the caller owns the bytes). Batches of ranges (every local header of the zip, a
whole section split into chunks) go out concurrently through fsspec's ``cat_ranges``.

``bytes_fetched`` and ``requests`` count what this process asked the server for; the tests
compare them with what a loopback server actually sent.
"""

from __future__ import annotations

import bisect
import io
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import FormatError, IntegrityError
from .urls import describe_error, filesystem

#: Smallest fetch for a cached read: a zip local header, a safetensors length prefix or a small
#: JSON member costs one request of this size rather than several tiny ones.
MIN_FETCH = 16 << 10
#: The tail fetched on open: the zip end records and, for most files, the central directory and
#: the manifest (written last) in the same request.
TAIL = 64 << 10
#: Reads larger than this bypass the cache.
MAX_CACHED = 1 << 20
#: Chunk size for a large read split into concurrent requests.
CHUNK = 8 << 20
#: Ranges closer than this are fetched as one (the gap's bytes cost less than a round trip).
MAX_GAP = 64 << 10


def coalesce(ranges: Sequence[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` ranges with overlapping ones, and those less than ``gap`` apart,
    merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(r for r in ranges if r[1] > r[0]):
        if out and a <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over a URL (enough of the file API for ``zipfile``)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._fs, self._path = filesystem(url)
        try:
            info = self._fs.info(self._path)
        except Exception as e:  # noqa: BLE001 - every backend raises its own types
            raise FormatError(url, f"cannot open ({describe_error(e)})") from None
        if info.get("type") == "directory":
            raise FormatError(url, "is a directory, not an .anc file")
        size = info.get("size")
        if not isinstance(size, int):
            raise FormatError(url, "the server does not report the file's size",
                              "byte-range reads need a Content-Length")
        self.size = size
        self._pos = 0
        self._lock = threading.Lock()
        self._starts: list[int] = []  # sorted starts of the cached spans
        self._spans: dict[int, bytes] = {}
        self.bytes_fetched = 0
        self.requests = 0
        if size:
            start = max(0, size - TAIL)
            self._store(start, self._fetch(start, size))

    # --- fetching ------------------------------------------------------------------------------
    def _check(self, data: bytes, start: int, end: int) -> bytes:
        if len(data) != end - start:
            # A server that ignores Range sends the whole file; a file replaced while open is
            # shorter or longer: either way these are not the bytes asked for.
            raise IntegrityError(self.url, f"asked for bytes {start}-{end}, got {len(data)} bytes",
                                 "the server ignored the range request, or the file changed "
                                 "while being read")
        return data

    def _fetch(self, start: int, end: int) -> bytes:
        try:
            data = self._fs.cat_file(self._path, start=start, end=end)
        except Exception as e:  # noqa: BLE001
            raise FormatError(self.url, f"reading bytes {start}-{end} failed ({describe_error(e)})") from None
        with self._lock:
            self.bytes_fetched += len(data)
            self.requests += 1
        return self._check(data, start, end)

    def fetch_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Fetch several ``(start, end)`` ranges at once (concurrently where the backend can)."""
        return list(self.iter_fetch(ranges))

    def iter_fetch(self, ranges: Sequence[tuple[int, int]]) -> Iterator[bytes]:
        """The ranges' bytes in order, fetched concurrently; a failed range raises only after
        the ranges before it were yielded (a download keeps every byte it got in order)."""
        ranges = [(a, b) for a, b in ranges]
        if len(ranges) <= 1:
            for a, b in ranges:
                yield self._fetch(a, b)
            return
        try:
            out = self._fs.cat_ranges([self._path] * len(ranges), [a for a, _ in ranges],
                                      [b for _, b in ranges], on_error="return")
        except Exception as e:  # noqa: BLE001
            raise FormatError(self.url, f"reading {len(ranges)} byte ranges failed "
                              f"({describe_error(e)})") from None
        for data, (a, b) in zip(out, ranges):
            if isinstance(data, BaseException):
                raise FormatError(self.url, f"reading bytes {a}-{b} failed ({describe_error(data)})")
            with self._lock:
                self.bytes_fetched += len(data)
                self.requests += 1
            yield self._check(data, a, b)

    def _fill(self, jobs: list[tuple[int, int, Any, int]]) -> None:
        """Fetch each ``(start, end, buffer, offset)`` job into ``buffer[offset:]``, concurrently,
        at most 64 requests and 64 MB in flight at once."""
        i = 0
        while i < len(jobs):
            j, size = i, 0
            while j < len(jobs) and j - i < 64 and (j == i or size + jobs[j][1] - jobs[j][0] <= 8 * CHUNK):
                size += jobs[j][1] - jobs[j][0]
                j += 1
            batch = jobs[i:j]
            for (_, _, buf, o), data in zip(batch, self.iter_fetch([(a, b) for a, b, _, _ in batch])):
                buf[o:o + len(data)] = data
            i = j

    def fetch_spans(self, ranges: Sequence[tuple[int, int]]) -> list[tuple[int, bytearray]]:
        """The bytes of many ranges as ``(start, buffer)`` spans: neighbours closer than
        :data:`MAX_GAP` are merged (a few wasted bytes against a round trip each), each span
        fetched in :data:`CHUNK` pieces, all concurrently."""
        out = [(a, bytearray(b - a)) for a, b in coalesce(ranges, MAX_GAP)]
        self._fill([(a + o, a + min(len(buf), o + CHUNK), buf, o) for a, buf in out
                    for o in range(0, len(buf), CHUNK)])
        return out

    def read_into(self, buf: memoryview, start: int) -> None:
        """Fill ``buf`` with the file's bytes from ``start``, in concurrent chunks."""
        n = len(buf)
        self._fill([(start + o, start + min(n, o + CHUNK), buf, o) for o in range(0, n, CHUNK)])

    # --- the cache -----------------------------------------------------------------------------
    def _store(self, start: int, data: bytes) -> None:
        with self._lock:
            if start not in self._spans:
                bisect.insort(self._starts, start)
            self._spans[start] = data

    def _cached(self, start: int, end: int) -> bytes | None:
        with self._lock:
            i = bisect.bisect_right(self._starts, start) - 1
            # Spans may overlap; the few nearest starts at or before ``start`` are enough, since
            # the tail span and MIN_FETCH spans are the only ones stored.
            for j in range(i, max(-1, i - 4), -1):
                s = self._starts[j]
                data = self._spans[s]
                if s + len(data) >= end:
                    return data[start - s:end - s]
        return None

    def prefetch(self, ranges: Sequence[tuple[int, int]]) -> None:
        """Bring small ranges into the cache in one concurrent batch (e.g. every zip local header)."""
        wanted = [(a, min(self.size, max(b, a + MIN_FETCH))) for a, b in sorted(ranges)
                  if b - a <= MAX_CACHED and self._cached(a, min(b, self.size)) is None]
        merged: list[tuple[int, int]] = []
        for a, b in wanted:  # neighbours within one fetch size share a request
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        for (a, _), data in zip(merged, self.fetch_many(merged)):
            self._store(a, data)

    def pread(self, start: int, n: int, *, cache: bool = True) -> bytes:
        """``n`` bytes from ``start`` (fewer only at the end of the file)."""
        end = min(self.size, start + n)
        if end <= start:
            return b""
        hit = self._cached(start, end)
        if hit is not None:
            return hit
        if not cache or end - start > MAX_CACHED:
            return self._fetch(start, end)
        stop = min(self.size, max(end, start + MIN_FETCH))
        data = self._fetch(start, stop)
        self._store(start, data)
        return data[:end - start]

    # --- the file API (for zipfile) -----------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        data = self.pread(self._pos, n)
        self._pos += len(data)
        return data

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
