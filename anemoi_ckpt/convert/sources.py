"""Source readers, one per foreign format, behind a registry with automatic detection.

A source yields tensors lazily (name -> zero-copy view over the source file), section by
section, plus the anemoi metadata it carries. Pickled sources go through the restricted
unpickler only: nothing in them is imported or executed.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..container.dtypes import ITEMSIZE, TORCH_NAME_TO_CODE as DTYPE_CODES, nbytes
from ..errors import FormatError, UsageError
from ..legacy.standins import StandIn, TensorRef
from ..legacy.torchzip import TorchZipCheckpoint, _is_legacy_torch
from .harvest import flat_state_dict, module_tensors
from .lightning import fallback_metadata, is_lightning, read_lightning


@dataclass
class Source:
    path: str
    format: str
    kind: str
    sections: dict[str, Callable[[], Iterator[tuple[str, Any]]]]
    #: per section, (name, dtype code, shape, nbytes) of every tensor, known without reading data
    specs: dict[str, list[tuple[str, str, tuple[int, ...], int]]] = field(default_factory=dict)
    anemoi_metadata: dict[str, Any] | None = None
    supporting_arrays: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    close: Callable[[], None] = lambda: None
    #: JSON documents written beside the tensors (Lightning: hyper-parameters, training-state)
    documents: dict[str, Any] = field(default_factory=dict)
    #: lineage parents beyond the anemoi uuid (an .anc source: the open file, ancestors copied)
    parents: list[Any] = field(default_factory=list)
    #: per section, name -> sha256 the source already vouches for (an .anc's manifest)
    digests: dict[str, dict[str, str]] | None = None
    #: the file map the tensors are views of (zero-copy sources): written pages are released
    mapping: Any = None
    #: the open Checkpoint of an .anc source: unchanged sections are copied as bytes
    anc: Any = None
    #: extra keys for the output's metadata.json (e.g. a PEFT adapter's config), validated as Metadata
    extra_metadata: dict[str, Any] | None = None
    #: source members no reader understands: path -> bytes getter; written under carried/
    carried: dict[str, Callable[[], bytes]] = field(default_factory=dict)
    #: (member path, verbatim bytes) of the anemoi metadata member: carried when translated
    metadata_source: tuple[str, bytes] | None = None


#: The names anemoi-utils has given its metadata member, newest first: ``ai-models.json`` (metadata
#: 1.0) until anemoi-utils renamed it; its ``load_metadata`` still falls back to the old name.
METADATA_NAMES = ("anemoi.json", "ai-models.json")
#: Members torch itself writes beside the storages: read by the torch reader, never carried.
_TORCH_MEMBERS = frozenset({"data.pkl", "version", ".format_version", "byteorder", ".storage_alignment",
                            ".data/version", ".data/serialization_id"})


@dataclass
class AnemoiMembers:
    """What the source zip holds of anemoi's metadata, and what nothing reads."""

    metadata: dict[str, Any] | None = None
    arrays: dict[str, Any] | None = None
    #: the metadata member (relative to the root) and its verbatim bytes
    member: str | None = None
    raw: bytes | None = None
    #: members no reader understands (relative path -> bytes getter), carried by the converter
    unread: dict[str, Callable[[], bytes]] = field(default_factory=dict)


def _metadata_member(ck: TorchZipCheckpoint) -> str | None:
    """The metadata member as anemoi-utils finds it: by base name anywhere in the zip, the current
    name first; two members of that name are refused, as anemoi-utils refuses them."""
    for name in METADATA_NAMES:
        hits = sorted(r for r in ck._members if r.rsplit("/", 1)[-1] == name)
        if len(hits) > 1:
            raise FormatError(ck.path, f"{len(hits)} members named {name} ({', '.join(hits)})",
                              "anemoi-utils refuses such a file too: which one is the metadata?")
        if hits:
            return hits[0]
    return None


