"""Pure comparison for ``diff``: two arrays, tensors or JSON values in, their differences out.

No file I/O here. Large tensors are compared chunk by chunk over their flattened views, so memory
stays bounded by a few copies of one chunk in float64 whatever the tensor's size; per-chunk
results merge exactly (counts add, maxima take the max).

Conventions (docs/cli.md, ``diff``):

* equal means ``a == b`` or both NaN at the same place (so ``-0.0`` equals ``0.0``);
* NaN against a number, or ``inf`` against anything else, is a difference of ``inf``;
* relative difference is ``|a - b| / max(|a|, tiny)``, with ``a`` (the old file) the reference
  and ``tiny`` the smallest normal float64, so a change from exactly 0 has a huge relative size;
* an element is within tolerance when ``|a - b| <= atol + rtol * |a|`` (numpy's ``isclose`` with
  the old value as reference);
* floating-point values (any width, bfloat16 and float8 included) are compared in float64,
  complex ones in complex128; integer and bool values exactly, as integers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: Elements per chunk: 8 MiB per float64 copy, a handful of copies alive at once.
CHUNK = 1 << 20
TINY = float(np.finfo(np.float64).tiny)
#: Old and new values in metadata differences are shown as JSON cut to about this many characters.
MAX_VALUE = 80
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class ValueStats:
    """How two equally shaped arrays differ. ``max_abs`` is an ``int`` for integer comparisons."""

    numel: int = 0
    differing: int = 0  # elements that are not equal (NaN == NaN)
    outside: int = 0  # differing elements beyond atol/rtol
    max_abs: float | int = 0
    max_rel: float = 0.0

    @property
    def within_tolerance(self) -> bool:
        return self.outside == 0

    def merge(self, other: "ValueStats") -> "ValueStats":
        return ValueStats(self.numel + other.numel, self.differing + other.differing,
                          self.outside + other.outside, max(self.max_abs, other.max_abs),
                          max(self.max_rel, other.max_rel))

    def to_dict(self) -> dict[str, object]:
        # JSON has no infinity: spell it as the string "inf" rather than emit invalid JSON.
        def num(x: float | int) -> float | int | str:
            return "inf" if isinstance(x, float) and x == float("inf") else x

        return {"numel": self.numel, "differing": self.differing, "outside_tolerance": self.outside,
                "max_abs": num(self.max_abs), "max_rel": num(self.max_rel),
                "within_tolerance": self.within_tolerance}


def _integer_kind(a: np.ndarray, b: np.ndarray) -> type | None:
    """The exact integer type both arrays fit in, or None when they must go through float64."""
    kinds = {a.dtype.kind, b.dtype.kind}
    if not kinds <= set("biu"):
        return None
    if kinds <= set("bu"):
        return np.uint64
    if np.dtype(np.uint64) in (a.dtype, b.dtype):  # uint64 against a signed type: no exact common type
        return None
    return np.int64


def _compare_int(a: np.ndarray, b: np.ndarray, atol: float, rtol: float, kind: type) -> ValueStats:
    a, b = a.astype(kind, copy=False), b.astype(kind, copy=False)
    ne = a != b
    differing = int(np.count_nonzero(ne))
    if not differing:
        return ValueStats(a.size)
    da, db = a[ne], b[ne]
    # Subtract in uint64 (modulo 2**64) from the larger value: exact, as |a - b| < 2**64 always.
    ua, ub = da.view(np.uint64), db.view(np.uint64)
    absd = np.where(da >= db, ua - ub, ub - ua)
    absd_f = absd.astype(np.float64)
    mag = np.abs(da.astype(np.float64))
    rel = absd_f / np.maximum(mag, TINY)
    outside = int(np.count_nonzero(~(absd_f <= atol + rtol * mag)))
    return ValueStats(a.size, differing, outside, int(absd.max()), float(rel.max()))


def _compare_float(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> ValueStats:
    wide = np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64
    a, b = a.astype(wide, copy=False), b.astype(wide, copy=False)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        ne = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        differing = int(np.count_nonzero(ne))
        if not differing:
            return ValueStats(a.size)
        da, db = a[ne], b[ne]
        absd = np.abs(da - db)
        absd[np.isnan(absd)] = np.inf  # NaN against a number (or inf - inf): an infinite difference
        mag = np.abs(da)
        rel = absd / np.maximum(mag, TINY)
        rel[np.isnan(rel)] = np.inf
        outside = int(np.count_nonzero(~(absd <= atol + rtol * mag)))
    return ValueStats(a.size, differing, outside, float(absd.max()), float(rel.max()))


def compare_arrays(a: np.ndarray, b: np.ndarray, *, atol: float = 0.0, rtol: float = 0.0) -> ValueStats:
    """Statistics for two arrays of the same number of elements (compared flattened, in order)."""
    a, b = np.ravel(a), np.ravel(b)
    if a.size != b.size:
        raise ValueError(f"cannot compare {a.size} elements with {b.size}")
    kind = _integer_kind(a, b)
    if kind is not None:
        return _compare_int(a, b, atol, rtol, kind)
    return _compare_float(a, b, atol, rtol)


def compare_chunks(pairs: Iterable[tuple[np.ndarray, np.ndarray]], *, atol: float = 0.0,
                   rtol: float = 0.0) -> ValueStats:
    """Merge of :func:`compare_arrays` over consecutive chunks of two flattened arrays."""
    total = ValueStats()
    for a, b in pairs:
        total = total.merge(compare_arrays(a, b, atol=atol, rtol=rtol))
    return total


def _to_numpy(t: "torch.Tensor") -> np.ndarray:
    import torch

    if t.dtype.is_complex:
        return t.to(torch.complex128).numpy()
    if t.dtype.is_floating_point:  # bfloat16 and float8 have no numpy dtype: widen in torch
        return t.to(torch.float64).numpy()
    return t.numpy()


def tensor_chunks(a: "torch.Tensor", b: "torch.Tensor", chunk: int = CHUNK,
                  on_chunk: Callable[[int], None] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Aligned numpy chunks of two tensors' flattened views; ``on_chunk(bytes)`` after each.

    Only one chunk of each is materialised at a time: a tensor over a memory map is read slice by
    slice, never loaded or converted whole."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    n = fa.numel()
    if n != fb.numel():
        raise ValueError(f"cannot compare {n} elements with {fb.numel()}")
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        yield _to_numpy(fa[start:end]), _to_numpy(fb[start:end])
        if on_chunk is not None:
            on_chunk((end - start) * (a.element_size() + b.element_size()))


def compare_tensors(a: "torch.Tensor", b: "torch.Tensor", *, atol: float = 0.0, rtol: float = 0.0,
                    chunk: int = CHUNK, on_chunk: Callable[[int], None] | None = None) -> ValueStats:
    """Statistics for two tensors with the same number of elements, computed chunk by chunk."""
    return compare_chunks(tensor_chunks(a, b, chunk, on_chunk), atol=atol, rtol=rtol)


# --- JSON values (metadata, documents) ---------------------------------------------------------
@dataclass
class MetaChange:
    """A JSON-path difference: ``path`` like ``anemoi.config.training.lr`` or ``documents.x[3]``."""

    path: str
    change: str  # added, removed, changed
    old: str | None = None  # JSON text, cut to about MAX_VALUE characters
    new: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "change": self.change, "old": self.old, "new": self.new}


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE - 3] + "..."


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):  # True == 1 in Python, not in JSON
        return type(x) is type(y) and x == y
    if isinstance(x, float) and isinstance(y, float) and x != x and y != y:  # NaN, as anemoi writes it
        return True
    return x == y


def _key_path(path: str, key: str) -> str:
    if _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def json_diff(old: Any, new: Any, path: str) -> Iterator[MetaChange]:
    """Path-level differences between two JSON values; a subtree present on one side only is one
    ``added``/``removed`` entry, not one per leaf."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            sub = _key_path(path, str(key))
            if key not in new:
                yield MetaChange(sub, "removed", old=_short(old[key]))
            elif key not in old:
                yield MetaChange(sub, "added", new=_short(new[key]))
            else:
                yield from json_diff(old[key], new[key], sub)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            sub = f"{path}[{i}]"
            if i >= len(new):
                yield MetaChange(sub, "removed", old=_short(old[i]))
            elif i >= len(old):
                yield MetaChange(sub, "added", new=_short(new[i]))
            else:
                yield from json_diff(old[i], new[i], sub)
    elif not _same(old, new):
        yield MetaChange(path, "changed", old=_short(old), new=_short(new))
