"""Moving tensors from a source into the writer along a plan, then proving the output.

Source sections are streamed in order; a tensor the plan moves to another section waits (as a
lazy view) until that section is written. Pages of a file-mapped source are dropped from this
process once their tensor is written and hashed, so memory stays near the largest tensor.

The proof: the writer hashes (sha256) the very bytes it takes from the source. For an ``.anc``
source with nothing cast, those digests must equal the source manifest's (no second pass over
the data); a section copied unchanged is hashed chunk by chunk from the output as it is copied
(``Writer.copy_section(prove=True)``) and checked against the source's digests before the
commit. Otherwise every tensor is read back from the new file with plain reads and compared
byte for byte with the source's map where it lies whole in it, or its sha256 must equal the
digest of the source bytes.

Bytes are compared with the source file's only where the tensor is a view of them: a tensor whose
values ``torch.load`` would change (the negative or conjugate bit, a storage of the other byte
order) reaches here already materialised by the source reader, so its stored bytes are the values
``torch.load`` gives, and it is compared with the digest the writer took of those values.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import FormatError, IntegrityError
from ..reader import open_checkpoint
from ..container.mapped import map_base, page_releaser
from .plan import OUTPUT_FACTOR, WritePlan, output_limit
from .sources import Source


def _cast(t: Any, code: str | None) -> Any:
    if code is None:
        return t
    from ..container.dtypes import CODE_TO_TORCH

    return t.to(CODE_TO_TORCH[code])


def _span(mapping: Any, base: int, t: Any) -> tuple[int, int] | None:
    """(offset, nbytes) in the source file of a contiguous tensor viewing the map, else None."""
    if mapping is None or not t.is_contiguous():
        return None
    start, n = t.data_ptr() - base, t.numel() * t.element_size()
    return (start, n) if n and 0 <= start and start + n <= len(mapping) else None


def _views_map(mapping: Any, base: int, t: Any) -> bool:
    """Whether ``t``'s storage lies in the source map (a zero-copy view), not in a copy."""
    if mapping is None:
        return False
    start = t.untyped_storage().data_ptr() - base
    return 0 <= start < max(1, len(mapping))


def _map_view_key(mapping: Any, base: int, section: str, t: Any) -> tuple[Any, ...] | None:
    """What makes ``t`` an alias in the writer, for a view of the source map (None for a copy:
    its address may be reused once it is freed, so it is never taken for an alias)."""
    if mapping is None or t.numel() == 0:
        return None
    start = t.untyped_storage().data_ptr() - base
    if not 0 <= start < len(mapping):
        return None
    return section, t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype


def _copyable(source: Source, plan: WritePlan, section: str) -> bool:
    """An .anc section written unchanged (same names, no cast, nothing moved in or out) is
    copied as bytes instead of streamed tensor by tensor."""
    if source.anc is None:
        return False
    routes = [(key, dest) for key, dest in plan.route.items() if key[0] == section or dest[0] == section]
    return bool(routes) and all(key[0] == section and dest == (section, key[1], None) for key, dest in routes)


