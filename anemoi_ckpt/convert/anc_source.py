"""An ``.anc`` as a conversion source: training to inference, re-layout, re-cast.

Tensors are the reader's zero-copy views, so the conversion streams. The per-tensor sha256
digests the source's manifest records let the engine prove the output without re-reading it:
the writer hashes every byte it writes, and equal digests mean the bytes are the source's.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from typing import Any

from ..errors import AncError, FormatError
from ..reader import Checkpoint, open_checkpoint
from .sources import Source


def is_anc(path: str) -> bool:
    from ..container.urls import is_remote

    if is_remote(path):  # a URL: its zip directory names a manifest (kilobytes fetched)
        try:
            with open_checkpoint(path):
                return True
        except AncError:
            return False
    if os.path.isdir(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.count("/") == 1 and n.endswith("/manifest.json") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _specs(ck: Checkpoint, section: str) -> list[tuple[str, str, tuple[int, ...], int]]:
    tensors = ck.tensors(section)
    out = []
    for name in tensors:
        e = tensors.entries[tensors.aliases.get(name, name)]
        out.append((name, e.dtype, tuple(e.shape), e.nbytes))
    return out


def _tensors(ck: Checkpoint, section: str) -> Iterator[tuple[str, Any]]:
    """(name, tensor) of a section, aliases last. A compressed section's tensors are decoded
    copies that the mapping holds weakly: an alias target is kept alive until its aliases are
    given, so the writer sees the same tensor and writes an alias, not a second copy."""
    mapping = ck.tensors(section)
    targets = set(mapping.aliases.values())
    held = {}
    for name in mapping.entries:
        t = mapping[name]
        if name in targets:
            held[name] = t
        yield name, t
    for alias, target in mapping.aliases.items():
        yield alias, held.get(target, mapping[target])


def open_anc(path: str) -> Source:
    try:
        ck = open_checkpoint(path)
    except AncError:
        raise
    try:
        sections = {sec: (lambda sec=sec: _tensors(ck, sec)) for sec in ck.tensor_sections()}
        specs = {sec: _specs(ck, sec) for sec in ck.tensor_sections()}
        digests: dict[str, dict[str, str]] = {}
        for sec in ck.sections():
            if sec.tensors is not None and sec.name:
                table = sec.tensors
                digests[sec.name] = {**table.digests, **{a: table.digests[t] for a, t in table.aliases.items()}}
        documents: dict[str, Any] = {name: ck.document(name) for name in ck.documents()}
        md = ck.anemoi_metadata
        arrays = ck.supporting_arrays if md else None
        extra = ck.metadata.model_dump(mode="json")
        extra.pop("schema_version", None)
        details = {"source_uuid": ck.uuid, "source_content_id": ck.content_id,
                   "source_kind": ck.kind, "format_version": ck.format_version}
    except BaseException:
        ck.close()
        raise
    src = Source(path, "anc", ck.kind, sections, specs, dict(md) if md else None, arrays, details,
                 ck.close, documents=documents, extra_metadata=extra or None)
    src.parents = [ck]  # lineage: this file, with its ancestors' records copied in
    src.digests = digests
    src.mapping = ck._mm
    src.anc = ck
    return src


def check_not_same(src: str, dst: str | os.PathLike | None) -> None:
    """Writing over the source would destroy it mid-read: refuse before anything is opened."""
    if dst is None:
        return
    try:
        same = os.path.exists(dst) and os.path.samefile(src, dst)
    except OSError:
        same = False
    if same or os.path.abspath(src) == os.path.abspath(os.fspath(dst)):
        raise FormatError(os.fspath(dst), "the output is the input file", "write to a new path")
