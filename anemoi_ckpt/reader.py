"""Reading ``.anc`` files: :func:`open_checkpoint` and :class:`Checkpoint`.

Nothing here unpickles, imports a name read from the file or executes anything from it. Tensors
are views over one private memory map of the file (zero-copy; a write to a tensor never reaches
the file), created only for the sections and names asked for.

A URL (``s3://``, ``http(s)://``; ``file://`` is a path) is read by byte ranges instead
(:mod:`anemoi_ckpt.container.rangefile`): opening fetches the zip directory and the manifest, JSON sections
and tensor headers are fetched when first used, and each tensor when it is read, so inspecting a
remote file or loading a few of its tensors transfers only those bytes.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import stat
import warnings
import zlib
from collections.abc import Iterable
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from packaging.version import Version
from pydantic import BaseModel, ValidationError

from . import __version__
from .container import sections as S
from .anemoi_meta import check_leaf, iter_leaves, nest
from .errors import FormatError, IntegrityError, UsageError, VersionError
from .container.hashing import sha256_hex, tagged
from .container.filebytes import FetchedBytes, MappedBytes
from .container.rangefile import RangeFile
from .container.schema import (FORMAT_VERSION, MAX_JSON_DEPTH, SCHEMA_VERSION, Lineage, Manifest,
                               Metadata, Section, json_depth)
from .tensormap import TensorMapping
from .container.urls import local_path
from .container.zipread import Member, read_directory
from .container.zipappend import SIGNATURE_PATH

if TYPE_CHECKING:
    import torch

#: JSON members are read whole; refuse absurd sizes before allocating.
MAX_JSON = 256 << 20
_READER_MAJOR = Version(FORMAT_VERSION).major


#: How a member edited outside anemoi-ckpt is reported (``verify``, and a read of it).
EDITED_WHAT = "edited outside anemoi-ckpt (e.g. anemoi-utils metadata --inplace)"


def edited_hint(path: str) -> str:
    """The command that records such an edit and makes the file verify again."""
    return f"run `anemoi-ckpt metadata {path} --reseal`"


class UnknownSectionWarning(UserWarning):
    """An optional section written by a newer anemoi-ckpt was ignored."""


class Checkpoint:
    """An open ``.anc`` file. Use :func:`anemoi_ckpt.open`; also a context manager."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        local = local_path(self.path)
        #: The remote file for a URL (None for a local file, which is memory-mapped).
        self.remote: RangeFile | None = None
        self.closed = False
        if local is None:
            self._fh: Any = RangeFile(self.path)
            self.remote = self._fh
        else:
            self._fh = self._open_regular_file(local)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open_regular_file(self, local: str) -> io.BufferedReader:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (no effect on regular files).
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(local, flags)
        except FileNotFoundError:
            raise FormatError(self.path, "no such file") from None
        except IsADirectoryError:
            raise FormatError(self.path, "is a directory, not an .anc file") from None
        except OSError as e:
            raise FormatError(self.path, f"cannot open ({e.strerror})") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "is a directory" if stat.S_ISDIR(mode) else "is not a regular file"
            raise FormatError(self.path, f"{what}, not an .anc file")
        return os.fdopen(fd, "rb")

    def _open(self) -> None:
        size = self.remote.size if self.remote is not None else os.fstat(self._fh.fileno()).st_size
        self.size = size  # bytes in the file
        self.root, self._members = read_directory(self.path, self._fh, size)  # has a manifest
        self._bytes = MappedBytes(self._fh.fileno()) if self.remote is None else FetchedBytes(self.remote)
        self._mm: mmap.mmap | None = self._bytes.mm  # a local file's map (None for a URL)
        member = self._members[S.MANIFEST_PATH]
        raw = self._member_bytes(member, S.MANIFEST_PATH)
        # The manifest holds every other digest but has none of its own: the zip CRC-32 is what
        # catches damage to it (any single changed byte) before a damaged value is trusted.
        if zlib.crc32(raw) != member.crc:
            raise IntegrityError(self.path, "CRC-32 mismatch", "the file is damaged",
                                 section=S.MANIFEST_PATH)
        obj = self._json(raw, S.MANIFEST_PATH)
        self._check_version(obj)
        self.manifest: Manifest = self._model(Manifest, obj, S.MANIFEST_PATH)
        self._check_required_keys(obj)
        self._sections: dict[str, Section] = {}
        listed: set[str] = set()
        carried_names: set[str] = set()
        for sec in self.manifest.sections:
            if sec.path in listed:
                raise FormatError(self.path, "listed twice in the manifest", section=sec.path)
            listed.add(sec.path)
            if sec.role not in S.ROLES:
                if sec.required:
                    raise VersionError(self.path, f"required, with role {sec.role!r} unknown to "
                                       f"anemoi-ckpt {__version__}",
                                       "upgrade anemoi-ckpt to read this file", section=sec.path)
                warnings.warn(f"{self.path}: ignoring optional section {sec.path} with unknown role "
                              f"{sec.role!r}", UnknownSectionWarning, stacklevel=4)
                continue
            self._check_section(sec, carried_names)
            member = self._members.get(sec.path)
            if member is None:
                raise FormatError(self.path, "missing from the archive", section=sec.path)
            if member.size != sec.size and not self._edited_outside(sec):
                raise IntegrityError(self.path, f"{member.size} bytes, manifest says {sec.size}",
                                     "the file is damaged", section=sec.path)
            self._sections[sec.path] = sec
        #: tensor section name -> member path (``.safetensors``, or ``.safetensors-zstd`` compressed)
        self._tensor_rel = {sec.name: rel for rel, sec in self._sections.items()
                            if sec.tensors is not None and sec.name}
        weights_rel = self._tensor_rel.get("weights", S.tensor_section_path("weights"))
        for rel in (S.METADATA_PATH, S.LINEAGE_PATH, weights_rel):
            if rel not in self._sections:
                raise FormatError(self.path, "required, but not listed in the manifest", section=rel)
        self._tensor_cache: dict[str, TensorMapping] = {}

    def _check_required_keys(self, obj: dict[str, Any]) -> None:
        """Keys the models default for code that builds them, but that every file must carry
        (docs/format.md 4.1; the published schema lists them as required)."""
        for i, raw in enumerate(obj.get("sections") or []):
            table = raw.get("tensors") if isinstance(raw, dict) else None
            if isinstance(table, dict) and "aliases" not in table:
                raise FormatError(self.path, f"invalid sections.{i}.tensors.aliases: Field required",
                                  section=S.MANIFEST_PATH)

    def _check_section(self, sec: Section, carried_names: set[str]) -> None:
        """A section of known role: its ``role``, ``name`` and ``path`` agree (docs/format.md 4.1).

        Tensor sections and documents are found by name and read by path; were the two allowed
        to differ, a second section could stand in for one that is then never checked (``verify``
        would hash the stand-in and call the file intact)."""
        def fail(what: str) -> None:
            raise FormatError(self.path, what, "the manifest was tampered with", section=sec.path)

        role, name = sec.role, sec.name
        fixed = {S.METADATA_PATH: "metadata", S.LINEAGE_PATH: "lineage", self._anemoi_rel_path: "anemoi-metadata"}
        if sec.tensors is not None or role in S.TENSOR_ROLES:
            if role not in S.TENSOR_ROLES:
                fail(f"role {role!r} carries a tensors table")
            if sec.tensors is None:
                fail(f"tensor section (role {role!r}) without a tensors table")
            if name is None or not S.valid_section_name(name):
                fail(f"invalid tensor section name {name!r}")
            # A compressed section (1.2) carries its frame index and has its own suffix.
            want = S.tensor_section_path(name) if sec.encoding is None else S.compressed_section_path(name)
            if sec.path != want:
                fail(f"name {name!r} and path disagree (a section named {name!r} is {want})")
            if role != S.tensor_role(name):
                fail(f"role {role!r} for the tensor section {name!r}, which has role {S.tensor_role(name)!r}")
        if sec.encoding is not None:
            if sec.tensors is None:
                fail("an encoding on a section that is not a tensor section")
            # an unknown codec is a newer writer's (upgrade), limits broken are damage
            from .container.compressed import check_encoding
            check_encoding(self.path, sec.path, sec.encoding.model_dump())
        if role == "document":
            if name is None or not S.valid_section_name(name):
                fail(f"invalid document name {name!r}")
            if sec.path != S.document_path(name):
                fail(f"name {name!r} and path disagree (a document named {name!r} is "
                     f"{S.document_path(name)})")
        elif role == "carried":
            if not name:
                fail("carried section without a name (its path in the source)")
            if name in carried_names:
                fail(f"two carried sections claim the source member {name!r}")
            carried_names.add(name)
        elif role in fixed.values() and fixed.get(sec.path) != role:
            path = next(p for p, r in fixed.items() if r == role)
            fail(f"role {role!r} belongs to {path}")
        expected = S.role_of_path(sec.path)
        if expected is not None and expected != role:
            fail(f"role {role!r}, but {sec.path} has role {expected!r}")

    def _check_version(self, obj: Any) -> None:
        if not isinstance(obj, dict) or obj.get("format") != "anemoi-ckpt":
            raise FormatError(self.path, "manifest.json does not describe an anemoi-ckpt file")
        fv = obj.get("format_version")
        try:
            major = Version(str(fv)).major
        except Exception:
            raise FormatError(self.path, f"invalid format_version {fv!r}") from None
        if major > _READER_MAJOR:
            producer = obj.get("producer")
            writer = producer.get("version") if isinstance(producer, dict) else None
            hint = "upgrade anemoi-ckpt" + (f" to {writer} or later" if isinstance(writer, str)
                                            and len(writer) < 40 else "")
            raise VersionError(self.path, f"format {fv} is newer than this anemoi-ckpt "
                               f"({__version__}, reads {_READER_MAJOR}.x)", hint)
        if major < _READER_MAJOR:
            raise VersionError(self.path, f"format {fv} predates {_READER_MAJOR}.0",
                               "convert it with 'anemoi-ckpt convert'")

    # --- raw access ----------------------------------------------------------------------------
    def _member_bytes(self, member: Member, label: str) -> bytes:
        if member.size > MAX_JSON:
            raise FormatError(self.path, f"{member.size} bytes is too large for a JSON member",
                              section=label)
        return self.read_bytes(member.data_offset, member.size)

    def _check_open(self) -> None:
        if self.closed:
            raise UsageError(self.path, "the checkpoint is closed", "read tensors inside "
                             "'with anemoi_ckpt.open(...)', or keep the tensors you need")

    def read_bytes(self, start: int, n: int) -> bytes:
        """``n`` bytes of the file from ``start`` (a local map slice, or a remote range)."""
        self._check_open()
        return self._bytes.read(start, n)

    def buffer(self, start: int, n: int) -> tuple[Any, int]:
        """(a writable buffer, offset in it) holding the file's bytes ``[start, start+n)``: the
        private map itself for a local file (zero-copy), a fetched copy for a URL."""
        self._check_open()
        return self._bytes.buffer(start, n)

    def digest_range(self, start: int, n: int) -> str:
        """sha256 hex of the file's bytes ``[start, start+n)``, read in chunks for a URL."""
        self._check_open()
        return self._bytes.digest(start, n)

    def _json_value(self, raw: bytes, label: str) -> Any:
        # Strict JSON (docs/format.md 4.2): NaN and Infinity only in anemoi.json, which anemoi
        # writes with Python's json (7.1).
        constant = None if label == self._anemoi_rel_path else _no_constant
        try:
            return json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys,
                              parse_constant=constant)
        except _DuplicateKey as e:
            raise FormatError(self.path, f"duplicate JSON key {str(e)[:80]!r}",
                              "two parsers could read different values; the file was tampered with",
                              section=label) from None
        except UnicodeDecodeError as e:
            raise FormatError(self.path, f"not UTF-8 ({e.reason} at byte {e.start})",
                              section=label) from None
        except RecursionError:
            raise FormatError(self.path, f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)",
                              section=label) from None
        except ValueError as e:
            raise FormatError(self.path, f"invalid JSON ({e})", section=label) from None

    def _json(self, raw: bytes, label: str) -> Any:
        obj = self._json_value(raw, label)
        # Each level opens with a "[" or "{" byte (more may sit in strings, never fewer): counting
        # them in C spares the walk over every value of a document that cannot be too deep.
        if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(obj) > MAX_JSON_DEPTH:
            raise FormatError(self.path, f"invalid JSON (nested deeper than {MAX_JSON_DEPTH} levels)",
                              section=label)
        return obj

    def _model(self, cls: type[BaseModel], obj: Any, label: str) -> Any:
        try:
            return cls.model_validate(obj)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise FormatError(self.path, f"invalid {loc}: {err['msg']}", section=label) from None

    def section(self, rel: str) -> Section:
        try:
            return self._sections[rel]
        except KeyError:
            raise UsageError(self.path, f"no section {rel!r}") from None

    def _checked_json(self, rel: str) -> Any:
        """A small JSON section, its digest checked before use."""
        sec = self.section(rel)
        raw = self._member_bytes(self._members[rel], rel)
        if tagged(sha256_hex(raw)) != sec.digest:
            if self._edited_outside(sec):
                raise IntegrityError(self.path, EDITED_WHAT, edited_hint(self.path), section=rel)
            raise IntegrityError(self.path, "digest mismatch", "the file is damaged; run "
                                 "'anemoi-ckpt verify'", section=rel)
        return self._json(raw, rel)

    def _edited_outside(self, sec: Section) -> bool:
        """The anemoi metadata member was rewritten whole by a zip tool (``anemoi-utils metadata
        --inplace`` rebuilds the archive): its bytes differ from the manifest's record, yet agree
        with the zip's own CRC-32 and parse as a JSON object. Random damage breaks the CRC, so
        only a deliberate rewrite passes; the tensors stay readable and digest-checked."""
        if sec.role != "anemoi-metadata" or sec.path not in self._members:
            return False
        member = self._members[sec.path]
        if member.size > MAX_JSON:
            return False
        raw = self.read_bytes(member.data_offset, member.size)
        if zlib.crc32(raw) != member.crc or tagged(sha256_hex(raw)) == sec.digest:
            return False
        try:
            return isinstance(self._json_value(raw, sec.path), dict)
        except FormatError:
            return False

    def edited_members(self) -> list[str]:
        """Members edited outside anemoi-ckpt (see :meth:`_edited_outside`), recorded by
        ``anemoi-ckpt metadata FILE --reseal``."""
        return [rel for rel, sec in self._sections.items() if self._edited_outside(sec)]

    def raw_anemoi_metadata(self) -> dict[str, Any] | None:
        """The anemoi metadata as the file holds it now, edited outside anemoi-ckpt or not (its
        digest is not checked: only ``--reseal`` reads it this way, to record the edit)."""
        sec = self._sections.get(self._anemoi_rel)
        if sec is None:
            return None
        if not self._edited_outside(sec):
            return self.anemoi_metadata
        raw = self._member_bytes(self._members[sec.path], sec.path)
        return self._json(raw, sec.path)

    # --- properties ----------------------------------------------------------------------------
    @property
    def uuid(self) -> str:
        return self.manifest.uuid

    @property
    def content_id(self) -> str:
        return self.manifest.content_id

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def format_version(self) -> str:
        return self.manifest.format_version

    def _schema_doc(self, cls: type[BaseModel], rel: str) -> Any:
        obj = self._checked_json(rel)
        version = obj.get("schema_version") if isinstance(obj, dict) else None
        if isinstance(version, str) and version.split(".")[0].isdigit() \
                and int(version.split(".")[0]) > int(SCHEMA_VERSION.split(".")[0]):
            raise VersionError(self.path, f"schema_version {version} is newer than this anemoi-ckpt "
                               f"({__version__}, reads {SCHEMA_VERSION.split('.')[0]}.x)",
                               "upgrade anemoi-ckpt", section=rel)
        return self._model(cls, obj, rel)

    @cached_property
    def metadata(self) -> Metadata:
        return self._schema_doc(Metadata, S.METADATA_PATH)

    @cached_property
    def lineage(self) -> Lineage:
        """The lineage block; its records[0] is checked to describe this file (uuid, kind and
        content id equal to the manifest's), so nothing reads another file's history as its own."""
        block: Lineage = self._schema_doc(Lineage, S.LINEAGE_PATH)
        if not block.records:
            raise FormatError(self.path, "no records (records[0] must describe the file)",
                              section=S.LINEAGE_PATH)
        own = block.records[0]
        for key, mine in (("uuid", self.uuid), ("kind", self.kind), ("content_id", self.content_id)):
            theirs = getattr(own, key)
            if theirs != mine:
                raise FormatError(self.path, f"records[0] has {key} {str(theirs)[:80]}, the "
                                  f"file's {key} is {mine}", "records[0] must describe this file",
                                  section=S.LINEAGE_PATH)
        return block

    def unlisted_members(self) -> list[str]:
        """Members in the archive that the manifest does not list (a writer lists every one), the
        embedded signature excepted (format 1.2: it signs the manifest, so is never listed)."""
        listed = {sec.path for sec in self.manifest.sections} | {S.MANIFEST_PATH, SIGNATURE_PATH}
        return [rel for rel in self._members if rel not in listed]

    @property
    def signed_embedded(self) -> bool:
        """The file carries an embedded signature member (checked by ``anemoi_ckpt.signing``)."""
        return SIGNATURE_PATH in self._members

    _anemoi_rel_path = f"{S.ANEMOI_FOLDER}/{S.ANEMOI_JSON}"

    @property
    def _anemoi_rel(self) -> str:
        return self._anemoi_rel_path

    @cached_property
    def anemoi_metadata(self) -> dict[str, Any] | None:
        if self._anemoi_rel not in self._sections:
            return None
        md = self._checked_json(self._anemoi_rel)
        if not isinstance(md, dict):
            raise FormatError(self.path, "not a JSON object", section=self._anemoi_rel)
        return md

    @cached_property
    def supporting_arrays(self) -> dict[str, Any]:
        """anemoi's supporting arrays as numpy arrays (zero-copy), nested like the metadata."""
        md = self.anemoi_metadata
        if not md:
            return {}
        prefix = f"{self.root}/"
        flat: dict[tuple[str, ...], np.ndarray] = {}
        try:
            for trail, entry in iter_leaves(md.get("supporting_arrays_paths", {})):
                path = entry["path"]
                rel = path[len(prefix):] if isinstance(path, str) and path.startswith(prefix) else None
                if rel is None or rel not in self._sections:
                    raise ValueError(f"supporting array {path!r} is not a section of this file")
                member = self._members[rel]
                dtype, shape = check_leaf(trail, entry, member.size)
                buf, offset = self.buffer(member.data_offset, member.size)
                count = member.size // dtype.itemsize if dtype.itemsize else 0
                arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
                flat[trail] = arr.reshape(shape)
        # numpy rejects hostile dtype strings and shapes with ValueError, TypeError or even
        # SyntaxError (np.dtype("(2,")), and deprecated spellings warn (an exception under -W
        # error); a deeply nested paths object exhausts the stack.
        except (ValueError, TypeError, SyntaxError, OverflowError, RecursionError, Warning) as e:
            what = str(e) if str(e).startswith("supporting array") else f"supporting_arrays_paths: {e}"
            raise FormatError(self.path, what, section=self._anemoi_rel) from None
        return nest(flat)

    def sections(self) -> list[Section]:
        return list(self._sections.values())

    @property
    def compression(self) -> str:
        """How the weights are stored, as a ``compress`` value for a writer: ``"zstd:LEVEL"``
        (compressed sections, format 1.2) or ``"none"``."""
        enc = self.section(self.tensor_section_rel("weights")).encoding
        if enc is None:
            return "none"
        return f"zstd:{enc.level}" if isinstance(enc.level, int) and 1 <= enc.level <= 22 else "zstd"

    def tensor_section_rel(self, name: str) -> str:
        """The member path of tensor section ``name`` (``<name>.safetensors``, or
        ``<name>.safetensors-zstd`` when compressed, format 1.2)."""
        try:
            return self._tensor_rel[name]
        except KeyError:
            raise UsageError(self.path, f"no tensor section {name!r}",
                             f"sections: {', '.join(self.tensor_sections()) or 'none'}") from None

    def tensor_sections(self) -> list[str]:
        return [s.name for s in self._sections.values() if s.tensors is not None and s.name]

    def documents(self) -> list[str]:
        """Names of the JSON documents (format 1.1+), e.g. ``training-state``."""
        return [s.name for s in self._sections.values() if s.role == "document" and s.name]

    def document(self, name: str) -> Any:
        """A JSON document, its digest checked; tensors it mentions are
        ``{"__tensor__": "<section>/<name>"}``, read with :meth:`tensors`."""
        rel = S.document_path(name)
        if rel not in self._sections:
            raise UsageError(self.path, f"no document {name!r}",
                             f"documents: {', '.join(self.documents()) or 'none'}")
        return self._checked_json(rel)

    def carried(self) -> list[str]:
        """Source member paths kept byte for byte by a conversion (``carried/<n>.bin``)."""
        return [s.name for s in self._sections.values() if s.role == "carried" and s.name]

    def carried_bytes(self, source_member: str) -> bytes:
        """One carried member's bytes, its digest checked."""
        sec = next((s for s in self._sections.values()
                    if s.role == "carried" and s.name == source_member), None)
        if sec is None:
            raise UsageError(self.path, f"no carried member {source_member!r}",
                             f"carried: {', '.join(self.carried()) or 'none'}")
        rel = sec.path
        raw = bytes(self._member_bytes(self._members[rel], rel))
        if tagged(sha256_hex(raw)) != sec.digest:
            raise IntegrityError(self.path, "digest mismatch", "the file is damaged; run "
                                 "'anemoi-ckpt verify'", section=rel)
        return raw

    # --- tensors -------------------------------------------------------------------------------
    def tensors(self, section: str = "weights") -> "TensorMapping":
        """A lazy, read-only mapping of name to tensor for a tensor section."""
        if section not in self._tensor_cache:
            rel = self._tensor_rel.get(section, "")
            sec = self._sections.get(rel)
            if sec is None or sec.tensors is None:
                raise UsageError(self.path, f"no tensor section {section!r}",
                                 f"sections: {', '.join(self.tensor_sections()) or 'none'}")
            self._tensor_cache[section] = TensorMapping(self, sec, self._members[rel])
        return self._tensor_cache[section]

    def read_ahead(self, section: str = "weights", names: Iterable[str] | None = None) -> None:
        """Say which tensors are about to be read: the whole section (a model load) or ``names``.

        Local file: normal readahead over the section instead of the map's ``MADV_RANDOM``, which
        suits lazy partial reads but pages a full read in a fault at a time (2.7x slower from a
        cold cache for a 0.9 GB section here; benchmarks/README.md), or ``MADV_WILLNEED`` over
        each named tensor. URL: the bytes are fetched now, concurrently, in as few requests as
        the layout allows (neighbouring tensors share one), and the tensors then view them:
        hundreds of small tensors cost a few round trips, not one each."""
        mapping = self.tensors(section)  # checks the name
        self._check_open()
        if names is None:
            member = self._members[self._tensor_rel[section]]
            self._bytes.ahead(member.data_offset, member.size)
            return
        spans = []
        for name in names:
            target = mapping.aliases.get(name, name)
            if target not in mapping.entries:
                raise UsageError(self.path, f"no tensor {name!r} in section {section!r}")
            start, n = mapping.stored_span(target)
            spans.append((start, start + n))
        self._bytes.ahead_spans(spans)

    def state_dict(self, section: str = "weights") -> dict[str, torch.Tensor]:
        """All tensors of a section; aliases are the same tensor object as their target."""
        return dict(self.tensors(section).items())

    def load_into(self, module: torch.nn.Module, *, strict: bool = True, section: str = "weights") -> None:
        """Copy this file's tensors into ``module``'s parameters and buffers (shapes checked)."""
        from .loading import load_into

        load_into(self, module, strict=strict, section=section)

    def verify(self, *, progress: bool | None = None) -> "Any":
        """Recompute every digest and the content id; returns a :class:`VerifyReport`."""
        from .verify import verify

        return verify(self, progress=progress)

    # --- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        self._tensor_cache = {}
        self.closed = True
        if hasattr(self, "_bytes"):
            self._bytes.release()
        self._mm = None
        self._fh.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Checkpoint {self.path!r} kind={self.kind} uuid={self.uuid}>"


class _DuplicateKey(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed here (strict JSON)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)  # C speed; the search for the duplicate runs only when there is one
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open an ``.anc`` file for reading. Raises :class:`AncError` with one clear line if it is not
    a readable ``.anc``."""
    return Checkpoint(path)
