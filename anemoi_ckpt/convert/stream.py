"""Moving tensors from a source into the writer along a plan, then proving the output.

Source sections are streamed in order; a tensor the plan moves to another section waits (as a
lazy view) until that section is written. Pages of a file-mapped source are dropped from this
process once their tensor is written and hashed, so memory stays near the largest tensor.

The proof: the writer hashes (sha256) the very bytes it takes from the source. For an ``.anc``
source with nothing cast, those digests must equal the source manifest's (no second pass over
the data). Otherwise every tensor is read back from the new file with plain reads (no map) and
its sha256 must equal the digest of the source bytes: a bit-for-bit comparison by hash.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import FormatError, IntegrityError
from ..reader import open_checkpoint
from .plan import WritePlan
from .sources import Source


def _cast(t: Any, code: str | None) -> Any:
    if code is None:
        return t
    from ..dtypes import CODE_TO_TORCH

    return t.to(CODE_TO_TORCH[code])


def _releaser(mapping: Any) -> Callable[[Any], Callable[[], None] | None]:
    """For a tensor viewing ``mapping``, a callable dropping its pages from this process (the
    file keeps them; a later read faults them back in). None for tensors elsewhere (copies)."""
    if mapping is None or not hasattr(mapping, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return lambda t: None
    import torch

    size = len(mapping)
    base = torch.frombuffer(mapping, dtype=torch.uint8, count=1).data_ptr() if size else 0
    page = mmap.PAGESIZE

    def for_tensor(t: Any) -> Callable[[], None] | None:
        start = t.data_ptr() - base
        n = t.numel() * t.element_size()
        if n == 0 or start < 0 or start + n > size:
            return None
        lo, hi = start // page * page, -(-(start + n) // page) * page

        def release() -> None:
            try:
                mapping.madvise(mmap.MADV_DONTNEED, lo, min(hi, size) - lo)
            except (OSError, ValueError):
                pass  # closed or not releasable: memory is only an optimisation here
        return release
    return for_tensor


def write_tensors(source: Source, plan: WritePlan, w: Any, report: Any) -> None:
    releaser = _releaser(source.mapping)
    order = plan.order(list(source.sections))
    pending: dict[str, list[tuple[str, Any]]] = {}
    # Views over the source map stay referenced so that a later view of the same storage is
    # recognised as an alias (the tracker holds weak references); they cost no memory once their
    # pages are released. Copies (safetensors sources) are never aliases: they are let go.
    keep_alive: list[Any] = []
    zero_copy = source.mapping is not None
    written: list[str] = []

    def put(target: str, name: str, t: Any) -> None:
        w.add(name, t, section=target, release=releaser(t))
        report.tensors[target] = report.tensors.get(target, 0) + 1

    for section, tensors in source.sections.items():
        if not any(s == section for s, _ in plan.route):
            continue  # dropped (e.g. optimizer state for an inference file): never read
        own = plan.route_target(section)
        if own is not None and own not in written:
            w.begin_section(own, plan.targets[own])
            written.append(own)
        for name, t in tensors():
            target, new, code = plan.route[(section, name)]
            t = _cast(t, code)
            if zero_copy:
                keep_alive.append(t)
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


def verify_output(source: Source, plan: WritePlan, dst: str) -> tuple[int, str]:
    """(tensors proven, how): by digest when the source vouches for every routed tensor's
    bytes and none was cast, else by reading back and comparing bytes."""
    if source.digests is not None and all(code is None for _, _, code in plan.route.values()):
        return _by_digest(source, plan, dst), "digest"
    return _by_reread(plan, dst), "re-read"


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


def _by_reread(plan: WritePlan, dst: str) -> int:
    """Read every tensor of ``dst`` back from disk (plain reads: no map, no memory growth) and
    check its sha256 against the digest the writer took of the source's bytes, and its name,
    dtype and shape against the plan."""
    with open_checkpoint(dst) as ck:
        members = {m: ck._members[m] for m in (s.path for s in ck.sections() if s.tensors is not None)}
        layout = {}
        for sec in ck.sections():
            if sec.tensors is None or not sec.name:
                continue
            entries = ck.tensors(sec.name).entries
            base = members[sec.path].data_offset + 8 + _header_len(ck, sec.path)
            layout[sec.name] = (sec.tensors, entries, base)
    jobs = []
    for target, specs in plan.targets.items():
        table, entries, base = layout.get(target, (None, {}, 0))
        aliases = table.aliases if table else {}
        for name, code, shape, _ in specs:
            stored = aliases.get(name, name)
            e = entries.get(stored)
            if e is None or e.dtype != code or tuple(e.shape) != tuple(shape):
                raise IntegrityError(dst, f"tensor {name!r} is missing or has the wrong dtype/shape "
                                     "after writing", section=target)
            if stored == name:
                jobs.append((target, name, base + e.begin, e.nbytes, table.digests[name]))
    fd = os.open(dst, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            for (target, name, _, _, want), got in zip(jobs, pool.map(lambda j: _pread_sha(fd, j[2], j[3]), jobs)):
                if got != want:
                    raise IntegrityError(dst, f"tensor {name!r} read back differs from the source",
                                         "the disk returned different bytes; retry", section=target)
    finally:
        os.close(fd)
    return sum(len(specs) for specs in plan.targets.values())


def _header_len(ck: Any, rel: str) -> int:
    m = ck._members[rel]
    return int.from_bytes(bytes(ck._mm[m.data_offset:m.data_offset + 8]), "little")


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
