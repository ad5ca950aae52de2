"""``lineage --verify``: find a file's ancestors in folders and check they are the recorded ones.

``.anc`` files are matched by the uuid in their manifest (cheap: only the manifest is read), and
only a match is verified in full (every digest and the content id). Legacy sources of a convert
(``parameters.source_sha256``) are matched by hashing candidate files, those named like the
recorded source first. The file whose lineage is checked is never read beyond its lineage block.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AncError, one_line
from ..progress import Progress
from ..container.schema import Lineage, LineageRecord
from .view import by_uuid, short_uuid

#: Extensions of legacy (pickled or safetensors) checkpoints a convert may have read; a file with
#: the recorded source name is a candidate whatever its extension.
SOURCE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")
#: Hashing more than this shows a bar on an interactive stderr.
PROGRESS_BYTES = 8 << 20


@dataclass
class AncestorStatus:
    """What the search found for one ancestor. ``uuid`` is None for a convert's source that has
    no uuid (a plain torch file); ``source_of`` then names the converted record."""

    uuid: str | None
    status: str  # "found", "different" or "missing"
    kind: str | None = None
    operation: str | None = None
    role: str | None = None
    expected: str | None = None  # recorded content id, or "sha256:<hex>" of a source file
    path: str | None = None
    why: str | None = None
    source: str | None = None  # recorded source file name, for legacy sources
    source_of: str | None = None
    candidates: list[str] = field(default_factory=list)
    #: who signed the file found (``signers.SignerStatus.to_dict()``), when signatures were judged
    signature: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def name(self) -> str:
        """``<uuid8>``, or ``source of <uuid8>`` for a source without a uuid."""
        return short_uuid(self.uuid) if self.uuid else f"source of {short_uuid(self.source_of or '')}"


@dataclass
class _Wanted:
    """One ancestor to look for, as the lineage block describes it."""

    status: AncestorStatus
    content_id: str | None = None  # recorded, for an .anc found by uuid
    source_sha256: str | None = None  # hex, for legacy sources


def _from_record(rec: LineageRecord, role: str | None) -> _Wanted:
    return _Wanted(AncestorStatus(rec.uuid, "missing", rec.kind, rec.operation, role,
                                  expected=rec.content_id), rec.content_id)


def ancestors(lineage: Lineage) -> list[_Wanted]:
    """Every ancestor once (records, record-less parent refs, legacy sources), nearest first."""
    records = by_uuid(lineage)
    root = lineage.records[0].uuid
    out: dict[str, _Wanted] = {}
    order, i = [root], 0
    unreached = iter(records)  # one pass over all records in all, however many are unreached
    while True:  # breadth first from the file
        if i == len(order):
            # A record no parent link reaches is still an ancestor the block vouches for.
            nxt = next((u for u in unreached if u != root and u not in out), None)
            if nxt is None:
                break
            out[nxt] = _from_record(records[nxt], None)
            order.append(nxt)
        rec = records[order[i]]
        i += 1
        for ref in rec.parents:
            if ref.uuid in out or ref.uuid == root:
                continue
            if ref.uuid in records:
                out[ref.uuid] = _from_record(records[ref.uuid], ref.role)
                order.append(ref.uuid)
            else:
                out[ref.uuid] = _Wanted(AncestorStatus(ref.uuid, "missing", role=ref.role,
                                                       expected=ref.content_id), ref.content_id)
        sha = rec.parameters.get("source_sha256")
        if rec.operation == "convert" and isinstance(sha, str):
            name = rec.parameters.get("source")
            # The source's own uuid, when it had one (anemoi's, kept as a "source" parent ref).
            refs = [r for r in rec.parents if r.role == "source" and r.uuid not in records]
            key = refs[0].uuid if refs else f"source of {rec.uuid}"
            w = out.setdefault(key, _Wanted(AncestorStatus(None, "missing", role="source")))
            w.source_sha256 = sha.removeprefix("sha256:").lower()
            w.status.expected = w.status.expected or f"sha256:{w.source_sha256}"
            w.status.source = name if isinstance(name, str) else None
            w.status.source_of = rec.uuid
    return list(out.values())


def _walk(dirs: Iterable[str | os.PathLike]) -> Iterator[str]:
    for d in dirs:
        for root, subdirs, files in os.walk(d):  # symlinked folders are not followed: no loops
            subdirs.sort()
            for name in sorted(files):
                yield os.path.join(root, name)


def _bar(size: int, desc: str, progress: bool | None) -> Progress:
    enabled = progress if progress is not None else size > PROGRESS_BYTES and sys.stderr.isatty()
    return Progress.for_bytes(size, desc, enabled)


def _file_sha256(path: str, progress: bool | None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh, _bar(os.fstat(fh.fileno()).st_size,
                                      f"hashing {os.path.basename(path)}", progress) as bar:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def _check_anc(path: str, expected: str | None, progress: bool | None) -> str | None:
    """None when ``path`` is intact and has the expected content id, else why not."""
    from ..reader import open_checkpoint

    with open_checkpoint(path) as ck:
        if expected is not None and ck.content_id != expected:
            return f"content id {ck.content_id}, recorded {expected}"  # no need to hash: it differs
        size = sum(s.size for s in ck.sections())
        report = ck.verify(progress=progress if progress is not None
                           else size > PROGRESS_BYTES and sys.stderr.isatty())
    if not report.ok:
        damaged = [f"{s.path} ({s.problem})" for s in report.damaged]
        if not report.content_id_ok:
            damaged.append("content id does not match the weights")
        return one_line("damaged: " + "; ".join(damaged))
    return None


def verify_lineage(lineage: Lineage, search_dirs: Iterable[str | os.PathLike],
                   progress: bool | None = None) -> list[AncestorStatus]:
    """Status of every ancestor of a (checked) lineage block, found under ``search_dirs``."""
    wanted = ancestors(lineage)
    files = list(_walk(search_dirs))
    by_id: dict[str, list[str]] = {}
    for path in files:
        if path.endswith(".anc"):
            try:
                from ..reader import open_checkpoint

                with open_checkpoint(path) as ck:  # the manifest only
                    by_id.setdefault(ck.uuid, []).append(path)
            except AncError:
                continue  # not attributable to any ancestor without a readable manifest
    legacy = [p for p in files if p.lower().endswith(SOURCE_EXTENSIONS)]
    recorded = {w.status.source for w in wanted if w.source_sha256 is not None}
    # A source under its recorded name is a candidate whatever its extension (an index .json).
    legacy += [p for p in files if os.path.basename(p) in recorded and not p.lower().endswith(SOURCE_EXTENSIONS)]
    hashes: dict[str, str] = {}  # each candidate hashed at most once
    for w in wanted:
        st = w.status
        if st.uuid is not None and st.uuid in by_id:
            st.candidates = by_id[st.uuid]
            reasons = []
            for path in st.candidates:
                why = _check_anc(path, w.content_id, progress)
                if why is None:
                    st.status, st.path, st.why = "found", path, None
                    break
                reasons.append((path, why))
            else:
                st.status, st.path, st.why = "different", reasons[0][0], reasons[0][1]
            continue
        if w.source_sha256 is not None:
            _match_source(w, legacy, hashes, progress)
    return [w.status for w in wanted]


def _match_source(w: _Wanted, legacy: list[str], hashes: dict[str, str], progress: bool | None) -> None:
    st = w.status
    named = [p for p in legacy if os.path.basename(p) == st.source]
    others = [p for p in legacy if os.path.basename(p) != st.source]
    # Same name first (cheap, and almost always the file); then renamed copies.
    for path in named + others:
        if path not in hashes:
            try:
                hashes[path] = _file_sha256(path, progress)
            except OSError:
                continue
        if hashes[path] == w.source_sha256:
            st.status, st.path, st.why = "found", path, None
            return
    if named:
        st.status, st.path = "different", named[0]
        st.why = f"sha256 {hashes.get(named[0], '?')}, recorded {w.source_sha256}"
        st.candidates = named


def report_lines(file: str, statuses: list[AncestorStatus]) -> list[str]:
    """``  <status> <uuid8> [(role)] [source name]  [path][: why]`` per ancestor, then a count."""
    lines = []
    for s in statuses:
        lines.append(one_line(f"  {s.status:<9} {s.name()}" + (f" ({s.role})" if s.role else "")
                              + (f" {s.source}" if s.source else "") + (f"  {s.path}" if s.path else "")
                              + (f": {s.why}" if s.why else "")))
        if s.signature is not None:
            from .signers import signature_text

            lines.append(" " * 12 + signature_text(s.signature))
    counts = ", ".join(f"{sum(s.status == k for s in statuses)} {k}" for k in ("found", "different", "missing"))
    lines.append(one_line(f"{file}: {len(statuses)} ancestors: {counts}"))
    return lines
