"""``verify``: recompute every section digest and the content id, decode the JSON sections
(metadata, lineage, anemoi metadata and every document, under the reader's strict rules), and
say exactly what is damaged.

Tensor digests are computed in a thread pool over slices of the memory map (hashlib releases the
GIL), so verification runs at several times the speed of a single sha256 stream on multi-core
machines. Damage never raises: it is reported per section (and per tensor).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .container import hashing
from .errors import AncError, one_line
from .progress import Progress

if TYPE_CHECKING:
    from .reader import Checkpoint


@dataclass
class SectionResult:
    path: str
    role: str
    ok: bool
    problem: str | None = None
    damaged_tensors: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    path: str
    ok: bool
    content_id_ok: bool
    content_id: str
    sections: list[SectionResult]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def damaged(self) -> list[SectionResult]:
        return [s for s in self.sections if not s.ok]


#: Role -> how the reader decodes such a section. An intact digest only says the bytes are the ones
#: written; a file written to be hostile can carry matching digests over content no reader accepts.
_DECODE: dict[str, Callable[["Checkpoint"], object]] = {
    "metadata": lambda ck: ck.metadata,
    "lineage": lambda ck: ck.lineage,
    "anemoi-metadata": lambda ck: ck.supporting_arrays,  # parses anemoi.json and checks the arrays
}


def _slice_digest(ck: "Checkpoint", start: int, end: int) -> str:
    return ck.digest_range(start, end - start)


def verify(ck: "Checkpoint", *, progress: bool | None = None) -> VerifyReport:
    results: list[SectionResult] = []
    weights_entries: list[tuple[str, str, tuple[int, ...], str]] | None = None
    total = sum(s.size for s in ck.sections())
    workers = max(1, os.cpu_count() or 1)
    with Progress.for_bytes(total, f"verifying {os.path.basename(ck.path)}", progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        for sec in ck.sections():
            member = ck._members[sec.path]
            res = SectionResult(sec.path, sec.role, True)
            results.append(res)
            if sec.tensors is None:
                got = hashing.tagged(_slice_digest(ck, member.data_offset,
                                                   member.data_offset + member.size))
                if got != sec.digest:
                    res.ok, res.problem = False, "digest mismatch"
                    if ck._edited_outside(sec):  # a deliberate rewrite: name it and the remedy
                        from .reader import EDITED_WHAT, edited_hint
                        res.problem = one_line(f"{EDITED_WHAT}: {edited_hint(ck.path)}")
                elif sec.role in _DECODE or sec.role == "document":
                    try:
                        if sec.role == "document":  # this very member, decoded as the reader does:
                            ck._checked_json(sec.path)  # strict JSON, duplicate keys refused
                        else:
                            _DECODE[sec.role](ck)
                    except AncError as e:
                        res.ok, res.problem = False, one_line(e.what)
                bar.update(sec.size)
                continue
            try:
                mapping = ck.tensors(sec.name or "")
            except AncError as e:
                res.ok, res.problem = False, one_line(e.what)
                bar.update(sec.size)
                continue
            entries = sorted(mapping.entries.values(), key=lambda e: e.begin)
            base = mapping._offsets
            futures = [(e, pool.submit(_slice_digest, ck, base[e.name], base[e.name] + e.nbytes))
                       for e in entries]
            actual: dict[str, str] = {}
            for e, fut in futures:
                actual[e.name] = fut.result()
                bar.update(e.nbytes)
            bar.update(sec.size - sum(e.nbytes for e in entries))
            table = sec.tensors
            res.damaged_tensors = [n for n, hx in actual.items() if table.digests.get(n) != hx]
            digest = hashing.section_digest(table.header_digest, (actual[e.name] for e in entries))
            if res.damaged_tensors:
                res.ok = False
                # Name the first few here: the CLI prints only ``problem`` on its error line.
                names = ", ".join(res.damaged_tensors[:3])
                more = f" and {len(res.damaged_tensors) - 3} more" if len(res.damaged_tensors) > 3 else ""
                res.problem = one_line(f"{len(res.damaged_tensors)} tensor(s) do not match their "
                                       f"digest ({names}{more})")
            elif digest != sec.digest:
                res.ok, res.problem = False, "section digest mismatch"
            if sec.name == "weights":
                logical = {e.name: (e.dtype, e.shape, actual[e.name]) for e in entries}
                logical.update({a: logical[t] for a, t in mapping.aliases.items()})
                weights_entries = [(n, c, s, d) for n, (c, s, d) in logical.items()]
    for rel in ck.unlisted_members():
        results.append(SectionResult(rel, "unlisted", False, "member not listed in the manifest"))
    content_id = hashing.content_id(weights_entries) if weights_entries is not None else ""
    cid_ok = bool(content_id) and content_id == ck.content_id  # an empty id never matches
    ok = cid_ok and all(r.ok for r in results)
    return VerifyReport(ck.path, ok, cid_ok, content_id, results)
