"""The safetensors member format: building and validating headers.

Pure functions over bytes. A header is an 8-byte little-endian length N, then N bytes of UTF-8 JSON
mapping tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` plus an optional
``"__metadata__"`` string map. We pad the JSON with spaces (which safetensors' own writer and every
JSON parser accept) so that 8 + N is a multiple of 64 and the payload stays aligned.
"""

from __future__ import annotations

import json
import math
import operator
import struct
from typing import NamedTuple

from .dtypes import ITEMSIZE, nbytes
from .zipwrite import ALIGNMENT

#: safetensors refuses headers above 100 MB; so do we, before allocating anything.
MAX_HEADER = 100_000_000
#: torch sizes and strides are int64; a larger element count (even of an empty tensor, whose
#: zero dimension makes the byte count 0) makes torch fail with an overflow instead of our error.
_MAX_ELEMENTS = 2**63 - 1
METADATA_KEY = "__metadata__"


class TensorEntry(NamedTuple):  # a tuple: cheap to build for thousands of tensors per open
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offset in the payload (after the header)
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def header_json(entries: list[TensorEntry], metadata: dict[str, str] | None = None) -> bytes:
    obj: dict[str, object] = {}
    if metadata:
        obj[METADATA_KEY] = dict(metadata)
    for e in entries:
        obj[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def padded_header(js: bytes, min_total: int = 0) -> bytes:
    """Length prefix + JSON + spaces, total a multiple of ALIGNMENT and at least ``min_total``."""
    total = max(8 + len(js), min_total)
    total += (-total) % ALIGNMENT
    body = js + b" " * (total - 8 - len(js))
    return struct.pack("<Q", len(body)) + body


def header_size_for(js_len: int) -> int:
    total = 8 + js_len
    return total + (-total) % ALIGNMENT


class HeaderError(ValueError):
    """A malformed safetensors header; the message says what is wrong."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)  # C speed; the slow search runs only when a duplicate exists
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise HeaderError(f"duplicate tensor name {k!r} in the header")
            seen.add(k)
    return out


def read_header_length(prefix: bytes, member_size: int) -> int:
    if member_size < 8 or len(prefix) < 8:
        raise HeaderError(f"member is {member_size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER:
        raise HeaderError(f"header claims {n} bytes, more than the 100 MB limit")
    if 8 + n > member_size:
        raise HeaderError(f"header claims {n} bytes but the member holds only {member_size - 8}")
    return n


def parse_header(raw: bytes, member_size: int) -> tuple[list[TensorEntry], dict[str, str]]:
    """Validate a header (``raw`` = the N JSON bytes) against the member size.

    Returns the entries in offset order and the string metadata. Checks: UTF-8 JSON object, no
    duplicate names, known dtypes, non-negative integer shapes, offsets matching dtype x shape,
    tensors tiling the payload exactly (no gap, no overlap, nothing after the last one).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HeaderError(f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except HeaderError:
        raise
    except (ValueError, RecursionError) as e:
        raise HeaderError(f"header is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise HeaderError("header is not a JSON object")
    meta = obj.pop(METADATA_KEY, None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise HeaderError("__metadata__ must map strings to strings")
    entries = _fast_entries(obj)
    if entries is None:  # some entry breaks a rule: the full checks find it and say which
        entries = [_checked_entry(name, info) for name, info in obj.items()]
    entries.sort(key=_by_offsets)
    payload = member_size - 8 - len(raw)
    pos = 0
    for e in entries:
        if e.begin != pos:
            what = "overlaps the previous tensor" if e.begin < pos else "leaves a gap before it"
            raise HeaderError(f"tensor {e.name!r}: data_offsets {e.begin}..{e.end} {what}")
        pos = e.end
    if pos != payload:
        raise HeaderError(f"tensors cover {pos} bytes but the payload holds {payload}")
    return entries, meta


_by_offsets = operator.itemgetter(3, 4)  # (begin, end), in C
_new_entry = tuple.__new__  # a NamedTuple's own __new__ is Python code: this is the C one


def _fast_entries(obj: dict[str, object]) -> list[TensorEntry] | None:
    """The entries of a header that passes every per-entry rule of :func:`_checked_entry`, or
    None if one does not (the caller then runs those checks to report it). One open parses
    every entry of a section, so this loop does the same checks with the least work per entry:
    no function call per entry, the C tuple constructor, ``math.prod`` for the element count."""
    itemsize = ITEMSIZE
    prod = math.prod
    out: list[TensorEntry] = []
    append = out.append
    for name, info in obj.items():
        if type(info) is not dict:
            return None
        dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if type(shape) is not list or len(shape) > 64 or type(offs) is not list or len(offs) != 2:
            return None
        size = itemsize.get(dtype) if type(dtype) is str else None
        if size is None:
            return None
        for d in shape:
            if type(d) is not int or d < 0:
                return None
        begin, end = offs
        if type(begin) is not int or type(end) is not int or begin < 0:
            return None
        elements = prod(shape)
        # Zero dimensions (elements counted as 1 for the limit) take the full checks.
        if not 0 < elements <= _MAX_ELEMENTS or end - begin != size * elements:
            return None
        append(_new_entry(TensorEntry, (name, dtype, tuple(shape), begin, end)))
    return out


def _checked_entry(name: str, info: object) -> TensorEntry:
    """One header entry, checked by rule 5.3.7 of docs/format.md, with a message for each rule."""
    if not isinstance(info, dict):
        raise HeaderError(f"tensor {name!r}: entry is not an object")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    size = ITEMSIZE.get(dtype) if isinstance(dtype, str) else None
    if size is None:
        raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
    # Plain loops, not all(<generator>): this runs for every tensor on every open.
    if type(shape) is not list:
        raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if len(shape) > 64:
        raise HeaderError(f"tensor {name!r}: shape {shape[:8]} is too large")
    elements = 1
    for d in shape:
        if type(d) is not int or d < 0:
            raise HeaderError(f"tensor {name!r}: shape must be a list of non-negative integers")
        elements *= d if d else 1
    if elements > _MAX_ELEMENTS:
        raise HeaderError(f"tensor {name!r}: shape {shape[:8]} is too large")
    if (type(offs) is not list or len(offs) != 2 or type(offs[0]) is not int
            or type(offs[1]) is not int or offs[0] < 0 or offs[1] < offs[0]):
        raise HeaderError(f"tensor {name!r}: data_offsets must be [begin, end] with begin <= end")
    begin, end = offs
    need = nbytes(dtype, shape)
    if end - begin != need:
        raise HeaderError(f"tensor {name!r}: {end - begin} bytes for a {dtype} tensor "
                          f"of shape {shape}, which needs {need}")
    return TensorEntry(name, dtype, tuple(shape), begin, end)