def _anemoi_metadata(ck: TorchZipCheckpoint) -> AnemoiMembers:
    """anemoi-utils' metadata members, read as data (never via the pickle), and every member that
    neither torch nor anemoi-utils accounts for."""
    from ..anemoi_meta import ARRAY_DTYPES, iter_leaves, nest

    out = AnemoiMembers()
    used: set[str] = set()
    rel = _metadata_member(ck)
    if rel is not None:
        m = ck._members[rel]
        out.member, out.raw = rel, bytes(ck._mm[m.data_offset:m.data_offset + m.size])
        used.add(rel)
        try:
            md = json.loads(out.raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(ck.path, f"invalid anemoi metadata ({e})", section=rel) from None
        if not isinstance(md, dict):
            raise FormatError(ck.path, "the anemoi metadata is not a JSON object", section=rel)
        flat = {}
        prefix = f"{ck.root}/"
        try:
            leaves = list(iter_leaves(md.get("supporting_arrays_paths") or {}))
        except ValueError as e:
            raise FormatError(ck.path, str(e), section=rel) from None
        for trail, entry in leaves:
            member_rel = str(entry["path"]).removeprefix(prefix)
            member = ck._members.get(member_rel)
            dtype = ARRAY_DTYPES.get(entry.get("dtype"))
            if member is None or dtype is None:
                raise FormatError(ck.path, f"supporting array {'/'.join(trail)} is missing or has an "
                                  "unsupported dtype", section=rel)
            raw = ck._mm[member.data_offset:member.data_offset + member.size]
            try:
                flat[trail] = np.frombuffer(raw, dtype=dtype).reshape(entry["shape"])
            except (ValueError, TypeError) as e:
                raise FormatError(ck.path, f"supporting array {'/'.join(trail)}: {e}",
                                  section=rel) from None
            used.add(member_rel)
        # supporting_arrays_paths stays: translation steps move it (1.0 -> 2.0 nests it under the
        # dataset), and the writer rewrites its paths for the new file.
        out.metadata, out.arrays = md, nest(flat)
    for name, member in ck._members.items():
        if name in used or name in _TORCH_MEMBERS or name.startswith("data/") or name.endswith("/"):
            continue
        out.unread[name] = (lambda m=member: bytes(ck._mm[m.data_offset:m.data_offset + m.size]))
    return out


def _open_torch(path: str, options: Mapping[str, Any] | None = None) -> Source:
    options = options or {}
    ck = TorchZipCheckpoint(path)
    try:
        obj = ck.obj
        found = _anemoi_metadata(ck)
        md, arrays = found.metadata, found.arrays
        documents: dict[str, Any] = {}
        if is_lightning(obj):
            groups, documents, details = read_lightning(
                obj, path, positional=bool(options.get("optimizer_positional")))
            if md is None:
                md, arrays = fallback_metadata(obj, path)
            fmt, kind = "lightning", "training"
        elif isinstance(obj, StandIn):
            weights, buffers = module_tensors(obj, path)
            groups = {"weights": weights, **({"buffers": buffers} if buffers else {})}
            details = {"module_class": obj.dotted, "non_persistent_buffers": len(buffers)}
            fmt, kind = "torch-module", "inference"
        elif isinstance(obj, dict):
            groups = {"weights": flat_state_dict(obj, path)}
            fmt, kind = "torch-state-dict", "inference"
            details = {}
        else:
            raise FormatError(path, f"the pickle holds a {type(obj).__name__}, not a state dict or a model")
        specs = {sec: [_spec(n, v, path) for n, v in refs.items()] for sec, refs in groups.items()}
    except BaseException:
        ck.close()
        raise

    def materialise(value: Any) -> Any:
        if isinstance(value, TensorRef):
            return ck.tensor(value)
        import torch
        return torch.from_numpy(np.array(value, copy=True))  # small arrays (statistics)

    sections = {sec: (lambda refs=refs: ((n, materialise(v)) for n, v in refs.items()))
                for sec, refs in groups.items()}
    if found.member is not None:
        details["anemoi_metadata_member"] = found.member
    return Source(path, fmt, kind, sections, specs, md, arrays, details, ck.close, documents=documents,
                  mapping=ck._mm, carried=found.unread,
                  metadata_source=(found.member, found.raw) if found.member else None)


def _spec(name: str, value: Any, path: str) -> tuple[str, str, tuple[int, ...], int]:
    if isinstance(value, TensorRef):
        code = _code(value.storage.dtype_name, name, path)
        return name, code, tuple(value.size), nbytes(code, value.size)
    code = _code(_NUMPY_TO_TORCH.get(str(value.dtype), str(value.dtype)), name, path)
    return name, code, tuple(value.shape), nbytes(code, value.shape)


_NUMPY_TO_TORCH = {"bool": "bool", "float64": "float64", "float32": "float32", "float16": "float16",
                   "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8",
                   "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64"}


def _code(dtype_name: str, tensor: str, path: str) -> str:
    """The .anc dtype code of a torch storage dtype, or a clear refusal (e.g. complex128)."""
    code = DTYPE_CODES.get(dtype_name)
    if code is None:
        raise FormatError(path, f"tensor {tensor!r} has dtype {dtype_name}, which .anc cannot store",
                          "cast it to a supported dtype before converting")
    return code


def _open_safetensors(path: str) -> Source:
    from safetensors import safe_open

    try:
        handle = safe_open(path, framework="pt")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise FormatError(path, f"not a readable safetensors file ({e})") from None
    names = list(handle.keys())
    specs = []
    for n in names:
        sl = handle.get_slice(n)
        shape, code = tuple(sl.get_shape()), sl.get_dtype()
        if code not in ITEMSIZE:
            raise FormatError(path, f"tensor {n!r} has dtype {code}, which .anc cannot store")
        specs.append((n, code, shape, nbytes(code, shape)))
    return Source(path, "safetensors", "inference",
                  {"weights": lambda: ((n, handle.get_tensor(n)) for n in names)},
                  {"weights": specs}, details={"metadata": handle.metadata() or {}})


def _is_torch_zip(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/data.pkl") and n.count("/") == 1 for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _is_legacy_torch_file(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return _is_legacy_torch(fh.read(64))
    except OSError:
        return False


def _is_safetensors(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000
    except OSError:
        return False


def _hf(name: str) -> Callable[[str], Any]:
    """A reader from hf_sources, imported when called (it imports this module: no cycle)."""
    def call(path: str) -> Any:
        from . import hf_sources
        return getattr(hf_sources, name)(path)
    return call


#: name -> (detector, opener). Order matters: the first detector that accepts a file wins.
#: Detectors get files and folders alike (a folder source: sharded safetensors, PEFT adapter).
def _anc(name: str) -> Callable[[str], Any]:
    def call(path: str) -> Any:
        from . import anc_source
        return getattr(anc_source, name)(path)
    return call


SOURCES: dict[str, tuple[Callable[[str], bool], Callable[[str], Source]]] = {
    "anc": (_anc("is_anc"), _anc("open_anc")),
    "torch": (_is_torch_zip, _open_torch),
    "safetensors": (_is_safetensors, _open_safetensors),
    "peft": (_hf("is_peft"), _hf("open_peft")),
    "safetensors-sharded": (_hf("is_sharded"), _hf("open_sharded")),
}


def _call(opener: Callable[..., Source], path: str, options: Mapping[str, Any] | None) -> Source:
    """Openers that take reading options (``optimizer_positional``) get them."""
    return opener(path, options) if getattr(opener, "accepts_options", False) else opener(path)


_open_torch.accepts_options = True  # type: ignore[attr-defined]


def detect(path: str | os.PathLike, forced: str | None = None,
           options: Mapping[str, Any] | None = None) -> Source:
    path = os.fspath(path)
    is_dir = os.path.isdir(path)
    if not is_dir and not os.path.isfile(path):
        raise FormatError(path, "no such file" if not os.path.exists(path) else "not a regular file")
    if forced is not None:
        if forced not in SOURCES:
            raise UsageError(path, f"unknown source format {forced!r}", f"one of {', '.join(SOURCES)}")
        return _call(SOURCES[forced][1], path, options)
    for detector, opener in SOURCES.values():
        if detector(path):
            return _call(opener, path, options)
    if is_dir:
        raise FormatError(path, "a folder that is neither sharded safetensors nor a PEFT adapter",
                          "looked for model.safetensors.index.json or another *.safetensors.index.json, "
                          "and for adapter_config.json")
    if _is_legacy_torch_file(path):  # the torch reader refuses it with its own clear message
        return _open_torch(path, options)
    raise FormatError(path, "unrecognised checkpoint format",
                      f"supported: {', '.join(SOURCES)}; force one with --from")
