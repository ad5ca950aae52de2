"""Plain safetensors files from one tensor section, streamed tensor by tensor.

The header is planned from the section's own header (names, dtypes, shapes, sizes) before a byte
of data is read, then each tensor's bytes are copied in order: memory stays bounded by the largest
tensor, as when the ``.anc`` was written.

Aliases (one tensor under several names, e.g. tied weights) live only in the ``.anc`` manifest.
``materialize`` writes each alias as a full copy of its target, so every name is a real tensor;
``metadata`` writes each distinct tensor once and records ``{alias: target}`` as JSON under the
``__metadata__`` key :data:`ALIASES_KEY`, which a loader re-ties (safetensors itself refuses
shared tensors, so there is no third way).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import BinaryIO

from ..container.stformat import TensorEntry, header_json, padded_header

#: ``__metadata__`` key holding ``{alias: target}`` as JSON, with ``--aliases metadata``.
ALIASES_KEY = "anemoi_ckpt.aliases"
#: transformers refuses a safetensors file whose ``format`` is not a framework it knows.
BASE_METADATA = {"format": "pt"}
ALIAS_MODES = ("materialize", "metadata")


def names_to_write(mapping: Mapping, aliases: str) -> list[str]:
    """The names stored as tensors: all of them, or only the distinct ones."""
    distinct = list(mapping.entries)
    return distinct + list(mapping.aliases) if aliases == "materialize" else distinct


def plan(mapping: Mapping, names: Iterable[str]) -> list[TensorEntry]:
    """Header entries for ``names`` packed in order (an alias takes its target's dtype and shape)."""
    out, pos = [], 0
    for name in names:
        e = mapping.entries[mapping.aliases.get(name, name)]
        out.append(TensorEntry(name, e.dtype, tuple(e.shape), pos, pos + e.nbytes))
        pos += e.nbytes
    return out


def file_metadata(mapping: Mapping, names: list[str], aliases: str) -> dict[str, str]:
    """``__metadata__`` for a file holding ``names``: the aliases whose target it holds."""
    md = dict(BASE_METADATA)
    if aliases == "metadata":
        held = set(names)
        tied = {a: t for a, t in mapping.aliases.items() if t in held}
        if tied:
            md[ALIASES_KEY] = json.dumps(tied, sort_keys=True)
    return md


def write(fh: BinaryIO, mapping: Mapping, names: list[str], metadata: dict[str, str]) -> int:
    """Write a safetensors file of ``names`` from ``mapping`` to ``fh``; returns bytes written."""
    import torch

    entries = plan(mapping, names)
    head = padded_header(header_json(entries, metadata))
    fh.write(head)
    for e in entries:
        if e.nbytes:
            t = mapping[e.name].contiguous().reshape(-1).view(torch.uint8)
            fh.write(memoryview(t.numpy()))
    return len(head) + (entries[-1].end if entries else 0)
