"""Releasing the file pages a loaded anemoi model no longer uses.

:func:`anemoi_ckpt.anemoi.load.load_from_checkpoint` assigns every weight as a view of the file's
copy-on-write map, so a ready model costs no copy. When the trainer then holds the frozen base in
bf16 (``base_dtype: bf16``), the fp32 views are dropped but the pages they read stay counted in the
process's memory while the map exists: for an AIFS-sized base about 1 GB beside its bf16 copy.
:func:`release_file_pages` gives back exactly the pages no tensor uses any more (``MADV_DONTNEED``:
the file is never written; a later read faults its bytes back in). Whether a storage is still used
is judged by torch's storage use counts; on a torch without them nothing is released.
"""

from __future__ import annotations

import weakref
from typing import Any

# ------------------------------------------------------------------ releasing unused file pages
#: model -> what its weights view in its file's map (see release_file_pages); weak, so a model's
#: record goes with it and the model itself stays picklable and copyable
_FILE_PAGES: "weakref.WeakKeyDictionary[Any, _FilePages]" = weakref.WeakKeyDictionary()


class _FilePages:
    """The file tensors a loaded model started from: per storage its byte range in the map, a weak
    reference to it, the reader's own view of it and the use count that view alone accounts for."""

    def __init__(self, mm: Any, spans: list[tuple[int, int, Any, Any, int]]) -> None:
        self.mm = weakref.ref(mm)
        self.spans = spans
        self.released: set[int] = set()

    def dead(self, i: int, in_model: set[int]) -> bool:
        """Whether no tensor but the reader's read-only view uses storage ``i`` any more
        (``in_model``: the storages the model's tensors view now)."""
        import torch

        _, _, ref, reader, baseline = self.spans[i]
        if ref.expired():
            return True
        return (ref.cdata not in in_model and reader() is not None
                and torch._C._storage_Use_Count(ref.cdata) <= baseline)


def track_file_pages(model: Any, ck: Any) -> None:
    """Record, for :func:`release_file_pages`, every storage of ``ck``'s map the reader has handed
    out (the loaded model's weights and buffers are views of these)."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    from ..container.mapped import map_base
    from ..container.tensorio import view_tensor

    mm = getattr(ck, "_mm", None)
    if mm is None or not hasattr(torch._C, "_storage_Use_Count"):
        return  # a URL's fetched bytes, or a torch without use counts: nothing to release
    base, size = map_base(mm), len(mm)
    reader_refs: dict[tuple[str, tuple[int, ...]], int] = {}
    spans, seen = [], set()
    for section in ("weights", "buffers"):
        if section not in ck.tensor_sections():
            continue
        mapping = ck.tensors(section)
        for name, e in mapping.entries.items():
            t = mapping[name]  # the reader's cached view (made now if the load did not need it)
            storage = t.untyped_storage()
            ref, start, n = StorageWeakRef(storage), storage.data_ptr() - base, storage.nbytes()
            del storage
            if ref.cdata in seen or n == 0 or start < 0 or start + n > size:
                continue
            seen.add(ref.cdata)
            key = (e.dtype, tuple(e.shape))
            if key not in reader_refs:  # what the reader's own view holds: a fresh one, counted alike
                probe = view_tensor(mm, start, n, e.dtype, tuple(e.shape))
                probe_storage = probe.untyped_storage()
                probe_ref = StorageWeakRef(probe_storage)
                del probe_storage
                reader_refs[key] = torch._C._storage_Use_Count(probe_ref.cdata)
                del probe
            spans.append((start, start + n, ref, weakref.ref(t), reader_refs[key]))
    if spans:
        _FILE_PAGES[model] = _FilePages(mm, spans)


def release_file_pages(model: Any) -> int:
    """Drop from this process the file pages of every tensor ``model`` was loaded with that nothing
    uses any more (e.g. fp32 weights replaced by bf16 copies); returns the bytes released.

    The weights are views of the file's private (copy-on-write) map, and a page once read stays
    counted in the process's memory while the map exists, even after the last tensor on it is
    gone. Released with ``MADV_DONTNEED``: the file is never written, and a later read of the range
    (the reader's own cached view) faults the file's bytes back in. A page shared with a tensor
    still in use is kept. 0 for a model not loaded by :func:`load_from_checkpoint` from a local file."""
    import mmap as _mmap

    rec = _FILE_PAGES.get(model)
    mm = rec.mm() if rec is not None else None
    if rec is None or mm is None or not hasattr(_mmap, "MADV_DONTNEED"):
        return 0
    in_model = {t.untyped_storage()._cdata for t in (*model.parameters(), *model.buffers())
                if t.device.type == "cpu"}
    live, new = [], []
    for i, (lo, hi, *_rest) in enumerate(rec.spans):
        if rec.dead(i, in_model):
            if i not in rec.released:
                new.append(i)
        else:
            live.append((lo, hi))
    if not new:
        return 0
    rec.released.update(new)
    released = 0
    for lo, hi in page_spans([rec.spans[i][:2] for i in new], live, _mmap.PAGESIZE, len(mm)):
        try:
            mm.madvise(_mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):
            return released  # closed, or not releasable: memory is only an optimisation here
        released += hi - lo
    return released


def page_spans(dead: list[tuple[int, int]], live: list[tuple[int, int]], page: int,
               size: int) -> list[tuple[int, int]]:
    """The page-aligned, merged byte spans covering ``dead`` ranges but no byte of a page that a
    ``live`` range touches (pure arithmetic; ``size`` caps the last page)."""
    def pages(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for lo, hi in sorted((lo // page, -(-hi // page)) for lo, hi in spans if hi > lo):
            if out and lo <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], hi))
            else:
                out.append((lo, hi))
        return out

    keep = pages(live)
    result = []
    for lo, hi in pages(dead):
        for klo, khi in keep:  # cut out every kept page
            if khi <= lo or klo >= hi:
                continue
            if klo > lo:
                result.append((lo, klo))
            lo = max(lo, khi)
            if lo >= hi:
                break
        if lo < hi:
            result.append((lo, hi))
    return [(lo * page, min(hi * page, size)) for lo, hi in result if min(hi * page, size) > lo * page]


__all__ = ["page_spans", "release_file_pages", "track_file_pages"]
