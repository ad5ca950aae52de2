"""What a lineage record can say about where a model came from, read off anemoi's metadata:
code versions, dataset, run id and a digest of the training configuration."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _code_versions(md: dict[str, Any]) -> dict[str, str]:
    versions = (md.get("provenance_training") or {}).get("module_versions") or {}
    out: dict[str, str] = {}
    if isinstance(versions, dict):
        for name, value in versions.items():
            value = value.get("version") if isinstance(value, dict) else value
            if isinstance(value, str) and (name.startswith("anemoi") or name in ("torch", "torch_geometric")):
                out[name] = value
    python = (md.get("provenance_training") or {}).get("python")
    if isinstance(python, str):
        out["python"] = python
    return out


def _dataset(md: dict[str, Any]) -> str | None:
    ds = md.get("dataset")
    if isinstance(ds, dict):
        # 2.0: {dataset name: {...}}; 1.0: the dataset's own fields
        inner = [v for v in ds.values() if isinstance(v, dict)] if "variables" not in ds else [ds]
        names = [str(d.get("name") or d.get("arguments", {}).get("dataset", "")) if isinstance(d, dict) else ""
                 for d in inner]
        names = [n for n in names if n]
        return ", ".join(names) if names else None
    return None


def lineage_info(md: dict[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments for the lineage record (only what is known)."""
    if not md:
        return {}
    out: dict[str, Any] = {}
    versions = _code_versions(md)
    if versions:
        out["code_versions"] = versions
    dataset = _dataset(md)
    if dataset:
        out["dataset"] = dataset[:200]
    if isinstance(md.get("run_id"), str):
        out["run_id"] = md["run_id"]
    if isinstance(md.get("config"), dict):
        canonical = json.dumps(md["config"], sort_keys=True, separators=(",", ":"), default=str)
        out["config_digest"] = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    return out
