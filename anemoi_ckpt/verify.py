"""``verify``: recompute every section digest and the content id, decode the JSON sections
(metadata, lineage, anemoi metadata and every document, under the reader's strict rules), and
say exactly what is damaged.

Tensor digests are computed in a thread pool over slices of the memory map (hashlib releases the
GIL), so verification runs at several times the speed of a single sha256 stream on multi-core
machines. Damage never raises: it is reported per section (and per tensor).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .container import hashing
from .container.zipappend import SIGNATURE_PATH
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
    #: an embedded signature member is present (format 1.2); digests never check it: that is
    #: ``anemoi_ckpt.signing.verify_signature``'s trust decision (``verify --signature``)
    signed_embedded: bool = False

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


#: Top-level keys of a Sigstore bundle (v0.1-v0.3): anything else in the member is smuggled data.
_BUNDLE_KEYS = {"mediaType", "verificationMaterial", "dsseEnvelope", "messageSignature"}


def _signature_shape(ck: "Checkpoint") -> str | None:
    """Why the embedded signature member is not a Sigstore bundle, or None. Only its shape: the
    signature itself is checked by ``anemoi_ckpt.signing`` (``verify --signature``)."""
    member = ck._members[SIGNATURE_PATH]
    if member.size > 16 << 20:
        return f"{member.size} bytes is too large for a signature"
    try:
        obj = json.loads(ck.read_bytes(member.data_offset, member.size).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a Sigstore bundle (invalid JSON)"
    if not isinstance(obj, dict) or not str(obj.get("mediaType", "")).startswith(
            "application/vnd.dev.sigstore.bundle") or not isinstance(obj.get("verificationMaterial"), dict):
        return "not a Sigstore bundle"
    extra = sorted(set(obj) - _BUNDLE_KEYS)
    return one_line(f"unexpected key {extra[0][:80]!r} in the signature bundle") if extra else None


def _slice_digest(ck: "Checkpoint", start: int, end: int) -> str:
    return ck.digest_range(start, end - start)


def _tensor_digest(mapping: Any, name: str) -> tuple[str, str | None]:
    """(sha256 hex, None), or ("", the problem) for a compressed tensor whose frames do not decode."""
    try:
        return mapping.digest(name), None
    except AncError as e:
        return "", e.what


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
            # a compressed tensor (1.2) is decoded and hashed a chunk at a time; a frame that does
            # not decode is that tensor's damage, reported like a digest mismatch
            futures = [(e, pool.submit(_tensor_digest, mapping, e.name)) for e in entries]
            actual: dict[str, str] = {}
            frame_errors: dict[str, str] = {}
            for e, fut in futures:
                actual[e.name], problem = fut.result()
                if problem:
                    frame_errors[e.name] = problem
                bar.update(e.nbytes)
            bar.update(sec.size - sum(e.nbytes for e in entries))
            table = sec.tensors
            res.damaged_tensors = [n for n, hx in actual.items() if table.digests.get(n) != hx]
            digest = hashing.section_digest(table.header_digest, (actual[e.name] for e in entries))
            if frame_errors:
                res.ok = False
                first = next(iter(frame_errors.values()))
                more = f" and {len(frame_errors) - 1} more tensor(s)" if len(frame_errors) > 1 else ""
                res.problem = one_line(f"{first}{more}")
            elif res.damaged_tensors:
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
    if ck.signed_embedded:
        problem = _signature_shape(ck)
        if problem:  # the one unlisted member allowed must at least be what it claims to be
            results.append(SectionResult(SIGNATURE_PATH, "signature", False, problem))
    content_id = hashing.content_id(weights_entries) if weights_entries is not None else ""
    cid_ok = bool(content_id) and content_id == ck.content_id  # an empty id never matches
    ok = cid_ok and all(r.ok for r in results)
    return VerifyReport(ck.path, ok, cid_ok, content_id, results,
                        signed_embedded=ck.signed_embedded)
