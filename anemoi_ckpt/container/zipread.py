"""Reading the zip directory of an ``.anc`` and checking the container rules.

``zipfile`` parses the central directory (it never allocates more than the file holds); this
module adds what ``.anc`` requires and ``zipfile`` does not check: a manifest, every member STORED
and unencrypted, no duplicate names, safe relative names under one root folder, and each member's
data located from its local header and lying between the start of the file and the central
directory without overlapping another member.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import FormatError

#: Member path of the manifest, relative to the root folder (same as ``sections.MANIFEST_PATH``).
_MANIFEST = "manifest.json"

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIG = 0x04034B50


@dataclass(frozen=True)
class Member:
    name: str
    data_offset: int
    size: int
    crc: int


def read_directory(path: str, fh: BinaryIO, file_size: int,
                   require: str = "manifest.json") -> tuple[str, dict[str, Member]]:
    """Return (root folder, members keyed by their path relative to the root).

    ``require`` names the member that identifies the kind of archive expected (``manifest.json``
    for an ``.anc``, ``data.pkl`` for a torch checkpoint)."""
    if file_size == 0:
        raise FormatError(path, "empty file", "not an .anc; was the write interrupted?")
    try:
        zf = zipfile.ZipFile(fh)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, struct.error, EOFError,
            OverflowError, NotImplementedError, UnicodeDecodeError) as e:
        raise FormatError(path, f"not a zip archive or truncated ({e})",
                          "an .anc ends with a zip directory; the file may be incomplete") from None
    # Checked first, so any other zip (a torch.save() file, a zip of anything) gets this message
    # rather than a complaint about whichever container rule it happens to break first.
    if not any(i.filename.count("/") == 1 and i.filename.endswith("/" + require) for i in infos):
        if require == _MANIFEST:
            raise FormatError(path, "no manifest.json in the archive",
                              "not an .anc; for a torch or Lightning .ckpt use 'anemoi-ckpt convert'")
        raise FormatError(path, f"no {require} in the archive", "not a torch checkpoint")
    cd_start: int = zf.start_dir  # members must end before the central directory
    prefetch = getattr(fh, "prefetch", None)
    if prefetch is not None:  # a remote file: every local header in one concurrent batch
        prefetch([(i.header_offset, i.header_offset + _LOCAL.size + len(i.filename.encode("utf-8")))
                  for i in infos if i.header_offset >= 0 and not i.filename.endswith("/")])
    seen: set[str] = set()
    roots: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    members: dict[str, Member] = {}
    for info in infos:
        name = info.filename
        if name in seen:
            raise FormatError(path, f"duplicate member name {name!r}", "the archive was tampered with")
        seen.add(name)
        # A directory entry (written by some zip tools) ends with "/"; its name must be safe too.
        is_dir = name.endswith("/")
        parts = (name[:-1] if is_dir else name).split("/")
        if (name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
                or any(ord(c) < 32 or ord(c) == 127 for c in name)):  # C0 controls and DEL
            raise FormatError(path, f"unsafe member name {name!r}", "the archive was tampered with")
        if is_dir:
            continue  # no data
        if info.flag_bits & 0x1:
            raise FormatError(path, f"member {name!r} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise FormatError(path, f"member {name!r} is compressed (method {info.compress_type})",
                              "members of an .anc are STORED; re-create it with anemoi-ckpt")
        if info.file_size != info.compress_size:
            raise FormatError(path, f"member {name!r}: stored size {info.compress_size} differs "
                                    f"from its size {info.file_size}")
        if "/" not in name:
            raise FormatError(path, f"member {name!r} is outside a root folder")
        root, rel = name.split("/", 1)
        roots.add(root)
        data_offset = _data_offset(path, fh, info, file_size)
        end = data_offset + info.file_size
        if end > cd_start:
            where = "the end of the file" if end > file_size else "the zip directory"
            raise FormatError(path, f"member {name!r} claims {info.file_size} bytes, past {where}",
                              "the file is truncated or damaged")
        spans.append((info.header_offset, end, name))
        members[rel] = Member(name, data_offset, info.file_size, info.CRC)
    if len(roots) != 1:
        shown = ", ".join(repr(r) for r in sorted(roots)[:5])
        raise FormatError(path, f"expected one root folder, found {len(roots)} ({shown})",
                          "not an .anc")
    spans.sort()
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FormatError(path, f"members {an!r} and {bn!r} overlap")
    return roots.pop(), members


def _data_offset(path: str, fh: BinaryIO, info: zipfile.ZipInfo, file_size: int) -> int:
    # zipfile shifts offsets when the directory is not where the end record says (data prepended
    # to the zip), so a damaged end record can yield a negative offset.
    if info.header_offset < 0 or info.header_offset + _LOCAL.size > file_size:
        raise FormatError(path, f"member {info.filename!r}: local header offset "
                                f"{info.header_offset} is outside the file", "the file is damaged")
    fh.seek(info.header_offset)
    fields = _LOCAL.unpack(fh.read(_LOCAL.size))
    if fields[0] != _LOCAL_SIG:
        raise FormatError(path, f"member {info.filename!r}: bad local header signature")
    name_len, extra_len = fields[9], fields[10]
    raw_name = fh.read(name_len)
    expected = info.filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    if raw_name != expected:
        raise FormatError(path, f"member {info.filename!r}: local header names {raw_name[:80]!r}")
    return info.header_offset + _LOCAL.size + name_len + extra_len
