"""A minimal ZIP writer for ``.anc``: every member STORED, every payload 64-byte aligned.

Python's ``zipfile`` cannot pad local headers to align member data, and buffers nothing we need, so
the container writes its own (small) subset of the format: PKWARE APPNOTE 6.3, STORED only, UTF-8
names, ZIP64 records only where a size or offset needs them. Alignment is done the way Android's
``zipalign`` does it: an extra field (id 0xD935) in the local header whose length pads the data to
the boundary. Every local header reserves room for a ZIP64 extra field, because a streamed member's
size is unknown when its header is written; the header is patched in place when the member closes
(the output is always a seekable temporary file).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from .hashing import crc32_combine

ALIGNMENT = 64
_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_EOCD_SIG = 0x06054B50
_EOCD64_SIG = 0x06064B50
_EOCD64_LOC_SIG = 0x07064B50
_ALIGN_EXTRA_ID = 0xD935
_ZIP64_EXTRA_ID = 0x0001
_U32_MAX = 0xFFFFFFFF
_U16_MAX = 0xFFFF
_FLAG_UTF8 = 0x0800
_DOS_TIME = 0  # 00:00:00
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01: fixed, so equal inputs give equal bytes
_VERSION_NEEDED = 45  # ZIP64
_VERSION_MADE_BY = (3 << 8) | 45  # Unix, 4.5
_EXTERNAL_ATTR = (0o100644 & 0xFFFF) << 16
_LOCAL_FIXED = 30
_ZIP64_LOCAL_LEN = 20  # 2 id + 2 size + 8 uncompressed + 8 compressed
_ALIGN_MIN = 6  # 2 id + 2 size + 2 alignment value


@dataclass
class MemberRecord:
    name: str
    header_offset: int
    data_offset: int
    size: int
    crc: int


def _align_extra(length: int) -> bytes:
    """An alignment extra field of exactly ``length`` bytes (>= 6)."""
    return struct.pack("<HHH", _ALIGN_EXTRA_ID, length - 4, ALIGNMENT) + b"\0" * (length - _ALIGN_MIN)


class ZipWriter:
    """Writes STORED, aligned members one after another into a seekable binary file."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._members: list[MemberRecord] = []
        self._names: set[str] = set()
        self._open: _MemberStream | None = None
        self._pos = fh.tell()

    @property
    def members(self) -> list[MemberRecord]:
        return list(self._members)

    def open_member(self, name: str) -> "_MemberStream":
        if self._open is not None:
            raise RuntimeError(f"member {self._open.record.name} is still open")
        if name in self._names:
            raise ValueError(f"duplicate member name {name!r}")
        parts = name.split("/")
        if "\\" in name or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in name):
            raise ValueError(f"unsafe member name {name!r}")
        encoded = name.encode("utf-8")
        offset = self._pos
        # Extra = reserved ZIP64 block + alignment block sized so the data starts on a boundary.
        fixed_end = offset + _LOCAL_FIXED + len(encoded) + _ZIP64_LOCAL_LEN
        pad = (-(fixed_end + _ALIGN_MIN)) % ALIGNMENT + _ALIGN_MIN
        extra_len = _ZIP64_LOCAL_LEN + pad
        header = self._local_header(encoded, 0, 0, extra_len) + encoded + b"\0" * extra_len
        self._fh.write(header)
        data_offset = offset + len(header)
        assert data_offset % ALIGNMENT == 0
        self._names.add(name)
        record = MemberRecord(name, offset, data_offset, 0, 0)
        self._open = _MemberStream(self, record, extra_len, len(encoded))
        self._pos = data_offset
        return self._open

    def write_member(self, name: str, data: bytes | memoryview) -> MemberRecord:
        with self.open_member(name) as m:
            m.write(data)
        return self._members[-1]

    @staticmethod
    def _local_header(encoded: bytes, crc: int, size: int, extra_len: int) -> bytes:
        return struct.pack("<IHHHHHIIIHH", _LOCAL_SIG, _VERSION_NEEDED, _FLAG_UTF8, 0, _DOS_TIME,
                           _DOS_DATE, crc, size, size, len(encoded), extra_len)

    def _close_member(self, stream: "_MemberStream") -> None:
        rec = stream.record
        end = rec.data_offset + rec.size
        encoded = rec.name.encode("utf-8")
        big = rec.size >= _U32_MAX
        if big:
            zip64 = struct.pack("<HHQQ", _ZIP64_EXTRA_ID, 16, rec.size, rec.size)
            extra = zip64 + _align_extra(stream.extra_len - _ZIP64_LOCAL_LEN)
        else:
            extra = _align_extra(stream.extra_len)
        size32 = _U32_MAX if big else rec.size
        header = self._local_header(encoded, rec.crc, size32, stream.extra_len) + encoded + extra
        self._fh.seek(rec.header_offset)
        self._fh.write(header)
        self._fh.seek(end)
        self._pos = end
        self._members.append(rec)
        self._open = None

    def finish(self) -> None:
        """Write the central directory and end records. The file is complete afterwards."""
        if self._open is not None:
            raise RuntimeError(f"member {self._open.record.name} is still open")
        cd_offset = self._pos
        parts = []
        for rec in self._members:
            encoded = rec.name.encode("utf-8")
            z64 = []
            size32 = rec.size
            off32 = rec.header_offset
            if rec.size >= _U32_MAX:
                z64 += [rec.size, rec.size]
                size32 = _U32_MAX
            if rec.header_offset >= _U32_MAX:
                z64.append(rec.header_offset)
                off32 = _U32_MAX
            extra = struct.pack(f"<HH{len(z64)}Q", _ZIP64_EXTRA_ID, 8 * len(z64), *z64) if z64 else b""
            parts.append(struct.pack("<IHHHHHHIIIHHHHHII", _CENTRAL_SIG, _VERSION_MADE_BY,
                                     _VERSION_NEEDED, _FLAG_UTF8, 0, _DOS_TIME, _DOS_DATE, rec.crc,
                                     size32, size32, len(encoded), len(extra), 0, 0, 0,
                                     _EXTERNAL_ATTR, off32) + encoded + extra)
        cd = b"".join(parts)
        self._fh.write(cd)
        cd_end = cd_offset + len(cd)
        n = len(self._members)
        need64 = n >= _U16_MAX or len(cd) >= _U32_MAX or cd_offset >= _U32_MAX
        if need64:
            self._fh.write(struct.pack("<IQHHIIQQQQ", _EOCD64_SIG, 44, _VERSION_MADE_BY,
                                       _VERSION_NEEDED, 0, 0, n, n, len(cd), cd_offset))
            self._fh.write(struct.pack("<IIQI", _EOCD64_LOC_SIG, 0, cd_end, 1))
        self._fh.write(struct.pack("<IHHHHIIH", _EOCD_SIG, 0, 0, min(n, _U16_MAX),
                                   min(n, _U16_MAX), min(len(cd), _U32_MAX),
                                   min(cd_offset, _U32_MAX), 0))


