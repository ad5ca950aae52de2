"""Hugging Face layouts as convert sources: sharded safetensors and PEFT adapter folders.

Both are folders of files rather than one file, so every check that ties the files together
(the index's weight map against the shards, the adapter config against its weights) happens
here, before anything is written: a damaged input fails with one line naming the file at fault.
Tensors stay lazy: each shard is opened with safetensors' ``safe_open`` and read tensor by tensor;
a pickled ``adapter_model.bin`` goes through the restricted torch-zip reader only.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

from ..container.dtypes import ITEMSIZE, nbytes
from ..errors import FormatError
from ..legacy.torchzip import TorchZipCheckpoint
from .harvest import flat_state_dict
from .sources import Source, _code

INDEX_SUFFIX = ".safetensors.index.json"
DEFAULT_INDEX = "model.safetensors.index.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # PEFT's own preference order

Spec = tuple[str, str, tuple[int, ...], int]


# --- detection ---------------------------------------------------------------------------------
def _index_in(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), "*" + INDEX_SUFFIX)))


def is_sharded(path: str) -> bool:
    """An ``*.safetensors.index.json`` file, or a folder holding one."""
    if os.path.isdir(path):
        return bool(_index_in(path))
    return os.path.isfile(path) and os.path.basename(path).endswith(INDEX_SUFFIX)


def is_peft(path: str) -> bool:
    """A folder with ``adapter_config.json`` (the weights are checked when opening, so a folder
    missing them gets a clear error instead of 'unrecognised')."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_CONFIG))


# --- shared helpers ----------------------------------------------------------------------------
def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, but the .anc JSON members are strict JSON: refuse here
    # rather than fail later inside the writer with an internal error.
    raise ValueError(f"{name} is not valid JSON")


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:
        raise FormatError(path, f"cannot read the {what} ({e.strerror})") from None
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(path, f"the {what} is not valid JSON ({e})") from None


def _open_st(path: str) -> Any:
    from safetensors import safe_open

    try:
        return safe_open(path, framework="pt")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise FormatError(path, f"not a readable safetensors file ({e})") from None


def _st_spec(handle: Any, name: str, path: str) -> Spec:
    sl = handle.get_slice(name)
    shape, code = tuple(sl.get_shape()), sl.get_dtype()
    if code not in ITEMSIZE:
        raise FormatError(path, f"tensor {name!r} has dtype {code}, which .anc cannot store",
                          "cast it to a supported dtype before converting")
    return name, code, shape, nbytes(code, shape)


# --- sharded safetensors -----------------------------------------------------------------------
def _find_index(path: str) -> str:
    if not os.path.isdir(path):
        return path
    found = _index_in(path)
    if not found:  # reached only with --from safetensors-sharded: detection needs an index
        raise FormatError(path, f"no *{INDEX_SUFFIX} in this folder", "give the sharded model's folder")
    if os.path.join(path, DEFAULT_INDEX) in found:
        return os.path.join(path, DEFAULT_INDEX)
    if len(found) > 1:  # e.g. two models in one folder: guessing could convert the wrong one
        raise FormatError(path, f"several safetensors indexes ({', '.join(map(os.path.basename, found))})",
                          "pass the index file to convert")
    return found[0]


def _shard_name(index: str, shard: Any, tensor: str) -> str:
    """The weight_map's shard file name, normalised (so './a' and 'a' are one shard) and kept
    inside the index's folder."""
    if not isinstance(shard, str) or not shard:
        raise FormatError(index, f"weight_map entry for {tensor!r} is not a file name")
    name = os.path.normpath(shard)
    # A hostile index must not make us read files outside its folder.
    if os.path.isabs(name) or name == ".." or name.startswith(".." + os.sep):
        raise FormatError(index, f"shard {shard!r} (for {tensor!r}) is outside the index's folder")
    return name


