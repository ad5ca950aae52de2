"""``diff``: what changed between two ``.anc`` files (a fine-tune, a translation, a conversion).

Tensors are matched by name within each tensor section. The manifests' per-tensor sha256 digests
decide first: an equal digest with the same dtype and shape is *unchanged* and its bytes are never
read, so two large files sharing most tensors diff in the time it takes to read their headers.
Only tensors whose digests differ are read and compared numerically (:mod:`.diff_stats`). diff
trusts the digests: run ``verify`` to check a file for damage.

Metadata (typed metadata.json, anemoi's metadata, documents, kind) is compared as JSON and
reported as path-level differences; identity fields that differ in every new file (uuid, created,
lineage) are not differences.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..anemoi_meta import flat_arrays
from .stats import MetaChange, ValueStats, compare_arrays, compare_tensors, json_diff
from ..errors import UsageError
from ..progress import Progress
from ..reader import Checkpoint, open_checkpoint

@dataclass
class TensorChange:
    """One tensor (or supporting array) that is not unchanged.

    ``change`` is ``added``, ``removed``, ``layout`` (dtype or shape differ; values are still
    compared when only the dtype does) or ``value``."""

    name: str
    change: str
    dtype: tuple[str | None, str | None]
    shape: tuple[list[int] | None, list[int] | None]
    stats: ValueStats | None = None

    @property
    def significant(self) -> bool:
        """False only for a value change within atol/rtol (or bytes that differ, values that don't)."""
        return self.change != "value" or self.stats is None or not self.stats.within_tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change, "dtype": list(self.dtype),
                "shape": list(self.shape), "significant": self.significant,
                "stats": self.stats.to_dict() if self.stats else None}


@dataclass
class SectionDiff:
    name: str
    present: str  # "both", "a" or "b"
    changes: list[TensorChange] = field(default_factory=list)
    unchanged: int = 0

    def count(self, change: str) -> int:
        return sum(c.change == change for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "present": self.present, "unchanged": self.unchanged,
                "counts": {k: self.count(k) for k in ("value", "layout", "added", "removed")},
                "changes": [c.to_dict() for c in self.changes]}


@dataclass
class DiffReport:
    a: str
    b: str
    atol: float
    rtol: float
    kind: tuple[str, str]
    content_id: tuple[str, str]
    sections: list[SectionDiff]
    metadata: list[MetaChange]
    supporting_arrays: list[TensorChange]
    lineage: str | None  # e.g. "B descends from A"

    @property
    def content_id_equal(self) -> bool:
        return self.content_id[0] == self.content_id[1]

    @property
    def identical(self) -> bool:
        """No tensor, supporting-array or metadata difference (value changes within tolerance
        do not count)."""
        return (not self.metadata and not any(c.significant for c in self.supporting_arrays)
                and not any(c.significant for s in self.sections for c in s.changes))

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "identical": self.identical, "atol": self.atol,
                "rtol": self.rtol, "kind": list(self.kind), "content_id": list(self.content_id),
                "content_id_equal": self.content_id_equal, "lineage": self.lineage,
                "sections": [s.to_dict() for s in self.sections],
                "metadata": [m.to_dict() for m in self.metadata],
                "supporting_arrays": [c.to_dict() for c in self.supporting_arrays]}


# --- metadata ---------------------------------------------------------------------------------
def _anemoi_view(ck: Checkpoint) -> dict[str, Any] | None:
    md = ck.anemoi_metadata
    if md is None:
        return None
    # Array paths name the file's root folder and the arrays are compared by value instead; the
    # uuid a writer gives every new file is identity, not content (a kept, converted uuid is not).
    md = {k: v for k, v in md.items() if k != "supporting_arrays_paths"}
    if md.get("uuid") == ck.uuid:
        md["uuid"] = "<this file's uuid>"
    return md


def _meta_view(ck: Checkpoint) -> dict[str, Any]:
    view: dict[str, Any] = {"kind": ck.kind, "metadata": ck.metadata.model_dump(mode="json")}
    anemoi = _anemoi_view(ck)
    if anemoi is not None:
        view["anemoi"] = anemoi
    docs = {name: ck.document(name) for name in ck.documents()}
    if docs:
        view["documents"] = docs
    return view


def _array_diff(a: Checkpoint, b: Checkpoint, atol: float, rtol: float) -> list[TensorChange]:
    fa, fb = flat_arrays(a.supporting_arrays), flat_arrays(b.supporting_arrays)
    out = []
    for name in [*fa, *(k for k in fb if k not in fa)]:
        x, y = fa.get(name), fb.get(name)
        dtype = (str(x.dtype) if x is not None else None, str(y.dtype) if y is not None else None)
        shape = (list(x.shape) if x is not None else None, list(y.shape) if y is not None else None)
        if x is None or y is None:
            out.append(TensorChange(name, "added" if x is None else "removed", dtype, shape))
            continue
        stats = compare_arrays(x, y, atol=atol, rtol=rtol) if x.shape == y.shape else None
        if dtype[0] != dtype[1] or shape[0] != shape[1]:
            out.append(TensorChange(name, "layout", dtype, shape, stats))
        elif stats is not None and stats.differing:
            out.append(TensorChange(name, "value", dtype, shape, stats))
    return out