class _MemberStream:
    """File-like handle for the member being written; computes its CRC-32 as bytes go by."""

    def __init__(self, zw: ZipWriter, record: MemberRecord, extra_len: int, name_len: int) -> None:
        self._zw = zw
        self.record = record
        self.extra_len = extra_len
        self.name_len = name_len
        self._reserved = 0

    def write(self, data: bytes | memoryview, *, crc: bool = True) -> int:
        """Append ``data``. With ``crc=False`` the caller computes the CRC elsewhere (a thread
        beside the writer) and sets ``record.crc`` before closing."""
        if crc:
            self.record.crc = zlib.crc32(data, self.record.crc)
        n = self._zw._fh.write(data)
        self.record.size += len(data) if n is None else n
        return n

    def copy_from(self, src_fd: int, offset: int, size: int, crc: int) -> None:
        """Append ``size`` bytes of another file, copied by the kernel (``copy_file_range``:
        no pass through this process), whose CRC-32 ``crc`` the caller already knows."""
        fh = self._zw._fh
        fh.flush()
        out_fd = fh.fileno()
        dst = self.record.data_offset + self.record.size
        done = 0
        while done < size:
            try:
                n = os.copy_file_range(src_fd, out_fd, size - done, offset + done, dst + done)
            except (AttributeError, OSError):
                n = os.pwrite(out_fd, os.pread(src_fd, min(16 << 20, size - done), offset + done), dst + done)
            if n <= 0:
                raise OSError(f"short copy: {done} of {size} bytes")
            done += n
        self.record.crc = crc if self.record.size == 0 else crc32_combine(self.record.crc, crc, size)
        self.record.size += size
        fh.seek(dst + size)

    def tell(self) -> int:
        """Position within the member."""
        return self.record.size

    def reserve(self, n: int) -> None:
        """Reserve ``n`` bytes at the start of the member, to be filled by :meth:`set_prefix`.

        A safetensors header must precede the tensors but is only known once every tensor has
        been added; reserving room for it lets the tensors stream straight into place.
        """
        if self.record.size or self._reserved:
            raise RuntimeError("reserve() must come before any write")
        self._zw._fh.write(b"\0" * n)
        self._reserved = n
        self.record.size = n

    def set_prefix(self, prefix: bytes) -> None:
        """Fill the reserved region with ``prefix``; if it is longer, move the data up first.

        The move copies in bounded chunks from the end backwards, so memory stays small whatever
        the member's size. The CRC is recombined from the prefix's and the data's.
        """
        fh = self._zw._fh
        reserved, data_len = self._reserved, self.record.size - self._reserved
        if len(prefix) < reserved:
            raise ValueError("prefix shorter than the reserved region: pad it")
        start = self.record.data_offset + reserved
        delta = len(prefix) - reserved
        fh.flush()
        if delta:
            fd = fh.fileno()
            end = start + data_len
            chunk = 16 << 20
            while end > start:
                lo = max(start, end - chunk)
                os.pwrite(fd, os.pread(fd, end - lo, lo), lo + delta)
                end = lo
        fh.seek(self.record.data_offset)
        fh.write(prefix)
        self.record.crc = crc32_combine(zlib.crc32(prefix), self.record.crc, data_len)
        self.record.size = len(prefix) + data_len
        self._reserved = len(prefix)
        fh.seek(self.record.data_offset + self.record.size)

    def close(self) -> None:
        self._zw._close_member(self)

    def __enter__(self) -> "_MemberStream":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
