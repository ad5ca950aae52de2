"""anemoi's metadata layout inside the zip, exactly as anemoi-utils' ``save_metadata`` lays it out.

``<root>/anemoi-metadata/anemoi.json`` holds the metadata dict with ``supporting_arrays_paths``
added; each array is raw ``array.tobytes()`` (C order) at ``<root>/anemoi-metadata/<key>.numpy``, or
``<root>/anemoi-metadata/<dataset>/<key>.numpy`` for per-dataset (nested) arrays. Entries are
``{"path", "shape", "dtype"}``. Keeping this byte-for-byte means ``load_metadata`` from anemoi-utils,
``anemoi-inference inspect`` and the registry read an ``.anc`` unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


LEAF_KEYS = {"path", "shape", "dtype"}
#: str(array.dtype) -> dtype for every array dtype we store (what anemoi-utils writes).
ARRAY_DTYPES = {str(np.dtype(n)): np.dtype(n) for n in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128")}


def arrays_paths(root: str, folder: str, arrays: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``supporting_arrays_paths`` value for ``arrays`` (nested dicts allowed)."""
    out: dict[str, Any] = {}
    for key, value in (arrays or {}).items():
        check_key(key)
        if isinstance(value, Mapping):
            out[key] = arrays_paths(f"{root}/{folder}", key, value)
        else:
            arr = np.asarray(value)
            out[key] = {"path": f"{root}/{folder}/{key}.numpy", "shape": list(arr.shape),
                        "dtype": str(arr.dtype)}
    return out


def check_key(key: object) -> None:
    """Keys become member path components: refuse anything that is not one plain name."""
    if (not isinstance(key, str) or not key or key in (".", "..") or "/" in key or "\\" in key
            or any(ord(c) < 32 for c in key)):
        raise ValueError(f"supporting array key {key!r} cannot be a member name "
                         "(no '/', '\\', control characters, '.' or '..')")


def iter_arrays(arrays: Mapping[str, Any] | None, paths: Mapping[str, Any]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (member path, C-contiguous array) for every leaf, in the order of ``arrays``."""
    for key, value in (arrays or {}).items():
        if isinstance(value, Mapping):
            yield from iter_arrays(value, paths[key])
        else:
            arr = np.ascontiguousarray(value)
            if str(arr.dtype) not in ARRAY_DTYPES:
                raise TypeError(f"supporting array {key!r}: dtype {arr.dtype} cannot be stored "
                                "(numeric and bool arrays only)")
            yield paths[key]["path"], arr


def iter_leaves(paths: Any, trail: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Walk ``supporting_arrays_paths`` the way anemoi-utils does: a dict whose keys are exactly
    {path, shape, dtype} is a leaf, any other dict is a level of nesting."""
    if not isinstance(paths, Mapping):
        raise ValueError(f"supporting_arrays_paths{_where(trail)} is not an object")
    for key, entry in paths.items():
        if isinstance(entry, Mapping) and set(entry) == LEAF_KEYS:
            yield trail + (key,), dict(entry)
        elif isinstance(entry, Mapping):
            yield from iter_leaves(entry, trail + (key,))
        else:
            raise ValueError(f"supporting_arrays_paths{_where(trail + (key,))} is not an object")


def check_leaf(trail: tuple[str, ...], entry: Mapping[str, Any], member_size: int) -> tuple[np.dtype, tuple[int, ...]]:
    """Validate one entry against its member's size; never trust a length from the file."""
    where = _where(trail)
    # An allow-list of spellings, not np.dtype(<string from the file>): numpy's dtype parser
    # accepts a whole mini-language (structured, object, sub-array dtypes).
    dtype = ARRAY_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise ValueError(f"supporting array{where}: unsupported dtype {entry['dtype']!r}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"supporting array{where}: shape must be a list of non-negative integers")
    n = dtype.itemsize
    for d in shape:
        n *= d
    if n != member_size:
        raise ValueError(f"supporting array{where}: {dtype} {shape} needs {n} bytes, "
                         f"member has {member_size}")
    return dtype, tuple(shape)


def nest(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for trail, value in flat.items():
        d = out
        for k in trail[:-1]:
            d = d.setdefault(k, {})
        d[trail[-1]] = value
    return out


def _where(trail: tuple[str, ...]) -> str:
    return "".join(f"[{k!r}]" for k in trail)


def flat_arrays(nested: Mapping[str, Any], trail: str = "") -> dict[str, np.ndarray]:
    """Nested supporting arrays as one level, keyed ``"<dataset>/<key>"`` (``"<key>"`` when flat)."""
    out: dict[str, np.ndarray] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            out.update(flat_arrays(value, f"{trail}{key}/"))
        else:
            out[f"{trail}{key}"] = value
    return out


def derived(parent: Mapping[str, Any], run_id: str) -> dict[str, Any]:
    """The anemoi metadata of a checkpoint made from ``parent``'s model by another run (a merged
    fine-tune): a deep copy with the fork recorded the way anemoi-training records one.

    A run forked from another (``training.fork_run_id`` set) gets its own run id, which
    anemoi-training writes at the top level, in ``metadata_inference`` and in the resolved
    ``config.training``; the parent run's id goes to ``config.training.fork_run_id``. The top-level
    ``run_id`` is always set; ``metadata_inference.run_id`` and ``config.training`` only where the
    parent has them, so another layout keeps its shape. anemoi-training keeps
    no parent *checkpoint* uuid in the file (its Trainer's ``parent_uuid`` is never written), so
    the parent's ``uuid`` is added as a top-level ``parent_uuid``, a key anemoi's readers ignore.
    ``uuid`` itself is left to the writer: a new file gets a new one."""
    md = copy.deepcopy(dict(parent))
    training = (md.get("config") or {}).get("training") if isinstance(md.get("config"), dict) else None
    training = training if isinstance(training, dict) else None
    parent_run = md.get("run_id")
    if not isinstance(parent_run, str) and training is not None:
        parent_run = training.get("run_id")
    md["run_id"] = run_id
    if isinstance(md.get("metadata_inference"), dict) and "run_id" in md["metadata_inference"]:
        md["metadata_inference"]["run_id"] = run_id
    if training is not None:
        training["run_id"] = run_id
        training["fork_run_id"] = parent_run if isinstance(parent_run, str) else None
    md["parent_uuid"] = parent.get("uuid") if isinstance(parent.get("uuid"), str) else None
    return md
