"""``convert``: stream a foreign checkpoint into an ``.anc``, then prove it bit for bit.

Tensors go from a memory map of the source straight into the writer, one at a time, so memory
stays bounded by the largest tensor. After the atomic commit every tensor is read back from the
new file and compared byte for byte with the source; the report says how many matched.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import __version__
from ..errors import FormatError, IntegrityError, UsageError
from ..progress import Progress
from ..reader import open_checkpoint
from .plan import CAST_CODES, WritePlan, build_plan, rename_in_document
from .sources import Source, detect


@dataclass
class ConvertReport:
    source: str
    output: str | None
    format: str
    kind: str
    source_sha256: str
    tensors: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    verified: int = 0
    uuid: str | None = None
    content_id: str | None = None
    anemoi_metadata: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                for start in range(0, len(mm), 64 << 20):  # hashlib releases the GIL per chunk
                    h.update(view[start:start + (64 << 20)])
                view.release()
    return h.hexdigest()


def _raw(t: Any) -> Any:
    import torch

    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8) if flat.numel() and flat.dtype != torch.uint8 else flat


def _translate(source: Source, keep_layout: bool) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """(renames per section, anemoi metadata, steps applied) bringing the source's layout to the
    newest one; identity with ``keep_layout``."""
    if keep_layout:
        return {}, source.anemoi_metadata, []
    from ..translate import TranslationInput, translate

    inp = TranslationInput(source_format=source.format,
                           sections={sec: [spec[0] for spec in specs] for sec, specs in source.specs.items()},
                           anemoi_metadata=source.anemoi_metadata)
    result = translate(inp, keep_layout=False)
    return result.renames, result.anemoi_metadata, result.applied


def _arrays_for(md: dict[str, Any] | None, arrays: dict[str, Any] | None) -> dict[str, Any] | None:
    """Supporting arrays nested the way the (translated) metadata lists them: the 1.0 -> 2.0
    step moves a single dataset's flat arrays under its dataset name."""
    paths = (md or {}).get("supporting_arrays_paths")
    if not arrays or not isinstance(paths, dict) or set(paths) == set(arrays):
        return arrays
    if len(paths) == 1:
        (dataset, inner), = paths.items()
        if isinstance(inner, dict) and set(inner) == set(arrays):
            return {dataset: arrays}
    return arrays


def convert(src: str | os.PathLike, dst: str | os.PathLike | None, *, source_format: str | None = None,
            dry_run: bool = False, durable: bool = True, progress: bool | None = None,
            keep_layout: bool = False, dtype: str | None = None,
            optimizer_positional: bool = False) -> ConvertReport:
    """Convert ``src`` into an ``.anc`` at ``dst`` (nothing is written when ``dry_run``).

    By default the tensor names and anemoi metadata are brought to the newest anemoi layout by
    the translation steps (each applied step is recorded in the lineage); ``keep_layout`` writes
    the source layout unchanged. ``dtype`` casts the floating-point weights (not optimizer state).
    ``optimizer_positional`` keeps a Lightning optimizer's state under index-based names when it
    cannot be matched to parameter names.
    """
    from ..writer import Writer

    if dtype is not None and dtype not in CAST_CODES:
        raise UsageError(os.fspath(src), f"unknown --dtype {dtype!r}", f"one of {', '.join(CAST_CODES)}")
    source: Source = detect(src, source_format, {"optimizer_positional": optimizer_positional})
    try:
        report = ConvertReport(source=source.path, output=None if dry_run else os.fspath(dst),
                               format=source.format, kind=source.kind,
                               source_sha256=file_sha256(source.path),
                               anemoi_metadata=source.anemoi_metadata is not None,
                               details=source.details)
        renames, anemoi_md, applied = _translate(source, keep_layout)
        try:
            plan = build_plan(source.specs, renames, dtype)
        except ValueError as e:
            raise FormatError(source.path, f"translation clash: {e}") from None
        report.steps = [step["name"] for step in applied]
        report.documents = sorted(source.documents)
        if dry_run:  # from the specs alone: no tensor byte is read
            report.tensors = {sec: len(specs) for sec, specs in plan.targets.items()}
            report.bytes = sum(spec[3] for specs in plan.targets.values() for spec in specs)
            return report
        parents = []
        if anemoi_md and isinstance(anemoi_md.get("uuid"), str):
            parents.append({"uuid": anemoi_md["uuid"], "role": "source"})
        params = {"source": os.path.basename(source.path), "source_sha256": report.source_sha256,
                  "source_format": source.format, "source_versions": _versions(source, source.anemoi_metadata),
                  "tool_version": __version__, "steps": applied, "keep_layout": keep_layout,
                  **({"dtype": dtype} if dtype else {})}
        weights_renames = {old: new for old, (sec, new) in (renames.get("weights") or {}).items()
                           if sec == "weights" and old != new}
        total = sum(spec[3] for specs in source.specs.values() for spec in specs)
        with Progress.for_bytes(total, f"converting {os.path.basename(source.path)}", progress) as bar, \
                Writer(dst, kind=source.kind, metadata=source.extra_metadata,
                       anemoi_metadata=anemoi_md,
                       supporting_arrays=_arrays_for(anemoi_md, source.supporting_arrays),
                       parents=parents,
                       operation="convert", parameters=params, durable=durable, progress=bar,
                       keep_anemoi_uuid=True) as w:
            _write(source, plan, w, report)
            for name, doc in source.documents.items():
                w.add_document(name, rename_in_document(doc, weights_renames))
        report.uuid, report.content_id = w.uuid, w.content_id
        report.verified = _compare(source, plan, os.fspath(dst))
        return report
    finally:
        source.close()


