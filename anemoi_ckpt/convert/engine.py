"""``convert``: stream a foreign checkpoint into an ``.anc``, then prove it bit for bit.

Tensors go from a memory map of the source straight into the writer, one at a time, so memory
stays bounded by the largest tensor. After the atomic commit every tensor is read back from the
new file and compared byte for byte with the source (sections copied unchanged from an ``.anc``
are proven while they are copied, before the commit); the report says how many matched.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..errors import FormatError, UsageError
from ..remote.download import check_remote_output, localized
from ..progress import Progress
from ..container.urls import is_remote
from .anc_source import check_not_same
from .lineage_info import lineage_info
from .plan import CAST_CODES, PlanError, build_plan, rename_in_document, select_sections
from .stream import verify_output, write_tensors
from .sources import Source, detect


@dataclass
class ConvertReport:
    source: str
    output: str | None
    format: str
    kind: str
    source_sha256: str | None
    tensors: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    verified: int = 0
    uuid: str | None = None
    content_id: str | None = None
    anemoi_metadata: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)
    #: which weights became ``weights``: "raw" (live) or "ema" (weight-averaged); None if moot
    weights: str | None = None
    #: how the output was proven: "re-read" (bytes compared) or "digest" (an .anc source's sha256)
    verified_by: str | None = None
    #: tensor sections copied as bytes from an .anc source (unchanged), hashed as they were copied
    copied: list[str] = field(default_factory=list)
    #: source members kept byte for byte under carried/ (not understood, or translated metadata)
    carried: list[str] = field(default_factory=list)
    #: how tensor sections are stored: "zstd:LEVEL" (format 1.2 compressed) or "none"
    compression: str | None = None
    #: the output file's size in bytes (None for a dry run)
    stored_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: str) -> str:
    """sha256 of a file, hashed straight from the page cache through short-lived read-only map
    windows: no copy into this process (a ``read`` into a buffer cost a memory pass as large as
    the file, about a third of this hash's time), and each window is unmapped before the next, so
    the pages never accumulate in this process's memory (hashlib releases the GIL per window).
    Files that cannot be mapped are read through one reused buffer."""
    h = hashlib.sha256()
    window = 16 << 20
    with open(path, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        size = st.st_size
        try:
            if not stat.S_ISREG(st.st_mode):
                raise OSError("not a regular file")
            for off in range(0, size, window):
                n = min(window, size - off)
                with mmap.mmap(fh.fileno(), n, offset=off, access=mmap.ACCESS_READ) as mm:
                    if hasattr(mm, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
                        mm.madvise(mmap.MADV_WILLNEED)  # a cold file: read the window ahead
                    h.update(mm)
            return h.hexdigest()
        except (OSError, ValueError):  # not mappable (a pipe, a special file): plain reads
            h = hashlib.sha256()
            fh.seek(0)
            buf = bytearray(window)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                h.update(view[:n])
            return h.hexdigest()


def _translate(source: Source, keep_layout: bool) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """(renames per section, anemoi metadata, steps applied) bringing the source's layout to the
    newest one; identity with ``keep_layout``."""
    if keep_layout:
        return {}, source.anemoi_metadata, []
    from ..translate import TranslationInput, translate
    from ..translate.engine import refuse_uncovered

    inp = TranslationInput(source_format=source.format, label=source.path,
                           sections={sec: [spec[0] for spec in specs] for sec, specs in source.specs.items()},
                           anemoi_metadata=source.anemoi_metadata)
    refuse_uncovered(inp)
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
            optimizer_positional: bool = False, to: str | None = None, weights: str = "auto",
            keep_dtype: Iterable[str] = (), cast_only: Iterable[str] = (),
            base: str | os.PathLike | None = None, compress: str | None = None) -> ConvertReport:
    """Convert ``src`` into an ``.anc`` at ``dst`` (nothing is written when ``dry_run``).

    By default the tensor names and anemoi metadata are brought to the newest anemoi layout by
    the translation steps (each applied step is recorded in the lineage); ``keep_layout`` writes
    the source layout unchanged. ``to="inference"`` keeps only the model weights, graph,
    buffers, anemoi metadata and supporting arrays; ``weights`` picks the live (``raw``) or the
    weight-averaged (``ema``) copy, ``auto`` the averaged one when there is one. ``dtype`` casts
    floating-point weights (never optimizer state), except names matching ``keep_dtype`` globs;
    ``cast_only`` globs restrict the cast to matching tensors. ``optimizer_positional`` keeps a
    Lightning optimizer's state under index-based names when it cannot be matched to names.
    ``base`` (PEFT adapters): the base ``.anc`` the adapter was trained on; every adapter tensor
    is checked against it (refused otherwise) and it is recorded as the adapter's base.
    ``compress``: ``"zstd"``/``"zstd:LEVEL"`` writes compressed tensor sections (format 1.2),
    ``"none"`` uncompressed (memory-mappable) ones; None keeps an ``.anc`` source's encoding
    (its weights section's) and writes other sources uncompressed. The content id is the same.
    """
    from ..writer import Writer

    src_path = os.fspath(src)
    if dst is not None:
        check_remote_output(dst)
    if is_remote(src_path):
        # A URL: the whole source is needed (and a pickle is only read from a local file), so
        # it is fetched once to a temporary copy under its own name, then converted from there.
        with localized(src_path, progress=progress) as local:
            report = convert(local, dst, source_format=source_format, dry_run=dry_run,
                             durable=durable, progress=progress, keep_layout=keep_layout,
                             dtype=dtype, optimizer_positional=optimizer_positional, to=to,
                             weights=weights, keep_dtype=keep_dtype, cast_only=cast_only, base=base,
                             compress=compress)
        report.source = src_path
        return report
    if dtype is not None and dtype not in CAST_CODES:
        raise UsageError(src_path, f"unknown --dtype {dtype!r}", f"one of {', '.join(CAST_CODES)}")
    if to not in (None, "inference", "training"):
        raise UsageError(src_path, f"unknown --to {to!r}", "inference or training")
    if weights not in ("auto", "raw", "ema"):
        raise UsageError(src_path, f"unknown --weights {weights!r}", "auto, raw or ema")
    from ..container.codec import parse_compress

    try:
        parse_compress(compress)
    except ValueError as e:
        raise UsageError(src_path, f"--compress: {e}") from None
    if not dry_run:
        check_not_same(src_path, dst)
    source: Source = detect(src, source_format, {"optimizer_positional": optimizer_positional})
    try:
        kind = "inference" if to == "inference" else source.kind
        if compress is None and source.anc is not None:
            compress = source.anc.compression
        chosen = parse_compress(compress)
        report_compression = "none" if chosen is None else f"zstd:{chosen.level}"
        report = ConvertReport(source=source.path, output=None if dry_run else os.fspath(dst),
                               format=source.format, kind=kind,
                               # an .anc vouches for itself (uuid, content id, digests)
                               source_sha256=None,
                               anemoi_metadata=source.anemoi_metadata is not None,
                               details=source.details, compression=report_compression)
        renames, anemoi_md, applied = _translate(source, keep_layout)
        try:
            sections, used = select_sections(list(source.specs), to, weights)
            plan = build_plan(source.specs, renames, dtype, sections=sections,
                              keep_dtype=keep_dtype, cast_only=cast_only)
        except PlanError as e:
            raise FormatError(source.path, str(e)) from None
        except ValueError as e:
            raise FormatError(source.path, f"translation clash: {e}") from None
        if not plan.targets.get("weights"):
            raise FormatError(source.path, "the source has no model weights")
        # adapters: checked against --base before anything is written (dry runs included)
        extra_md: dict[str, Any] | None = dict(source.extra_metadata) if source.extra_metadata else None
        base_parents: list[Any] = []  # link_base's own answer for other sources
        if source.kind == "adapter" or base is not None:
            # imported only here: the adapters package takes tens of ms to import, a fixed cost
            # every other conversion paid
            from ..adapters.attach import link_base

            extra_md, base_parents = link_base(source.kind, source.format, plan.targets["weights"],
                                               source.extra_metadata, src_path, base)
        report.weights = used if "weights-ema" in source.specs or to == "inference" else None
        report.steps = [step["name"] for step in applied]
        documents = {} if to == "inference" else source.documents
        report.documents = sorted(documents)
        carried = _carried(source, anemoi_md)
        report.carried = sorted(carried)
        if dry_run:  # from the specs alone: no tensor byte is read
            report.tensors = {sec: len(specs) for sec, specs in plan.targets.items()}
            report.bytes = sum(spec[3] for specs in plan.targets.values() for spec in specs)
            return report
        # The source's sha256 (for lineage) is computed beside the conversion, not before it.
        hasher = None if source.format == "anc" else ThreadPoolExecutor(1)
        sha_future = hasher.submit(file_sha256, source.path) if hasher else None
        parents: list[Any] = list(source.parents)
        if not parents and anemoi_md and isinstance(anemoi_md.get("uuid"), str):
            parents.append({"uuid": anemoi_md["uuid"], "role": "source"})
        parents += base_parents
        params = {"source": os.path.basename(source.path), "source_sha256": report.source_sha256,
                  "source_format": source.format, "source_versions": _versions(source, source.anemoi_metadata),
                  "tool_version": __version__, "steps": applied, "keep_layout": keep_layout,
                  **({"to": to} if to else {}), **({"weights": used} if report.weights else {}),
                  **({"dtype": dtype} if dtype else {}),
                  **({"compress": compress} if compress and compress != "none" else {}),
                  **({"keep_dtype": list(keep_dtype)} if keep_dtype else {}),
                  **({"cast_only": list(cast_only)} if cast_only else {})}
        weights_renames = {old: new for old, (sec, new) in (renames.get("weights") or {}).items()
                           if sec == "weights" and old != new}
        total = sum(spec[3] for specs in plan.targets.values() for spec in specs)
        with Progress.for_bytes(total, f"converting {os.path.basename(source.path)}", progress) as bar, \
                Writer(dst, kind=kind, metadata=extra_md,
                       anemoi_metadata=anemoi_md,
                       supporting_arrays=_arrays_for(anemoi_md, source.supporting_arrays),
                       parents=parents, lineage_info=lineage_info(anemoi_md),
                       operation="convert", parameters=params, durable=durable, progress=bar,
                       keep_anemoi_uuid=True, compress=compress) as w:
            origins = write_tensors(source, plan, w, report)
            for name, doc in documents.items():
                w.add_document(name, rename_in_document(doc, weights_renames))
            for member in report.carried:
                w.add_carried(member, carried[member]())
            if sha_future is not None:
                if not sha_future.done():
                    w.start_writeback()  # the disk writes while the source's hash finishes
                report.source_sha256 = sha_future.result()
                w.update_parameters(source_sha256=report.source_sha256)
        if hasher is not None:
            hasher.shutdown()
        report.uuid, report.content_id = w.uuid, w.content_id
        report.stored_bytes = os.path.getsize(os.fspath(dst))
        try:
            report.verified, report.verified_by = verify_output(source, plan, os.fspath(dst), origins,
                                                                report.copied)
        except BaseException:
            # The file is committed but does not hold the source's bytes: never leave it behind.
            os.unlink(os.fspath(dst))
            raise
        return report
    finally:
        source.close()


def _carried(source: Source, anemoi_md: dict[str, Any] | None) -> dict[str, Any]:
    """Source members to keep byte for byte: those no reader understood, and the anemoi metadata
    member as it was when the output's differs from it (translated, or under an older name), so
    the document anemoi wrote stays readable in the new file."""
    carried = dict(source.carried)
    if source.metadata_source is not None:
        member, raw = source.metadata_source
        from ..container.sections import ANEMOI_FOLDER, ANEMOI_JSON
        if anemoi_md != source.anemoi_metadata or member != f"{ANEMOI_FOLDER}/{ANEMOI_JSON}":
            carried[member] = lambda raw=raw: raw
    return carried


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