def _lineage(a: Checkpoint, b: Checkpoint) -> str | None:
    def ancestors(ck: Checkpoint) -> set[str]:
        records = ck.lineage.records
        return {r.uuid for r in records[1:]} | {p.uuid for r in records[:1] for p in r.parents}

    if a.uuid == b.uuid:
        return "A and B are the same file"
    if a.uuid in ancestors(b):
        return "B descends from A"
    if b.uuid in ancestors(a):
        return "A descends from B"
    common = ancestors(a) & ancestors(b)
    if common:
        return f"A and B share ancestor {sorted(common)[0]}"
    return None


# --- tensors -------------------------------------------------------------------------------------
def _layout(ck: Checkpoint, section: str, name: str) -> tuple[str, list[int], str]:
    """(dtype code, shape, digest) of a name (aliases resolved) from the header and manifest."""
    m = ck.tensors(section)
    target = m.aliases.get(name, name)
    e = m.entries[target]
    return e.dtype, list(e.shape), m.section.tensors.digests[target]  # type: ignore[union-attr]


def _plan(a: Checkpoint, b: Checkpoint, section: str) -> tuple[SectionDiff, list[TensorChange]]:
    """Classify every name from headers and digests alone; return the changes that need reading."""
    in_a, in_b = section in a.tensor_sections(), section in b.tensor_sections()
    sd = SectionDiff(section, "both" if in_a and in_b else "a" if in_a else "b")
    names_a = list(a.tensors(section)) if in_a else []
    names_b = list(b.tensors(section)) if in_b else []
    set_a, set_b = set(names_a), set(names_b)
    to_read = []
    for name in [*names_a, *(n for n in names_b if n not in set_a)]:
        la = _layout(a, section, name) if name in set_a else None
        lb = _layout(b, section, name) if name in set_b else None
        dtype = (la[0] if la else None, lb[0] if lb else None)
        shape = (la[1] if la else None, lb[1] if lb else None)
        if la is None or lb is None:
            sd.changes.append(TensorChange(name, "added" if la is None else "removed", dtype, shape))
        elif la == lb:
            sd.unchanged += 1  # same digest, dtype and shape: equal bytes, never read
        else:
            change = TensorChange(name, "value" if la[:2] == lb[:2] else "layout", dtype, shape)
            sd.changes.append(change)
            if la[1] == lb[1]:  # a dtype-only change is still compared by value (e.g. a cast)
                to_read.append(change)
    return sd, to_read


def _opened(stack: ExitStack, x: Checkpoint | str | os.PathLike) -> Checkpoint:
    return x if isinstance(x, Checkpoint) else stack.enter_context(open_checkpoint(x))


def diff(a: Checkpoint | str | os.PathLike, b: Checkpoint | str | os.PathLike, *, atol: float = 0.0,
         rtol: float = 0.0, sections: Iterable[str] | None = None,
         progress: bool | None = None) -> DiffReport:
    """Compare two ``.anc`` files (paths or open checkpoints); ``a`` is the old one, the reference
    for relative differences and ``rtol``. ``sections`` limits the tensor sections compared."""
    if atol < 0 or rtol < 0:
        raise UsageError(None, "atol and rtol must be >= 0")
    with ExitStack() as stack:
        ca, cb = _opened(stack, a), _opened(stack, b)
        known = [*ca.tensor_sections(), *(s for s in cb.tensor_sections() if s not in ca.tensor_sections())]
        wanted = list(dict.fromkeys(sections)) if sections is not None else known
        for s in wanted:
            if s not in known:
                raise UsageError(None, f"no tensor section {s!r} in either file",
                                 f"sections: {', '.join(known)}")
        planned = [_plan(ca, cb, s) for s in wanted]
        total = sum(_nbytes(ca, cb, sd.name, c) for sd, reads in planned for c in reads)
        with Progress.for_bytes(total, "comparing", progress) as bar:
            for sd, reads in planned:
                if not reads:
                    continue
                done: dict[tuple[str, str], ValueStats] = {}  # aliases of one stored pair: compare once
                ma, mb = ca.tensors(sd.name), cb.tensors(sd.name)
                for c in reads:
                    key = (ma.aliases.get(c.name, c.name), mb.aliases.get(c.name, c.name))
                    if key not in done:
                        done[key] = compare_tensors(ma[c.name], mb[c.name], atol=atol, rtol=rtol,
                                                    on_chunk=bar.update)
                    c.stats = done[key]
        metadata = list(json_diff(_meta_view(ca), _meta_view(cb), ""))
        return DiffReport(ca.path, cb.path, atol, rtol, (ca.kind, cb.kind),
                          (ca.content_id, cb.content_id), [sd for sd, _ in planned], metadata,
                          _array_diff(ca, cb, atol, rtol), _lineage(ca, cb))


def _nbytes(a: Checkpoint, b: Checkpoint, section: str, c: TensorChange) -> int:
    ea = a.tensors(section).entries[a.tensors(section).aliases.get(c.name, c.name)]
    eb = b.tensors(section).entries[b.tensors(section).aliases.get(c.name, c.name)]
    return ea.nbytes + eb.nbytes
