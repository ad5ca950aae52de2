"""What ``inspect`` reports: everything from the manifest, metadata, lineage and tensor headers.

Reads no tensor bytes: counts, dtypes and shapes come from the safetensors headers.
"""

from __future__ import annotations

import collections
import math
from typing import Any

from .anemoi_meta import flat_arrays
from .reader import Checkpoint


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
    }


def _array_list(ck: Checkpoint) -> list[str]:
    return [f"{k} {v.dtype} {list(v.shape)}" for k, v in flat_arrays(ck.supporting_arrays).items()]


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


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