def write_tensors(source: Source, plan: WritePlan, w: Any, report: Any) -> dict[tuple[str, str], tuple[int, int]]:
    """Write every routed tensor; returns where each uncast tensor lies in the source file
    (target section, name) -> (offset, nbytes), for the byte comparison after writing.
    Sections copied whole are listed in ``report.copied``."""
    releaser = page_releaser(source.mapping)
    base = map_base(source.mapping)
    origins: dict[tuple[str, str], tuple[int, int]] = {}
    order = plan.order(list(source.sections))
    pending: dict[str, list[tuple[str, Any]]] = {}
    # Views over the source map stay referenced so that a later view of the same storage is
    # recognised as an alias (the tracker holds weak references); they cost no memory once their
    # pages are released. Copies (safetensors sources) are never aliases: they are let go.
    keep_alive: list[Any] = []
    zero_copy = source.mapping is not None
    written: list[str] = []

    limit = output_limit(source.path)
    out_bytes = 0
    stored: set[tuple[Any, ...]] = set()  # views of the map already written, per section (aliases)

    def put(target: str, name: str, t: Any) -> None:
        nonlocal out_bytes
        key = _map_view_key(source.mapping, base, target, t)
        if key is None or key not in stored:
            out_bytes += t.numel() * t.element_size()
            if out_bytes > limit:
                raise FormatError(source.path, f"the tensors would take over {limit} bytes, more than "
                                  f"{OUTPUT_FACTOR} times the source: views of its storages overlap "
                                  f"(at {target}/{name})", "a checkpoint torch saved from ordinary "
                                  "tensors has no such views; nothing was written")
            if key is not None:
                stored.add(key)
        try:
            w.add(name, t, section=target, release=releaser(t))
        except ValueError as e:  # a name the format cannot hold ("", "__metadata__", ...)
            raise FormatError(source.path, f"cannot write {target}/{name[:120]!r}: {e}") from None
        report.tensors[target] = report.tensors.get(target, 0) + 1

    for section, tensors in source.sections.items():
        if not any(s == section for s, _ in plan.route):
            continue  # dropped (e.g. optimizer state for an inference file): never read
        own = plan.route_target(section)
        if own == section and own not in written and _copyable(source, plan, section):
            w.copy_section(section, source.anc, prove=True)  # hashed as copied: proven in that pass
            written.append(section)
            n = sum(1 for key in plan.route if key[0] == section)
            report.tensors[section] = report.tensors.get(section, 0) + n
            report.bytes += sum(spec[3] for spec in plan.targets[section])
            report.copied.append(section)
            continue
        if own is not None and own not in written:
            w.begin_section(own, plan.targets[own])
            written.append(own)
        for name, t in tensors():
            target, new, code = plan.route[(section, name)]
            span = _span(source.mapping, base, t) if code is None else None
            if span is not None:
                origins[(target, new)] = span
            t = _cast(t, code)
            if zero_copy and _views_map(source.mapping, base, t):
                keep_alive.append(t)  # a copy (cast, or values materialised by the source) is let go
            report.bytes += t.numel() * t.element_size()
            if target == own:
                put(target, new, t)
            elif target in written:
                raise FormatError(source.path, f"{section}/{name} moves to section {target!r}, "
                                  "which was already written")
            else:
                pending.setdefault(target, []).append((new, t))
        for new, t in pending.pop(own, []) if own else []:
            put(own, new, t)
    for target in order:
        if target in pending:
            w.begin_section(target, plan.targets[target])
            for new, t in pending.pop(target):
                put(target, new, t)
    keep_alive.clear()
    return origins


def verify_output(source: Source, plan: WritePlan, dst: str,
                  origins: dict[tuple[str, str], tuple[int, int]] | None = None,
                  copied: list[str] | None = None) -> tuple[int, str]:
    """(tensors proven, how): by digest when the source vouches for every routed tensor's
    bytes and none was cast, else by reading back: bytes compared with the source file's where
    the tensor lies whole in it, sha256 against the writer's digest of the source bytes
    otherwise (non-contiguous views, casts, copied sources)."""
    if source.digests is not None and all(code is None for _, _, code in plan.route.values()):
        n = _by_digest(source, plan, dst)
        # Copied sections were proven as they were copied (``Writer.copy_section(prove=True)``:
        # the bytes written hashed to the source's digests), so nothing is read again here;
        # except compressed ones, whose stored bytes are frames: those are decoded and re-hashed.
        framed = _compressed_sections(dst, copied or [])
        if framed:
            _by_reread(WritePlan(targets={s: plan.targets[s] for s in framed}), dst)
        return n, "digest"
    return _by_reread(plan, dst, source.path, origins or {}, source.mapping), "re-read"


def _compressed_sections(dst: str, sections: list[str]) -> list[str]:
    """Those of ``sections`` that ``dst`` stores compressed (format 1.2 frames)."""
    if not sections:
        return []
    with open_checkpoint(dst) as ck:
        return [s for s in sections if ck.section(ck.tensor_section_rel(s)).encoding is not None]


def _by_digest(source: Source, plan: WritePlan, dst: str) -> int:
    assert source.digests is not None
    with open_checkpoint(dst) as ck:
        tables = {}
        for sec in ck.sections():
            if sec.tensors is not None and sec.name:
                t = sec.tensors
                tables[sec.name] = {**t.digests, **{a: t.digests[x] for a, x in t.aliases.items()}}
    for (section, name), (target, new, _) in plan.route.items():
        want = source.digests.get(section, {}).get(name)
        if want is None or tables.get(target, {}).get(new) != want:
            raise IntegrityError(dst, f"tensor {new!r} does not carry the source's digest",
                                 "the source or the disk returned different bytes; retry", section=target)
    return len(plan.route)


