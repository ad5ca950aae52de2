"""Writing ``.anc`` files: the streaming :class:`Writer` and the one-shot :func:`save`."""

from __future__ import annotations

import json
import os
import re
import uuid as uuidlib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .container import hashing
from .container import sections as S
from .anemoi_meta import arrays_paths, iter_arrays
from .container.atomic import atomic_output
from .errors import FormatError
from .lineage.build import build_lineage, resolve_parents, utc_now
from .progress import Progress
from .container.schema import FORMAT_VERSION, Kind, Manifest, Metadata, Producer, Section
from .container.dtypes import code_of
from .container.tensorio import AliasTracker, flatten
from .container.tensorsection import TensorSectionWriter, exact_reserve
from .container.zipwrite import ZipWriter
from .tensormap import TensorMapping

if TYPE_CHECKING:
    from .container.codec import Compression

_KINDS = ("training", "inference", "adapter", "delta")


def _root_name(path: str) -> str:
    """One root folder, named after the file like torch.save does (anemoi-utils needs exactly one)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).strip(".")
    return stem or "checkpoint"


def _json_bytes(obj: Any, *, allow_nan: bool = False) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=allow_nan, separators=(",", ":"),
                      sort_keys=False).encode("utf-8")


class DocumentError(ValueError):
    """A document that cannot be written as JSON the reader accepts (the reason, one line)."""


def document_bytes(obj: Any) -> bytes:
    """``obj`` as a document's bytes, proven readable: encoded as strict JSON (no NaN, UTF-8
    without lone surrogates) and decoded back under the reader's rules (no duplicate key, at most
    ``MAX_JSON_DEPTH`` levels), so nothing is written that ``Checkpoint.document`` would refuse.
    Raises :class:`DocumentError` naming the problem."""
    from .container.schema import MAX_JSON_DEPTH, json_depth
    from .reader import _DuplicateKey, _unique_keys

    try:
        data = _json_bytes(obj)
    except RecursionError:
        raise DocumentError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, TypeError, UnicodeEncodeError) as e:  # NaN, a non-JSON type, a lone surrogate
        raise DocumentError(f"not strict JSON ({type(e).__name__}: {str(e)[:120]})") from None
    try:
        back = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise DocumentError(f"duplicate JSON key {str(e)[:80]!r} (keys that collide once written "
                            "as JSON text)") from None
    except RecursionError:
        raise DocumentError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer longer than the parser reads
        raise DocumentError(f"not readable back ({str(e)[:120]})") from None
    if json_depth(back) > MAX_JSON_DEPTH:
        raise DocumentError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return data


class Writer:
    """Writes an ``.anc`` tensor by tensor, with memory bounded by the largest tensor.

    Use as a context manager: leaving the block normally commits the file atomically; an
    exception discards it and leaves any previous file at ``path`` untouched.

    Tensor sections are written one after the other: adding to a section closes the previous
    one, and a closed section cannot be reopened.

    ``parents`` (open checkpoints, paths, ``ParentRef``s or ``{"uuid", "content_id"}`` dicts) and
    ``operation``/``parameters`` make this file's lineage record; ancestors' records are copied
    in. ``header_reserve`` is the room kept for each section's safetensors header (a larger
    header still works: the data is moved up in bounded chunks). ``durable=False`` skips fsync.
    ``compress`` (``"zstd"``, ``"zstd:LEVEL"``, ``"none"`` or None = none) writes every tensor
    section compressed (format 1.2; same digests and content id as uncompressed).
    """

    def __init__(self, path: str | os.PathLike, *, kind: Kind = "inference",
                 metadata: Metadata | Mapping[str, Any] | None = None,
                 anemoi_metadata: Mapping[str, Any] | None = None,
                 supporting_arrays: Mapping[str, Any] | None = None,
                 parents: Iterable[Any] = (), operation: str | None = None,
                 parameters: Mapping[str, Any] | None = None,
                 header_reserve: int = 64 << 10, progress: Progress | None = None,
                 durable: bool = True, keep_anemoi_uuid: bool = False,
                 lineage_info: Mapping[str, Any] | None = None,
                 compress: "str | Compression | None" = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(_KINDS)}, not {kind!r}")
        self.path = os.fspath(path)
        self.kind = kind
        from .container.codec import parse_compress

        #: the compression asked for (None: uncompressed, memory-mappable sections)
        self.compression = parse_compress(compress)  # ValueError before any file is made
        from .remote.download import check_remote_output

        check_remote_output(self.path)  # before anything: atomic_output would make "s3:/..." here
        self.uuid = str(uuidlib.uuid4())
        self.metadata = Metadata.model_validate(metadata if metadata is not None else {})
        self._parents = resolve_parents(parents)  # before writing: a bad parent fails fast
        self._operation = operation or "create"
        self._parameters = dict(parameters or {})  # update_parameters() may add to it before close
        self._reserve = header_reserve
        self._durable = durable  # copy_section(prove=True) starts write-back early when fsync follows
        self._keep_anemoi_uuid = keep_anemoi_uuid
        # code_versions, dataset, run_id, config_digest of the lineage record, where known
        self._lineage_info = dict(lineage_info or {})
        self._progress = progress
        self._root = _root_name(self.path)
        self._stack = ExitStack()
        self._fh = self._stack.enter_context(atomic_output(self.path, durable=durable))
        self._pool = self._stack.enter_context(ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)))
        self._crc_pool = self._stack.enter_context(ThreadPoolExecutor(max_workers=1))
        self._zw = ZipWriter(self._fh)
        self._sections: list[Section] = []
        self._open: tuple[str, TensorSectionWriter] | None = None
        self._closed_names: set[str] = set()
        self._aliases: dict[str, AliasTracker] = {}  # per section: aliases never cross sections
        self._weights_entries: list[tuple[str, str, tuple[int, ...], str]] | None = None
        self.content_id: str | None = None
        self._done = False
        try:
            if anemoi_metadata is not None or supporting_arrays:
                self._write_anemoi(dict(anemoi_metadata or {}), supporting_arrays)
        except BaseException:
            self.abort()
            raise

    # --- tensors -------------------------------------------------------------------------------
    def _section(self, section: str, reserve: int | None = None) -> TensorSectionWriter:
        if self._open is not None and self._open[0] == section:
            return self._open[1]
        if not S.valid_section_name(section):
            raise ValueError(f"invalid section name {section!r} (letters, digits, '-' and '_')")
        if section in self._closed_names:
            raise ValueError(f"section {section!r} was already closed; add its tensors together")
        self._close_section()
        args = (self._zw, f"{self._root}/{self._section_rel(section)}", self._pool, self._crc_pool)
        kwargs: dict[str, Any] = {"reserve": self._reserve if reserve is None else reserve,
                                  "on_bytes": self._progress.update if self._progress else None}
        if self.compression is None:
            tw = TensorSectionWriter(*args, **kwargs)
        else:
            from .container.compressedwriter import CompressedSectionWriter

            tw = CompressedSectionWriter(*args, compression=self.compression, **kwargs)
        self._open = (section, tw)
        return tw

    def _section_rel(self, section: str) -> str:
        return S.tensor_section_path(section) if self.compression is None \
            else S.compressed_section_path(section)

    def add(self, name: str, tensor: torch.Tensor, *, section: str = "weights",
            release: Callable[[], None] | None = None, detect_alias: bool = True) -> None:
        """Add one tensor. A tensor sharing storage with one already added (same view) becomes an
        alias of it instead of a second copy. ``detect_alias=False`` for a tensor in a reused
        buffer (``release`` hands it back for the next one): the same address then means new
        bytes, and the earlier tensor's views may still be alive in the hashing threads."""
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        tw = self._section(section)
        if name in tw.names:
            raise ValueError(f"duplicate tensor name {name!r} in section {section!r}")
        if not detect_alias:
            tw.add(name, flatten(tensor), release)
            return
        target = self._aliases.setdefault(section, AliasTracker()).target_of(name, tensor)
        if target is not None:
            tw.add_alias(name, target)
            return
        tw.add(name, flatten(tensor), release)

    def copy_section(self, section: str, source: Any, name: str | None = None, *,
                     prove: bool = False) -> None:
        """Copy tensor section ``name`` of the open ``.anc`` ``source`` unchanged as ``section``:
        the member's bytes by the kernel, its CRC, digests and alias table from the source. The
        caller proves the copy (re-reading it against those digests) after the commit, unless:

        ``prove``: copy through this process instead and hash the bytes as they are written (one
        pass, no re-read): the header and every tensor must match the source's recorded digests,
        else :class:`IntegrityError` before anything is committed. A compressed member is copied
        as it is (its bytes are frames, not the tensors the digests cover): the caller re-reads it.

        A section stored otherwise than this writer's ``compress`` asks (compressed into an
        uncompressed file, or the reverse, or at another level) is re-encoded tensor by tensor
        instead: same tensors, same digests."""
        name = name or section
        if not S.valid_section_name(section) or section in self._closed_names:
            raise ValueError(f"section {section!r} is invalid or already written")
        self._close_section()
        rel = source.tensor_section_rel(name)
        sec, member = source.section(rel), source._members[rel]
        if not _same_encoding(sec.encoding, self.compression):
            self._transcode_section(section, source, name)
            return
        with self._zw.open_member(f"{self._root}/{self._section_rel(section)}") as m:
            if prove and sec.encoding is None:
                self._copy_proven(m, source, name, sec, member)
            elif source.remote is None:
                m.copy_from(source._fh.fileno(), member.data_offset, member.size, member.crc)
            else:  # a URL: the bytes pass through here, in chunks
                step = 8 << 20
                for off in range(0, member.size, step):
                    m.write(source.read_bytes(member.data_offset + off, min(step, member.size - off)))
        if self._progress:
            self._progress.update(member.size)
        self._closed_names.add(section)
        self._sections.append(Section(path=self._section_rel(section), role=S.tensor_role(section),
                                      name=section, required=True, size=member.size, digest=sec.digest,
                                      media_type=S.SAFETENSORS, tensors=sec.tensors,
                                      encoding=sec.encoding))
        if section == "weights":
            table, entries = sec.tensors, source.tensors(name).entries
            by_name = {n: (e.dtype, tuple(e.shape), table.digests[n]) for n, e in entries.items()}
            by_name.update({a: by_name[t] for a, t in table.aliases.items()})
            self._weights_entries = [(n, c, s, d) for n, (c, s, d) in by_name.items()]

    def _transcode_section(self, section: str, source: Any, name: str) -> None:
        """Section ``name`` of ``source`` re-encoded as ``section``, a tensor at a time (a
        compressed source is decoded one tensor at a time: memory stays near the largest)."""
        self._add_mapping(section, source.tensors(name))

    def _add_mapping(self, section: str, mapping: TensorMapping) -> None:
        """An open file's tensor section, stored tensors in payload order and its aliases as
        aliases (a compressed section's tensors are decoded copies: identity cannot tell)."""
        stored = sorted(mapping.entries.values(), key=lambda e: e.begin)
        self.begin_section(section, [(e.name, e.dtype, tuple(e.shape), e.nbytes) for e in stored])
        tw = self._section(section)
        for e in stored:
            tw.add(e.name, flatten(mapping[e.name]))  # never an alias: each stored tensor once
        for alias, target in mapping.aliases.items():
            tw.add_alias(alias, target)

    def _copy_proven(self, m: Any, source: Any, name: str, sec: Section, member: Any) -> None:
        """The member copied chunk by chunk, each chunk of the output hashed while the next is
        copied (``container/hashcopy.py``); every digest is checked against the source's."""
        from .container.hashcopy import copy_hashed, kernel_copy
        from .container.writeback import start_writeback
        from .errors import IntegrityError

        table = sec.tensors
        assert table is not None
        mapping = source.tensors(name)  # parses the header; checks it against the manifest
        entries = sorted(mapping.entries.values(), key=lambda e: e.begin)
        head = 8 + int.from_bytes(source.read_bytes(member.data_offset, 8), "little")
        regions = [(0, head)] + [(head + e.begin, head + e.begin + e.nbytes) for e in entries]
        fh = self._zw._fh
        fh.flush()
        out_fd, out_start = fh.fileno(), m.record.data_offset + m.record.size
        if source.remote is None:
            copy = kernel_copy(source._fh.fileno(), member.data_offset, out_fd, out_start)
        else:  # a URL: the bytes pass through here
            def copy(pos: int, n: int) -> None:
                data = source.read_bytes(member.data_offset + pos, n)
                if len(data) != n or os.pwrite(out_fd, data, out_start + pos) != n:
                    raise OSError(f"short copy of {name!r} at {pos}")
        def copied(pos: int, n: int) -> None:  # the disk writes each chunk while the next are hashed
            start_writeback(out_fd, out_start + pos, n)

        hexes = copy_hashed(copy, out_fd, out_start, member.size, regions,
                            min(2, os.cpu_count() or 1), copied if self._durable else None)
        m.record.size += member.size
        fh.seek(out_start + member.size)
        # Every byte of the member is covered (the header and tensors tile it): equal digests
        # mean the output holds the bytes the source recorded, so its CRC-32 is theirs too.
        m.record.crc = member.crc
        bad = [e.name for e, hx in zip(entries, hexes[1:]) if table.digests.get(e.name) != hx]
        if hexes[0] != table.header_digest:
            bad.insert(0, "(the safetensors header)")
        if bad or hashing.section_digest(hexes[0], hexes[1:]) != sec.digest:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise IntegrityError(source.path, f"copying section {name!r}: {len(bad)} tensor(s) do not "
                                 f"match the source's digest ({', '.join(bad[:3])}{more})" if bad else
                                 f"copying section {name!r}: the section digest does not match",
                                 "the source is damaged, or the disk returned different bytes; run "
                                 "'anemoi-ckpt verify' on the source", section=sec.path)

    def add_alias(self, alias: str, target: str, *, section: str = "weights") -> None:
        tw = self._section(section)
        if target not in tw.names:
            raise ValueError(f"alias target {target!r} not in section {section!r}")
        if alias in tw.names:
            raise ValueError(f"duplicate tensor name {alias!r} in section {section!r}")
        tw.add_alias(alias, tw.aliases.get(target, target))

    def begin_section(self, section: str, specs: Iterable[tuple[str, str, tuple[int, ...], int]]) -> None:
        """Open ``section`` with its header room sized exactly for the tensors about to be added,
        given as (name, dtype code, shape, nbytes): no wasted padding, no data move at the end."""
        self._section(section, reserve=exact_reserve(list(specs)))

    def add_section(self, section: str, tensors: Mapping[str, torch.Tensor]) -> None:
        """Add a whole tensor section at once. Its header size is known in advance, so it is
        reserved exactly and the data never moves; aliases follow their targets."""
        if isinstance(tensors, TensorMapping):  # another file's section: decoded once per tensor
            self._add_mapping(section, tensors)
            return
        stored, aliases = _plan(tensors)
        self.begin_section(section, [(n, code_of(tensors[n].dtype), tuple(tensors[n].shape),
                                      tensors[n].numel() * tensors[n].element_size()) for n in stored])
        for name in stored + aliases:
            self.add(name, tensors[name], section=section)

    def _close_section(self) -> None:
        if self._open is None:
            return
        name, tw = self._open
        self._open = None
        table, digest, size, entries = tw.close()
        self._closed_names.add(name)
        self._sections.append(Section(path=self._section_rel(name), role=S.tensor_role(name),
                                      name=name, required=True, size=size, digest=digest,
                                      media_type=S.SAFETENSORS, tensors=table,
                                      encoding=getattr(tw, "encoding", None)))
        if name == "weights":
            by_name = {e.name: (e.dtype, e.shape, table.digests[e.name]) for e in entries}
            by_name.update({a: by_name[t] for a, t in table.aliases.items()})
            self._weights_entries = [(n, c, s, d) for n, (c, s, d) in by_name.items()]

    # --- small members -------------------------------------------------------------------------
    def _member(self, rel: str, data: bytes, role: str, media_type: str, required: bool = True,
                name: str | None = None) -> None:
        self._zw.write_member(f"{self._root}/{rel}", data)
        self._sections.append(Section(path=rel, role=role, name=name, required=required, size=len(data),
                                      digest=hashing.tagged(hashing.sha256_hex(data)),
                                      media_type=media_type))

    def _write_anemoi(self, md: dict[str, Any], arrays: Mapping[str, Any] | None) -> None:
        # A new file is a new checkpoint, as anemoi-training does per save; a conversion keeps
        # anemoi's uuid (same model, same registry entry) and records it as the source parent.
        if not (self._keep_anemoi_uuid and isinstance(md.get("uuid"), str)):
            md["uuid"] = self.uuid
        md["supporting_arrays_paths"] = arrays_paths(self._root, S.ANEMOI_FOLDER, arrays)
        # anemoi writes NaN/Infinity as Python's json does; keep the dict verbatim, but never
        # deeper than a reader accepts (docs/format.md 4.2)
        from .container.schema import MAX_JSON_DEPTH, json_depth
        if json_depth(md) > MAX_JSON_DEPTH:
            raise FormatError(self.path, f"the anemoi metadata is nested deeper than {MAX_JSON_DEPTH} "
                              "levels: no reader would accept it", section=f"{S.ANEMOI_FOLDER}/{S.ANEMOI_JSON}")
        self._member(f"{S.ANEMOI_FOLDER}/{S.ANEMOI_JSON}", _json_bytes(md, allow_nan=True),
                     "anemoi-metadata", S.JSON, required=False)
        prefix = f"{self._root}/"
        for member, arr in iter_arrays(arrays, md["supporting_arrays_paths"]):
            self._member(member[len(prefix):], memoryview(arr).cast("B"), "supporting-array",
                         S.NUMPY_RAW, required=False)

    def start_writeback(self) -> None:
        """Start writing what was written so far to the disk, without waiting (a durable writer
        only): the fsync at the commit then has less left. For a caller about to wait for
        something else before closing (convert waits for the source file's hash)."""
        if self._durable:
            from .container.writeback import start_writeback

            self._fh.flush()
            start_writeback(self._fh.fileno(), 0, 0)  # 0 bytes: to the end of the file

    def update_parameters(self, **values: Any) -> None:
        """Lineage parameters known only while writing (a source hash computed alongside)."""
        self._parameters.update(values)

    def add_document(self, name: str, obj: Any) -> None:
        """A named JSON document beside the tensors (``training-state``, ``hyper-parameters``):
        strict JSON, digest-checked like every member, read back with ``Checkpoint.document``."""
        if not S.valid_section_name(name):
            raise ValueError(f"invalid document name {name!r} (letters, digits, '-' and '_')")
        rel = S.document_path(name)
        if any(sec.path == rel for sec in self._sections):
            raise ValueError(f"duplicate document {name!r}")
        try:
            data = document_bytes(obj)  # never write what the reader would refuse
        except DocumentError as e:
            raise FormatError(self.path, f"document {name!r} cannot be written: {e}",
                              section=rel) from None
        self._close_section()  # members are written one after the other
        self._member(rel, data, "document", S.JSON, required=False, name=name)

    def add_carried(self, source_member: str, data: bytes | memoryview) -> None:
        """A source member no step understood, kept byte for byte (``carried/<n>.bin``, named by
        its source path): a converter carries what it cannot translate rather than dropping it."""
        carried = [sec for sec in self._sections if sec.role == "carried"]
        if any(sec.name == source_member for sec in carried):
            raise ValueError(f"duplicate carried member {source_member!r}")
        self._close_section()
        self._member(S.carried_path(len(carried)), data, "carried", S.OCTET, required=False,
                     name=source_member)

    # --- commit --------------------------------------------------------------------------------
    def close(self) -> str:
        """Finish and atomically commit the file; returns its path."""
        if self._done:
            if self.content_id is None:
                raise RuntimeError(f"{self.path}: the writer was aborted; nothing was written")
            return self.path
        try:
            if "weights" not in self._closed_names and not (self._open and self._open[0] == "weights"):
                self._section("weights", reserve=64)  # the weights section is always present
            self._close_section()
            self.content_id = hashing.content_id(self._weights_entries or [])
            created = utc_now()
            lineage = build_lineage(uuid=self.uuid, kind=self.kind, content_id=self.content_id,
                                    operation=self._operation, parameters=self._parameters,
                                    parents=self._parents, created=created, **self._lineage_info)
            self._member(S.METADATA_PATH, _json_bytes(self.metadata.model_dump(mode="json")),
                         "metadata", S.JSON)
            self._member(S.LINEAGE_PATH, _json_bytes(lineage.model_dump(mode="json")), "lineage", S.JSON)
            manifest = Manifest(format_version=FORMAT_VERSION, uuid=self.uuid, kind=self.kind,
                                content_id=self.content_id, created=created,
                                producer=Producer(name="anemoi-ckpt", version=__version__),
                                sections=self._sections)
            self._zw.write_member(f"{self._root}/{S.MANIFEST_PATH}",
                                  _json_bytes(manifest.model_dump(mode="json", exclude_none=True)))
            self._zw.finish()
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._stack.close()  # fsync + rename
        return self.path

    def abort(self) -> None:
        """Discard everything written; the target path is left as it was."""
        if self._done:
            return
        self._done = True
        try:
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)
        except RuntimeError:
            pass

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _same_encoding(encoding: Any, compression: Any) -> bool:
    """Whether a section stored with ``encoding`` (a manifest ``Encoding`` or None) can be copied
    byte for byte into a file written with ``compression`` (a ``codec.Compression`` or None)."""
    if encoding is None or compression is None:
        return encoding is None and compression is None
    return (encoding.codec, encoding.transform, encoding.level, encoding.chunk_size) == \
        ("zstd", "byte-planes", compression.level, compression.chunk_size)


