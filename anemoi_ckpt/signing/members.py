"""What a signature covers: the digests of a file's members, and the base an adapter applies to.

The embedded form signs each zip member (path relative to the root folder, sha256 of its bytes as
stored), the signature member excepted: exactly the manifest model-signing computes for the folder
``unzip`` makes, so both verify the same statement. The digests are taken by byte ranges
(:meth:`Checkpoint.digest_range`), in threads, so a URL is checked without a download.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ..container.zipappend import SIGNATURE_PATH
from ..errors import IntegrityError

if TYPE_CHECKING:
    from ..reader import Checkpoint

#: A Sigstore bundle is a few KiB; refuse absurd signature members before reading them.
MAX_BUNDLE = 16 << 20


def member_digests(ck: "Checkpoint") -> dict[str, str]:
    """Member path (relative to the root folder) -> sha256 hex of its bytes, for every member
    except the embedded signature."""
    members = {rel: m for rel, m in ck._members.items() if rel != SIGNATURE_PATH}
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {rel: pool.submit(ck.digest_range, m.data_offset, m.size) for rel, m in members.items()}
        return {rel: f.result() for rel, f in futures.items()}


def file_digest(ck: "Checkpoint") -> str:
    """sha256 hex of the whole file (what a detached signature over the one file covers)."""
    return ck.digest_range(0, ck.size)


def embedded_bundle(ck: "Checkpoint") -> bytes | None:
    """The embedded signature member's bytes, or None when the file has none."""
    member = ck._members.get(SIGNATURE_PATH)
    if member is None:
        return None
    if member.size > MAX_BUNDLE:
        raise IntegrityError(ck.path, f"{member.size} bytes is too large for a signature",
                             "the file is damaged", section=SIGNATURE_PATH)
    return ck.read_bytes(member.data_offset, member.size)


def bases(ck: "Checkpoint") -> dict[str, str | None]:
    """Adapter name -> the base content id it records (None when it records none), for an adapter
    or delta file and for adapters attached unmerged; {} for a file that holds none. Read from
    ``metadata.json`` (digest-checked), the keys adapters/model.py documents."""
    md: dict[str, Any] = ck.metadata.model_extra or {}
    out: dict[str, str | None] = {}
    own = md.get("adapter") if isinstance(md.get("adapter"), dict) else {}
    if ck.kind in ("adapter", "delta"):
        out[str(own.get("name") or ck.kind)] = _id(own.get("base_content_id"))
    attached = md.get("adapters")
    if isinstance(attached, dict):
        for name, info in attached.items():
            out[str(name)] = _id(info.get("base_content_id")) if isinstance(info, dict) else None
    return out


def _id(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def single_base(found: dict[str, str | None]) -> str | None:
    """The one base content id all the adapters record (None if none, or if they differ)."""
    ids = set(found.values())
    return ids.pop() if len(ids) == 1 else None