def _by_reread(plan: WritePlan, dst: str, src: str = "",
               origins: dict[tuple[str, str], tuple[int, int]] | None = None,
               mapping: Any = None) -> int:
    """Read every tensor of ``dst`` back from disk (plain reads: no map, no memory growth) and
    check its sha256 against the digest the writer took of the source's bytes, and its name,
    dtype and shape against the plan. A tensor lying whole in the source file is compared byte
    for byte instead, with the source's map (``mapping``) when there is one: the output is read
    once and the source not at all (its pages are released again behind the comparison)."""
    with open_checkpoint(dst) as ck:
        members = {m: ck._members[m] for m in (s.path for s in ck.sections() if s.tensors is not None)}
        layout = {}
        for sec in ck.sections():
            if sec.tensors is None or not sec.name:
                continue
            tensors = ck.tensors(sec.name)
            base = members[sec.path].data_offset + 8 + _header_len(ck, sec.path)
            # frames: a compressed section's (1.2), whose tensors are decoded to be hashed
            layout[sec.name] = (sec.tensors, tensors.entries, base, tensors.frames)
    jobs = []
    for target, specs in plan.targets.items():
        table, entries, base, frames = layout.get(target, (None, {}, 0, None))
        aliases = table.aliases if table else {}
        for name, code, shape, _ in specs:
            stored = aliases.get(name, name)
            e = entries.get(stored)
            if e is None or e.dtype != code or tuple(e.shape) != tuple(shape):
                raise IntegrityError(dst, f"tensor {name!r} is missing or has the wrong dtype/shape "
                                     "after writing", section=target)
            if stored == name:
                origin = (origins or {}).get((target, name))
                if frames is not None:  # compressed: (offset, n) name the frames, never compared raw
                    origin, where = None, frames[name]
                else:
                    where = base + e.begin
                jobs.append((target, name, where, e.nbytes, table.digests[name], origin))
    fd = os.open(dst, os.O_RDONLY)
    use_file = src and os.path.isfile(src) and origins and mapping is None
    sfd = os.open(src, os.O_RDONLY) if use_file else -1

    def check(job: tuple[Any, ...]) -> bool:
        _, _, offset, n, want, origin = job
        if not isinstance(offset, int):  # a compressed tensor's frames
            from ..container import codec, compressed
            try:
                return compressed.digest(lambda at, k: os.pread(fd, k, at), offset) == want
            except codec.FrameError:
                return False
        if origin is not None and mapping is not None and origin[1] == n:
            return _pread_equal_map(fd, offset, mapping, origin[0], n)  # one read, then memcmp
        if origin is not None and sfd >= 0 and origin[1] == n:
            return _pread_equal(fd, offset, sfd, origin[0], n)  # memcmp: cheaper than a hash
        return _pread_sha(fd, offset, n) == want

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for job, ok in zip(jobs, pool.map(check, jobs)):
                if not ok:
                    raise IntegrityError(dst, f"tensor {job[1]!r} read back differs from the source",
                                         "the disk returned different bytes; retry", section=job[0])
    finally:
        os.close(fd)
        if sfd >= 0:
            os.close(sfd)
    return sum(len(specs) for specs in plan.targets.values())


def _header_len(ck: Any, rel: str) -> int:
    m = ck._members[rel]
    return int.from_bytes(ck.read_bytes(m.data_offset, 8), "little")


def _pread_equal(fd: int, offset: int, sfd: int, soffset: int, n: int) -> bool:
    chunk = 8 << 20
    while n > 0:
        k = min(chunk, n)
        a, b = os.pread(fd, k, offset), os.pread(sfd, k, soffset)
        if len(a) != k or a != b:
            return False
        offset, soffset, n = offset + k, soffset + k, n - k
    return True


_local = threading.local()


def _pread_equal_map(fd: int, offset: int, mapping: Any, soffset: int, n: int) -> bool:
    """Output bytes read into a reused per-thread buffer, compared (``bytearray ==`` is a memcmp)
    with the source map's; the map's pages are dropped from this process behind the comparison,
    so its memory stays at the chunks in flight."""
    chunk = 8 << 20
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(chunk)
    src = memoryview(mapping)
    page = mmap.PAGESIZE
    try:
        while n > 0:
            k = min(chunk, n)
            b = buf if k == chunk else bytearray(k)
            if os.preadv(fd, [b], offset) != k or b != src[soffset:soffset + k]:
                return False
            lo, hi = soffset // page * page, (soffset + k) // page * page
            if hi > lo and hasattr(mapping, "madvise"):
                try:
                    mapping.madvise(mmap.MADV_DONTNEED, lo, hi - lo)  # clean: refetched if touched
                except (OSError, ValueError):
                    pass
            offset, soffset, n = offset + k, soffset + k, n - k
        return True
    finally:
        src.release()


def _pread_sha(fd: int, offset: int, n: int) -> str:
    h = hashlib.sha256()
    chunk = 8 << 20
    while n > 0:
        data = os.pread(fd, min(chunk, n), offset)
        if not data:
            raise OSError("unexpected end of file")
        h.update(data)
        offset += len(data)
        n -= len(data)
    return h.hexdigest()
