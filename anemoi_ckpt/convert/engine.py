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
from ..errors import IntegrityError
from ..progress import Progress
from ..reader import open_checkpoint
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


def convert(src: str | os.PathLike, dst: str | os.PathLike | None, *, source_format: str | None = None,
            dry_run: bool = False, durable: bool = True, progress: bool | None = None) -> ConvertReport:
    """Convert ``src`` into an ``.anc`` at ``dst`` (nothing is written when ``dry_run``)."""
    from ..writer import Writer

    source: Source = detect(src, source_format)
    try:
        report = ConvertReport(source=source.path, output=None if dry_run else os.fspath(dst),
                               format=source.format, kind=source.kind,
                               source_sha256=file_sha256(source.path),
                               anemoi_metadata=source.anemoi_metadata is not None,
                               details=source.details)
        if dry_run:  # from the specs alone: no tensor byte is read
            report.tensors = {sec: len(specs) for sec, specs in source.specs.items()}
            report.bytes = sum(spec[3] for specs in source.specs.values() for spec in specs)
            return report
        parents = []
        if source.anemoi_metadata and isinstance(source.anemoi_metadata.get("uuid"), str):
            parents.append({"uuid": source.anemoi_metadata["uuid"], "role": "source"})
        params = {"source": os.path.basename(source.path), "source_sha256": report.source_sha256,
                  "source_format": source.format, "tool_version": __version__, "steps": []}
        keep_alive = []  # views over the source map: aliases are detected only among live tensors
        total = sum(spec[3] for specs in source.specs.values() for spec in specs)
        with Progress.for_bytes(total, f"converting {os.path.basename(source.path)}", progress) as bar, \
                Writer(dst, kind=source.kind, metadata=source.extra_metadata,
                       anemoi_metadata=source.anemoi_metadata,
                       supporting_arrays=source.supporting_arrays, parents=parents,
                       operation="convert", parameters=params, durable=durable, progress=bar) as w:
            for section, tensors in source.sections.items():
                if section in source.specs:
                    w.begin_section(section, source.specs[section])
                for name, t in tensors():
                    keep_alive.append(t)
                    w.add(name, t, section=section)
                    report.tensors[section] = report.tensors.get(section, 0) + 1
                    report.bytes += t.numel() * t.element_size()
        keep_alive.clear()
        report.uuid, report.content_id = w.uuid, w.content_id
        report.verified = _compare(source, os.fspath(dst))
        return report
    finally:
        source.close()


def _compare(source: Source, dst: str) -> int:
    """Read every tensor back from ``dst`` and compare its bytes with the source's."""
    import torch

    n = 0
    with open_checkpoint(dst) as ck:
        for section, tensors in source.sections.items():
            written = ck.tensors(section)
            for name, t in tensors():
                got = written[name]
                if got.dtype != t.dtype or tuple(got.shape) != tuple(t.shape) \
                        or not torch.equal(_raw(got), _raw(t)):
                    raise IntegrityError(dst, f"tensor {name!r} differs from the source after "
                                         "writing", "the disk or memory corrupted data; retry",
                                         section=section)
                n += 1
    return n
