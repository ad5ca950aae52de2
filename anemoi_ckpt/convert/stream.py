"""Moving tensors from a source into the writer along a plan, then proving the output.

Source sections are streamed in order; a tensor the plan moves to another section waits (as a
lazy view) until that section is written. The proof: for an ``.anc`` source with nothing cast,
the sha256 the writer computed over every byte it wrote must equal the digest the source's
manifest records (no second pass over the data); otherwise every tensor is read back from the
new file and compared byte for byte with the (cast) source tensor.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError, IntegrityError
from ..reader import open_checkpoint
from .plan import WritePlan
from .sources import Source


def _raw(t: Any) -> Any:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() and flat.dtype != torch.uint8 else flat


def _cast(t: Any, code: str | None) -> Any:
    if code is None:
        return t
    from ..dtypes import CODE_TO_TORCH

    return t.to(CODE_TO_TORCH[code])


def write_tensors(source: Source, plan: WritePlan, w: Any, report: Any) -> None:
    order = plan.order(list(source.sections))
    pending: dict[str, list[tuple[str, Any]]] = {}
    keep_alive = []  # views over the source map: aliases are detected only among live tensors
    written: list[str] = []

    def put(target: str, name: str, t: Any) -> None:
        w.add(name, t, section=target)
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
    return _by_bytes(source, plan, dst), "re-read"


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


def _by_bytes(source: Source, plan: WritePlan, dst: str) -> int:
    import torch

    n = 0
    with open_checkpoint(dst) as ck:
        for section, tensors in source.sections.items():
            if not any(s == section for s, _ in plan.route):
                continue
            for name, t in tensors():
                target, new, code = plan.route[(section, name)]
                t = _cast(t, code)
                got = ck.tensors(target)[new]
                if got.dtype != t.dtype or tuple(got.shape) != tuple(t.shape) \
                        or not torch.equal(_raw(got), _raw(t)):
                    raise IntegrityError(dst, f"tensor {new!r} differs from the source after "
                                         "writing", "the disk or memory corrupted data; retry",
                                         section=target)
                n += 1
    return n
