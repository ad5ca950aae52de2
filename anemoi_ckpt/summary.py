"""What ``inspect`` reports: everything from the manifest, metadata, lineage and tensor headers,
how the sections are stored, and who the signature claims to be from.

Reads no tensor bytes: counts, dtypes and shapes come from the safetensors headers. The signature
is read (the embedded member, or ``FILE.sig`` beside a local file) but not checked: that is a
trust decision, ``verify --signature``'s; so model-signing is never imported here.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from .anemoi_meta import flat_arrays
from .errors import AncError
from .reader import Checkpoint
from .signing import signature_info


def summarize(ck: Checkpoint) -> dict[str, Any]:
    tensor_sections: dict[str, Any] = {}
    for name in ck.tensor_sections():
        mapping = ck.tensors(name)
        dtypes: collections.Counter[str] = collections.Counter()
        params = 0
        stored_bytes = 0
        for e in mapping.entries.values():
            dtypes[e.dtype] += 1
            params += math.prod(e.shape)
            stored_bytes += e.nbytes
        for target in mapping.aliases.values():
            e = mapping.entries[target]
            dtypes[e.dtype] += 1
            params += math.prod(e.shape)
        tensor_sections[name] = {"tensors": len(mapping), "stored": len(mapping.entries),
                                 "aliases": len(mapping.aliases), "parameters": params,
                                 "bytes": stored_bytes, "dtypes": dict(sorted(dtypes.items()))}
    md = ck.metadata
    amd = ck.anemoi_metadata
    anemoi = None
    if amd is not None:
        anemoi = {"version": amd.get("version"), "uuid": amd.get("uuid"),
                  "keys": sorted(amd)[:40], "supporting_arrays": _array_list(ck)}
    lineage = ck.lineage
    return {
        "path": ck.path,
        "format": ck.manifest.format,
        "format_version": ck.format_version,
        "schema_version": md.schema_version,
        "kind": ck.kind,
        "uuid": ck.uuid,
        "content_id": ck.content_id,
        "created": ck.manifest.created,
        "producer": f"{ck.manifest.producer.name} {ck.manifest.producer.version}",
        "sections": [{"path": s.path, "role": s.role, "required": s.required, "size": s.size,
                      "digest": s.digest} for s in ck.sections()],
        "tensor_sections": tensor_sections,
        "metadata": {"model": md.model.model_dump() if md.model else None,
                     "description": md.description, "user_keys": sorted(md.user)},
        "anemoi_metadata": anemoi,
        "lineage": {"records": len(lineage.records), "depth": lineage.depth(),
                    "operation": lineage.records[0].operation if lineage.records else None},
        "storage": storage(ck),
        "signature": signature(ck),
    }


def storage(ck: Checkpoint) -> dict[str, Any]:
    """How the members are stored: ``encoding`` (``none``, or ``zstd:LEVEL`` per distinct codec
    and level of the compressed tensor sections, comma-separated), the bytes of every member as
    stored and as they would be uncompressed, and each compressed section (by name) in brief."""
    compressed: dict[str, Any] = {}
    stored = logical = 0
    for s in ck.sections():
        enc = s.encoding
        stored += s.size
        logical += s.size if enc is None else enc.size
        if enc is not None:
            compressed[s.name or s.path] = {"codec": enc.codec, "level": enc.level,
                                            "transform": enc.transform, "stored": s.size,
                                            "logical": enc.size, "frames": len(enc.frames)}
    kinds = sorted({c["codec"] if c["level"] is None else f"{c['codec']}:{c['level']}"
                    for c in compressed.values()})
    return {"encoding": ", ".join(kinds) or "none", "stored": stored, "logical": logical,
            "compressed": compressed}


def signature(ck: Checkpoint) -> dict[str, Any] | None:
    """What the file's signature claims (:func:`~anemoi_ckpt.signing.signature_info`, the one
    ``verify --signature`` would check), ``checked`` always false; None when unsigned. A
    signature that cannot be read is reported (``damaged``), not raised: ``inspect`` still shows
    the rest of the file."""
    try:
        info = signature_info(ck)
    except AncError as e:
        return {"damaged": e.line(), "checked": False}
    if info is None:
        return None
    return {"form": "detached" if info.detached else "embedded", "method": info.method,
            "signer": info.signer, "location": info.signature, "digest": info.digest, "checked": False}


def _array_list(ck: Checkpoint) -> list[str]:
    return [f"{k} {v.dtype} {list(v.shape)}" for k, v in flat_arrays(ck.supporting_arrays).items()]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _storage_text(st: dict[str, Any]) -> str:
    if st["encoding"] == "none":
        return "uncompressed (memory-mappable)"
    ratio = st["stored"] / st["logical"] if st["logical"] else 1.0
    return (f"{st['encoding']} ({', '.join(st['compressed'])}): members {human_size(st['stored'])} "
            f"stored, {human_size(st['logical'])} uncompressed ({ratio:.2f}x)")


def _signature_text(sig: dict[str, Any] | None) -> str:
    if sig is None:
        return "none"
    if "damaged" in sig:
        return f"DAMAGED: {sig['damaged']}"
    where = f" {sig['location']}" if sig["form"] == "detached" else ""
    return (f"{sig['form']}{where}, {sig['method']} {sig['signer']} "
            "(not checked: anemoi-ckpt verify --signature)")


def render(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}",
        f"  kind            {info['kind']}",
        f"  format          {info['format']} {info['format_version']} (schema {info['schema_version']})",
        f"  uuid            {info['uuid']}",
        f"  content id      {info['content_id']}",
        f"  created         {info['created']} by {info['producer']}",
        f"  lineage         {info['lineage']['records']} record(s), depth {info['lineage']['depth']}, "
        f"operation {info['lineage']['operation']}",
        f"  storage         {_storage_text(info['storage'])}",
        f"  signature       {_signature_text(info['signature'])}",
    ]
    model = info["metadata"]["model"]
    if model:
        lines.append(f"  model builder   {model['builder']}")
    if info["metadata"]["description"]:
        lines.append(f"  description     {info['metadata']['description']}")
    for name, t in info["tensor_sections"].items():
        dt = ", ".join(f"{k} x{v}" for k, v in t["dtypes"].items()) or "-"
        lines.append(f"  tensors [{name}]  {t['tensors']} ({t['aliases']} aliases), "
                     f"{t['parameters']:,} elements, {human_size(t['bytes'])}; {dt}")
    a = info["anemoi_metadata"]
    if a:
        lines.append(f"  anemoi metadata version {a['version']}, {len(a['supporting_arrays'])} supporting array(s)")
        lines.extend(f"    {s}" for s in a["supporting_arrays"])
    lines.append("  sections")
    width = max((len(s["path"]) for s in info["sections"]), default=0)
    for s in info["sections"]:
        req = "required" if s["required"] else "optional"
        lines.append(f"    {s['path']:<{width}}  {s['role']:<16} {human_size(s['size']):>10}  {req}  "
                     f"{s['digest'][:23]}")
    return "\n".join(lines)


