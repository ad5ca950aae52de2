"""Compressed tensor sections (format 1.2): the frame index checked and tensors decoded (the
writer: :mod:`.compressedwriter`).

A compressed section is a STORED zip member ``<name>.safetensors-zstd``: the safetensors header
exactly as the uncompressed section has it (``data_offsets`` are logical offsets), then each
tensor's zstd frames in payload order (:mod:`.codec`). The manifest's section entry carries the
frame index (``encoding``). Every digest is over the logical bytes, so a section has the same
digests, and a file the same content id, compressed or not.

Reading takes a ``read(offset, n)`` callable returning a buffer of the file's bytes, so a local
map (zero-copy), a remote file (one ranged request per tensor: only its frames) and plain
``pread`` share one decoder. Memory stays bounded by the tensor decoded (or one chunk, hashing).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from . import codec, stformat
from ..errors import FormatError, IntegrityError, VersionError

Read = Callable[[int, int], Any]


def frame_bound(n: int) -> int:
    """The largest stored size a frame of ``n`` logical bytes may declare: zstd's worst case
    (incompressible input: raw blocks) plus headroom. Larger declarations are refused."""
    return n + (n >> 8) + 192


@dataclass(frozen=True)
class TensorFrames:
    """Where one tensor's frames lie: its first frame's file offset, each frame's stored size
    and logical length, and the byte-plane item size (1: no transform)."""

    offset: int
    sizes: tuple[int, ...]
    lengths: tuple[int, ...]
    k: int

    @property
    def stored(self) -> int:
        return sum(self.sizes)


def check_encoding(path: str, label: str, enc: Any) -> dict[str, Any]:
    """The ``encoding`` object of a section entry, its fields' types and limits checked."""
    if not isinstance(enc, dict):
        raise FormatError(path, "encoding is not an object", section=label)
    if enc.get("codec") != codec.CODEC or enc.get("transform") != codec.BYTE_PLANES:
        raise VersionError(path, f"unknown encoding {str(enc.get('codec'))[:40]!r} with transform "
                           f"{str(enc.get('transform'))[:40]!r}", "upgrade anemoi-ckpt to read "
                           "this file", section=label)
    chunk, size, frames = enc.get("chunk_size"), enc.get("size"), enc.get("frames")
    if type(chunk) is not int or chunk % 8 or not codec.MIN_CHUNK <= chunk <= codec.MAX_CHUNK:
        raise FormatError(path, f"encoding chunk_size {str(chunk)[:40]} is not a multiple of 8 in "
                          f"{codec.MIN_CHUNK}..{codec.MAX_CHUNK}", "the file is damaged", section=label)
    if type(size) is not int or size < 8:
        raise FormatError(path, "encoding size is not an integer >= 8", "the file is damaged",
                          section=label)
    if type(frames) is not list or not all(type(f) is int and f > 0 for f in frames):
        raise FormatError(path, "encoding frames must be a list of positive integers",
                          "the file is damaged", section=label)
    return enc


def frame_layout(path: str, label: str, entries: list[stformat.TensorEntry], enc: dict[str, Any],
                 base: int, stored: int) -> dict[str, TensorFrames]:
    """Each tensor's frames, from the index: ``base`` is the file offset of the first frame and
    ``stored`` the member's bytes after the header. The frames must tile them exactly, each tensor
    having ceil(nbytes / chunk_size) frames, none larger than :func:`frame_bound` of its chunk."""
    chunk, frames = enc["chunk_size"], enc["frames"]

    def damaged(what: str) -> FormatError:
        return FormatError(path, f"frame index: {what}", "the file is damaged", section=label)

    need = sum(codec.frame_count(e.nbytes, chunk) for e in entries)
    if need != len(frames):
        raise damaged(f"{len(frames)} frames listed, the tensors need {need}")
    if sum(frames) != stored:
        raise damaged(f"frames hold {sum(frames)} bytes, the member {stored} after its header")
    out: dict[str, TensorFrames] = {}
    i, pos = 0, base
    for e in sorted(entries, key=lambda e: e.begin):
        lengths = codec.chunk_lengths(e.nbytes, chunk)
        sizes = tuple(frames[i:i + len(lengths)])
        for n, s in zip(lengths, sizes):
            if s > frame_bound(n):
                raise damaged(f"tensor {e.name!r}: a frame of {s} bytes for a chunk of {n}")
        out[e.name] = TensorFrames(pos, sizes, tuple(lengths), codec.transform_of(e.dtype))
        i += len(lengths)
        pos += sum(sizes)
    return out


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _decode_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                       thread_name_prefix="anc-zstd")
        return _pool


def _frames(tf: TensorFrames, data: Any) -> Iterable[tuple[int, Any, int, int]]:
    """(index, frame bytes, logical start, logical length) of each frame in ``data``."""
    pos = lstart = 0
    for i, (s, n) in enumerate(zip(tf.sizes, tf.lengths)):
        yield i, data[pos:pos + s], lstart, n
        pos += s
        lstart += n


def decode_into(read: Read, tf: TensorFrames, out: memoryview) -> None:
    """Decode a tensor into ``out`` (its logical bytes), fetching its frames in one read and
    decoding them in parallel threads. Raises :class:`codec.FrameError` ("frame i: ...")."""
    if not tf.sizes:
        return
    data = memoryview(read(tf.offset, tf.stored))

    def one(job: tuple[int, Any, int, int]) -> None:
        i, frame, start, n = job
        try:
            codec.decode_chunk(frame, tf.k, out[start:start + n])
        except codec.FrameError as e:
            raise codec.FrameError(f"frame {i}: {e}") from None
    jobs = list(_frames(tf, data))
    if len(jobs) == 1:
        one(jobs[0])
    else:
        futures = [_decode_pool().submit(one, job) for job in jobs]
        # No frame may still be read after this returns or raises: the caller may close the map
        # (or the file be replaced under it), and a thread reading it then would crash the process.
        # So on the first error the frames not yet started are cancelled and the running ones
        # waited for, and only then is the error raised.
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() is not None for f in done):
            for f in futures:
                f.cancel()
            wait(futures)
        for f in futures:
            if not f.cancelled():
                f.result()


def digest(read: Read, tf: TensorFrames) -> str:
    """sha256 hex of a tensor's logical bytes, decoded frame by frame (memory: one chunk)."""
    h = hashlib.sha256()
    if tf.sizes:
        buf = bytearray(max(tf.lengths))
        pos = tf.offset
        for i, (s, n) in enumerate(zip(tf.sizes, tf.lengths)):
            out = memoryview(buf)[:n]
            try:
                codec.decode_chunk(read(pos, s), tf.k, out)
            except codec.FrameError as e:
                raise codec.FrameError(f"frame {i}: {e}") from None
            h.update(out)
            pos += s
    return h.hexdigest()


def frame_problem(path: str, label: str, name: str, e: codec.FrameError) -> IntegrityError:
    return IntegrityError(path, f"tensor {name!r}: {e}", "the file is damaged", section=label)