def open_sharded(path: str) -> Source:
    index = _find_index(path)
    doc = _read_json(index, "safetensors index")
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(index, "no weight_map object in the safetensors index")
    weight_map: dict[str, Any] = doc["weight_map"]
    if not weight_map:
        raise FormatError(index, "the weight_map lists no tensors")
    metadata = doc.get("metadata", {})
    if not isinstance(metadata, dict):
        raise FormatError(index, "the index's metadata is not an object")

    # shard name -> tensor names the map assigns to it, in map order
    listed: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        listed.setdefault(_shard_name(index, shard, tensor), []).append(tensor)
    folder = os.path.dirname(index)
    for shard, names in listed.items():
        if not os.path.isfile(os.path.join(folder, shard)):
            raise FormatError(index, f"shard {shard!r} is missing ({len(names)} tensor(s) listed "
                              f"in it, e.g. {names[0]!r})")

    handles: dict[str, Any] = {}
    specs: list[Spec] = []
    order: list[tuple[str, str]] = []  # (shard, tensor): shard by shard, so reads stay sequential
    for shard_name, names in sorted(listed.items()):  # HF shard names sort in shard order
        shard = os.path.join(folder, shard_name)  # as the user gave the folder: errors name it so
        handle = handles[shard] = _open_st(shard)
        present = set(handle.keys())
        missing = [n for n in names if n not in present]
        if missing:
            raise FormatError(shard, f"tensor {missing[0]!r} is listed for this shard in "
                              f"{os.path.basename(index)} but the shard does not hold it"
                              + (f" ({len(missing)} such tensors)" if len(missing) > 1 else ""))
        unlisted = sorted(present - set(names))
        if unlisted:
            # A tensor the map puts elsewhere, or nowhere: the index and the shards disagree, so
            # neither can be trusted to say what the model is.
            raise FormatError(shard, f"tensor {unlisted[0]!r} is in this shard but "
                              f"{os.path.basename(index)} does not list it here"
                              + (f" ({len(unlisted)} such tensors)" if len(unlisted) > 1 else ""))
        for n in handle.keys():  # the shard's own order
            specs.append(_st_spec(handle, n, shard))
            order.append((shard, n))

    data_bytes = sum(s[3] for s in specs)
    if "total_size" in metadata:
        total = metadata["total_size"]
        if isinstance(total, bool) or not isinstance(total, int) or total != data_bytes:
            raise FormatError(index, f"metadata total_size is {total!r} but the shards hold "
                              f"{data_bytes} bytes of tensors", "the index does not match its shards")

    def tensors() -> Iterator[tuple[str, Any]]:
        return ((n, handles[s].get_tensor(n)) for s, n in order)

    details = {"index": os.path.basename(index), "metadata": metadata, "shards": sorted(listed)}
    return Source(index, "safetensors-sharded", "inference", {"weights": tensors}, {"weights": specs},
                  details=details, close=handles.clear)


# --- PEFT adapters -----------------------------------------------------------------------------
def _peft_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, PEFT_CONFIG)
    cfg = _read_json(path, "PEFT adapter config")
    if not isinstance(cfg, dict):
        raise FormatError(path, "the PEFT adapter config is not a JSON object")
    if not isinstance(cfg.get("peft_type"), str) or not cfg["peft_type"]:
        raise FormatError(path, "the PEFT adapter config has no peft_type",
                          "is this a folder written by peft's save_pretrained?")
    return cfg


def _peft_weights(folder: str) -> str:
    for name in PEFT_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FormatError(folder, f"a PEFT adapter folder without weights: no {' or '.join(PEFT_WEIGHTS)} "
                      f"next to {PEFT_CONFIG}")


def open_peft(path: str) -> Source:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if not os.path.isfile(os.path.join(folder, PEFT_CONFIG)):
        raise FormatError(path, f"not a PEFT adapter folder: no {PEFT_CONFIG}")
    cfg = _peft_config(folder)
    weights = _peft_weights(folder)
    close = lambda: None  # noqa: E731
    if weights.endswith(".safetensors"):
        handle = _open_st(weights)
        names = list(handle.keys())
        specs = [_st_spec(handle, n, weights) for n in names]
        tensors = lambda: ((n, handle.get_tensor(n)) for n in names)  # noqa: E731
    else:
        # adapter_model.bin is torch.save(state_dict): read through the restricted unpickler only.
        ck = TorchZipCheckpoint(weights)
        close = ck.close
        try:
            if not isinstance(ck.obj, dict):
                raise FormatError(weights, f"the pickle holds a {type(ck.obj).__name__}, not a state dict")
            refs = flat_state_dict(ck.obj, weights)
            specs = []
            for n, r in refs.items():
                code = _code(r.storage.dtype_name, n, weights)
                specs.append((n, code, r.size, nbytes(code, r.size)))
        except BaseException:
            ck.close()
            raise
        tensors = lambda: ((n, ck.tensor(r)) for n, r in refs.items())  # noqa: E731
    if not specs:
        close()
        raise FormatError(weights, "the PEFT adapter holds no tensors")
    # verbatim: a later reader rebuilds the PeftConfig from it
    details = {"peft_config": cfg, "weights_file": os.path.basename(weights)}
    # The source's identity (sha256 in the lineage) is that of the weights file; the config is
    # kept whole in metadata.json, so both parts of the adapter are pinned.
    return Source(weights, "peft", "adapter", {"weights": tensors}, {"weights": specs},
                  details=details, close=close, extra_metadata={"peft_config": cfg})


__all__ = ["is_peft", "is_sharded", "open_peft", "open_sharded"]