def _versions(source: Source, md: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if source.details.get("lightning_version"):
        out["pytorch-lightning"] = source.details["lightning_version"]
    versions = ((md or {}).get("provenance_training") or {}).get("module_versions") or {}
    for key in ("anemoi.models", "anemoi.training", "torch"):
        value = versions.get(key) if isinstance(versions, dict) else None
        value = value.get("version") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    if md and md.get("version") is not None:
        out["metadata"] = str(md["version"])
    return out


def _cast(t: Any, code: str | None) -> Any:
    if code is None:
        return t
    from ..dtypes import CODE_TO_TORCH

    return t.to(CODE_TO_TORCH[code])


def _write(source: Source, plan: WritePlan, w: Any, report: ConvertReport) -> None:
    """Stream source sections into their targets; tensors moved to another section wait (as
    lazy views) until that section is written."""
    order = plan.order(list(source.sections))
    pending: dict[str, list[tuple[str, Any]]] = {}
    keep_alive = []  # views over the source map: aliases are detected only among live tensors
    written: list[str] = []

    def flush(target: str) -> None:
        for new, t in pending.pop(target, []):
            w.add(new, t, section=target)
            report.tensors[target] = report.tensors.get(target, 0) + 1

    for section, tensors in source.sections.items():
        own = section if section in plan.targets else None
        if own is not None:
            w.begin_section(own, plan.targets[own])
            written.append(own)
        for name, t in tensors():
            target, new, code = plan.route[(section, name)]
            t = _cast(t, code)
            keep_alive.append(t)
            report.bytes += t.numel() * t.element_size()
            if target == own:
                w.add(new, t, section=target)
                report.tensors[target] = report.tensors.get(target, 0) + 1
            elif target in written:
                raise FormatError(source.path, f"{section}/{name} moves to section {target!r}, "
                                  "which was already written")
            else:
                pending.setdefault(target, []).append((new, t))
        if own is not None:
            flush(own)
    for target in order:
        if target in pending:
            w.begin_section(target, plan.targets[target])
            flush(target)
    keep_alive.clear()


def _compare(source: Source, plan: WritePlan, dst: str) -> int:
    """Read every tensor back from ``dst`` and compare its bytes with the (cast) source's."""
    import torch

    n = 0
    with open_checkpoint(dst) as ck:
        for section, tensors in source.sections.items():
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