def _plan(tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Split names into stored tensors, sorted like safetensors (larger item size first, then
    name, so each tensor stays aligned to its item size), and aliases of earlier names."""
    tracker = AliasTracker()
    stored, aliases = [], []
    for name, t in tensors.items():
        (aliases if tracker.target_of(name, t) is not None else stored).append(name)
    stored.sort(key=lambda n: (-tensors[n].element_size(), n))
    return stored, aliases


def save(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], *, kind: Kind = "inference",
         metadata: Metadata | Mapping[str, Any] | None = None,
         anemoi_metadata: Mapping[str, Any] | None = None,
         supporting_arrays: Mapping[str, Any] | None = None, parents: Iterable[Any] = (),
         operation: str | None = None, parameters: Mapping[str, Any] | None = None,
         sections: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
         progress: bool | None = None, durable: bool = True,
         compress: "str | Compression | None" = None) -> str:
    """Write ``tensors`` (and optional extra tensor ``sections``, e.g. ``{"graph": {...}}``) to an
    ``.anc`` at ``path`` atomically. Returns the path.

    ``durable=False`` skips the fsync calls: the rename is still atomic (readers see the old file
    or the new one), but after a power cut the new file may be missing. A durable save has the
    disk write the file while it is being written, so its fsync waits only for the last few MB
    (docs/format.md 10.1 says what it guarantees; timings in benchmarks/README.md). ``compress``:
    see :class:`Writer`."""
    if sections and "weights" in sections:
        raise ValueError("pass the weights as `tensors`, not in `sections`")
    all_sections = {"weights": tensors, **(sections or {})}
    total = sum(t.numel() * t.element_size() for sec in all_sections.values() for t in sec.values())
    with Progress.for_bytes(total, f"writing {os.path.basename(os.fspath(path))}", progress) as bar:
        with Writer(path, kind=kind, metadata=metadata, anemoi_metadata=anemoi_metadata,
                    supporting_arrays=supporting_arrays, parents=parents, operation=operation,
                    parameters=parameters, progress=bar, durable=durable, compress=compress) as w:
            for name, sec in all_sections.items():
                w.add_section(name, sec)
    return os.fspath(path)
