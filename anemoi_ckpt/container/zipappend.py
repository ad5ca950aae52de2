"""Adding one member to a finished ``.anc``: every other member copied byte for byte.

The embedded signature (docs/format.md, "Signatures (1.2)") is the one member written after the
manifest. Adding it must not change a single byte of any other member, since the signature is over
those bytes: the copy goes member by member through :class:`~.zipwrite.ZipWriter` (the same local
headers, alignment and central directory as every ``.anc``), each member's data copied by the kernel
with its CRC-32 taken from the source directory, and the new member written last. A file written by
anemoi-ckpt keeps its layout exactly; one rewritten by another zip tool gets aligned members, with
the same member bytes. The output is written atomically; the source may be the output (in place).
"""

from __future__ import annotations

import os
from typing import BinaryIO

from .atomic import atomic_output
from .zipread import Member
from .zipwrite import ZipWriter

#: Path, relative to the root folder, of the embedded signature member (a Sigstore bundle, JSON).
#: The one member the manifest does not list: it signs the manifest, so cannot be listed in it.
SIGNATURE_PATH = "signature.sig"


def copy_with_member(src: BinaryIO, members: dict[str, Member], root: str, out: BinaryIO,
                     rel: str, data: bytes) -> None:
    """Write into ``out`` every member of ``src`` except ``rel`` (in file order, byte for byte),
    then ``data`` as ``<root>/<rel>``, then the zip directory. ``members`` is
    :func:`~.zipread.read_directory`'s mapping for ``src``; an existing ``rel`` is replaced."""
    zw = ZipWriter(out)
    fd = src.fileno()
    for name, m in sorted(members.items(), key=lambda kv: kv[1].data_offset):
        if name == rel:
            continue
        with zw.open_member(m.name) as stream:
            if m.size:
                stream.copy_from(fd, m.data_offset, m.size, m.crc)
    zw.write_member(f"{root}/{rel}", data)
    zw.finish()


def write_with_member(src_path: str | os.PathLike, members: dict[str, Member], root: str,
                      out_path: str | os.PathLike, rel: str, data: bytes) -> None:
    """:func:`copy_with_member` from the file ``src_path`` into ``out_path``, atomically (the
    target appears whole or not at all; ``out_path`` may be ``src_path``)."""
    with open(src_path, "rb") as src, atomic_output(out_path) as out:
        copy_with_member(src, members, root, out, rel, data)
