"""The compressed tensor encoding of format 1.2 as pure functions: no file, no I/O.

A tensor's logical bytes (little-endian, C order, as an uncompressed section stores them) are cut
into chunks of ``chunk_size`` bytes (the last one shorter); each chunk is transformed (byte planes
for floating-point dtypes) and compressed as one independent zstd frame. Independent frames let a
reader decode one tensor, or one chunk, alone, and decode several in parallel threads (zstandard
releases the GIL). docs/format.md, "Compressed tensor sections (1.2)", is the specification.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from .dtypes import ITEMSIZE

CODEC = "zstd"
#: The byte-plane transform and the dtypes it applies to (their exponent bytes compress; the
#: bytes of integers, bools and 8-bit floats are left as they are).
BYTE_PLANES = "byte-planes"
PLANE_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
#: Level 1, not zstd's usual 3: on byte planes it compresses better (bf16 0.684 vs 0.709) and about
#: twice as fast; higher levels spend effort on matches in mantissa noise (benchmarks/README.md).
DEFAULT_LEVEL = 1
DEFAULT_CHUNK = 1 << 20
#: Chunk sizes a reader accepts: multiples of 8 (every item size divides it) within these bounds,
#: so a declared chunk never makes a reader allocate more than 64 MiB per frame.
MIN_CHUNK, MAX_CHUNK = 4096, 64 << 20
MAX_LEVEL = 22


class FrameError(ValueError):
    """A frame that does not decode to the bytes declared for it (the reason, one line)."""


@dataclass(frozen=True)
class Compression:
    """What a writer is asked for: ``zstd`` at ``level`` with ``chunk_size`` byte chunks."""

    level: int = DEFAULT_LEVEL
    chunk_size: int = DEFAULT_CHUNK

    def encoding(self, frames: list[int], size: int) -> dict[str, Any]:
        """The manifest's ``encoding`` object for a section written with these settings."""
        return {"codec": CODEC, "level": self.level, "transform": BYTE_PLANES,
                "chunk_size": self.chunk_size, "size": size, "frames": frames}


def parse_compress(spec: str | Compression | None) -> Compression | None:
    """``"zstd"``, ``"zstd:LEVEL"`` (1..22) -> :class:`Compression`; ``"none"`` -> None; a
    :class:`Compression` (another chunk size) is checked and kept. Raises ValueError naming what
    is wrong."""
    if spec is None or spec == "none":
        return None
    if isinstance(spec, Compression):
        if not 1 <= spec.level <= MAX_LEVEL or spec.chunk_size % 8 \
                or not MIN_CHUNK <= spec.chunk_size <= MAX_CHUNK:
            raise ValueError(f"invalid {spec}: level 1..{MAX_LEVEL}, chunk_size a multiple of 8 "
                             f"in {MIN_CHUNK}..{MAX_CHUNK}")
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"compress must be 'zstd', 'zstd:LEVEL' or 'none', not {spec!r}")
    codec, _, level = spec.partition(":")
    if codec != CODEC:
        raise ValueError(f"unknown compression {spec!r} (zstd, zstd:LEVEL or none)")
    if not level:
        return Compression()
    if not level.isdigit() or not 1 <= int(level) <= MAX_LEVEL:
        raise ValueError(f"zstd level must be 1..{MAX_LEVEL}, not {level!r}")
    return Compression(level=int(level))


def frame_count(nbytes: int, chunk_size: int) -> int:
    """Frames of a tensor of ``nbytes`` logical bytes: ceil(nbytes / chunk_size); 0 when empty."""
    return -(-nbytes // chunk_size)


def chunk_lengths(nbytes: int, chunk_size: int) -> list[int]:
    """Logical bytes in each frame of a tensor, in order."""
    full, rest = divmod(nbytes, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def transform_of(dtype: str) -> int:
    """Item size the byte-plane transform uses for ``dtype``; 1 (no transform) for the others."""
    return ITEMSIZE[dtype] if dtype in PLANE_DTYPES else 1


def to_planes(chunk: Any, k: int) -> Any:
    """n items of k bytes -> k planes, plane j = byte j of every item in order (a copy)."""
    a = np.frombuffer(chunk, dtype=np.uint8)
    if k == 1:
        return a
    # one strided copy per plane: 3-5x faster than numpy's transposed copy (a.reshape(-1, k).T)
    m = len(a) // k
    out = np.empty(len(a), dtype=np.uint8)
    for j in range(k):
        out[j * m:(j + 1) * m] = a[j::k]
    return out


def from_planes(planes: Any, k: int, out: Any) -> None:
    """The inverse of :func:`to_planes`, written into ``out`` (a writable byte buffer)."""
    src = np.frombuffer(planes, dtype=np.uint8)
    dst = np.frombuffer(out, dtype=np.uint8)
    if k == 1:
        dst[:] = src
        return
    m = len(src) // k
    for j in range(k):
        dst[j::k] = src[j * m:(j + 1) * m]


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # A compression context is not thread-safe and costs to build: one per thread and level.
    cache = getattr(_local, "c", None)
    if cache is None:
        cache = _local.c = {}
    c = cache.get(level)
    if c is None:
        # The content size lets a reader check a frame before allocating; the checksum (32 bits
        # of XXH64, far faster than the sha256 of the tensor) makes a damaged frame fail to
        # decode instead of decoding to other bytes.
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True,
                                                    write_checksum=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode_chunk(chunk: Any, k: int, level: int) -> bytes:
    """One frame: ``chunk`` (logical bytes) transformed with item size ``k`` and compressed."""
    return _compressor(level).compress(to_planes(chunk, k))


def decode_chunk(frame: Any, k: int, out: Any) -> None:
    """Decode one frame into ``out``, whose length is the chunk's declared logical size.

    The frame header must declare exactly that size (checked before anything is allocated) and a
    content checksum (zstd checks it), the frame must decode to exactly that many bytes, and
    nothing may follow the frame."""
    want = len(out)
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise FrameError(f"not a zstd frame ({e})") from None
    if params.content_size != want:
        raise FrameError(f"frame declares {params.content_size} bytes, the index {want}")
    if not params.has_checksum:
        raise FrameError("frame without a content checksum")
    try:  # one-shot: allocates the declared size (checked above), refuses trailing bytes
        data = _decompressor().decompress(frame, max_output_size=want, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise FrameError(f"zstd error ({e})") from None
    if len(data) != want:
        raise FrameError(f"frame decodes to {len(data)} bytes, not the {want} declared")
    from_planes(data, k, out)
