"""A sharded safetensors folder with ``model.safetensors.index.json``, as transformers writes it.

Shards are named ``model-00001-of-00003.safetensors``; the index is
``{"metadata": {"total_size": N}, "weight_map": {name: shard}}`` with ``total_size`` the bytes of
tensor data, so ``transformers`` (and anything that reads the index and loads each shard) finds
every tensor. With ``--aliases metadata`` an alias is not stored: the index's ``metadata.aliases``
and the target's shard ``__metadata__`` record it instead.

The folder is written beside its destination under a hidden name and renamed into place when
complete; an existing folder is replaced only after the new one is whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping

from ..container.atomic import atomic_output
from . import stfile

INDEX = "model.safetensors.index.json"


def split(mapping: Mapping, names: list[str], max_bytes: int) -> list[list[str]]:
    """Names grouped into shards in order, each at most ``max_bytes`` of data unless one tensor is
    larger on its own (then it gets a shard to itself, as transformers does)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in names:
        n = mapping.entries[mapping.aliases.get(name, name)].nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def index(mapping: Mapping, shards: list[list[str]], aliases: str) -> dict:
    weight_map = {name: shard_name(i, len(shards)) for i, names in enumerate(shards) for name in names}
    total = sum(mapping.entries[mapping.aliases.get(n, n)].nbytes for n in weight_map)
    md: dict = {"total_size": total}
    if aliases == "metadata" and mapping.aliases:
        md["aliases"] = dict(sorted(mapping.aliases.items()))
    return {"metadata": md, "weight_map": weight_map}


def write_folder(target: str, mapping: Mapping, aliases: str, max_bytes: int) -> list[str]:
    """Write the folder ``target``; returns the file names in it."""
    names = stfile.names_to_write(mapping, aliases)
    shards = split(mapping, names, max_bytes)
    parent, base = os.path.split(target)
    tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    try:
        files = []
        for i, group in enumerate(shards):
            fname = shard_name(i, len(shards))
            with atomic_output(os.path.join(tmp, fname), durable=False) as fh:
                stfile.write(fh, mapping, group, stfile.file_metadata(mapping, group, aliases))
            files.append(fname)
        with atomic_output(os.path.join(tmp, INDEX), durable=False) as fh:
            fh.write(json.dumps(index(mapping, shards, aliases), indent=2).encode() + b"\n")
        files.append(INDEX)
        os.chmod(tmp, 0o755 & ~_umask())
        _replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _replace_folder(new: str, target: str) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".old",
                           dir=os.path.dirname(target))
    os.rmdir(old)  # a free name beside the target
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # put the previous folder back
        raise
    with contextlib.suppress(OSError):
        shutil.rmtree(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
