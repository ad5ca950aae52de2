"""Digests: per-tensor sha256, the tensor-section digest, ``content_id`` and CRC-32 combination.

Pure functions over bytes and digests; no file I/O. The algorithms are specified in docs/format.md
("Digests") and any change here is a format change.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

CONTENT_ID_DOMAIN = b"anemoi-ckpt content-id v1\n"
SECTION_DOMAIN = b"anemoi-ckpt safetensors-section v1\n"
PREFIX = "sha256:"


def sha256_hex(data: bytes | memoryview) -> str:
    # hashlib releases the GIL for buffers over 2 KiB, so callers run this in worker threads.
    return hashlib.sha256(data).hexdigest()


def tagged(hexdigest: str) -> str:
    return PREFIX + hexdigest


def untag(digest: str) -> str:
    if not digest.startswith(PREFIX):
        raise ValueError(f"unsupported digest {digest[:16]!r} (expected 'sha256:<hex>')")
    return digest[len(PREFIX):]


def _u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def content_id(entries: Iterable[tuple[str, str, Sequence[int], str]]) -> str:
    """Hash over the logical tensors (name, dtype code, shape, sha256 hex of bytes).

    Entries are sorted by the UTF-8 bytes of the name and length-prefixed, so no name can collide
    with another encoding. Aliases are logical tensors too: a file with an alias and one holding
    two copies of the same bytes have the same content id.
    """
    h = hashlib.sha256(CONTENT_ID_DOMAIN)
    for name, code, shape, hexdigest in sorted(entries, key=lambda e: e[0].encode("utf-8")):
        n = name.encode("utf-8")
        c = code.encode("ascii")
        h.update(_u64(len(n)) + n + _u64(len(c)) + c + _u64(len(shape)))
        h.update(b"".join(_u64(d) for d in shape))
        h.update(bytes.fromhex(hexdigest))
    return tagged(h.hexdigest())


def section_digest(header_hex: str, tensor_hexes_in_offset_order: Iterable[str]) -> str:
    """Digest of a safetensors member, from its header digest and its tensors' digests.

    Covers every byte of the member (the header including its length prefix and padding, then
    each tensor's bytes, which tile the rest) while needing only the per-tensor digests that the
    content id needs anyway: one hashing pass over the payload, not two.
    """
    h = hashlib.sha256(SECTION_DOMAIN)
    h.update(bytes.fromhex(header_hex))
    for hx in tensor_hexes_in_offset_order:
        h.update(bytes.fromhex(hx))
    return tagged(h.hexdigest())


# --- CRC-32 combination (zlib's crc32_combine): the CRC of A||B from crc(A), crc(B) and len(B).
# Needed once per streamed tensor member, whose header is written after its data.

def _gf2_times(mat: list[int], vec: int) -> int:
    s = 0
    i = 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2
