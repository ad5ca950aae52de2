"""Metadata operations of the translation steps: the anemoi metadata dict (with its training config)
in, a new dict out, the input never mutated. Dotted paths address nested keys (``config.model``).
``meta_call`` names a registered function for changes too structural for set/move/copy/delete.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from .hierarchical import broadcast_hidden_trainables
from .legacy_config import legacy_attention_config, legacy_layer_kernels, transformer_dropout_off
from .legacy_models import component_layer_kernels, legacy_residual, per_component_layer_kernels
from .metadata_v2 import complete_data_indices, synthesize_metadata_inference


def _path(dotted: str) -> list[str]:
    return dotted.split(".")


def meta_set(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``key`` (dotted path) to ``value``, creating intermediate tables."""
    out = copy.deepcopy(dict(md))
    *parents, leaf = _path(params["key"])
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = copy.deepcopy(params["value"])
    return out


def meta_move(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Move the value at dotted ``from`` to dotted ``to``; absent ``from`` is a no-op."""
    out = copy.deepcopy(dict(md))
    *parents, leaf = _path(params["from"])
    node: Any = out
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return out
    value = node.pop(leaf)
    return meta_set(out, {"key": params["to"], "value": value})


def meta_wrap_dataset(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap each present top-level ``keys`` entry as ``{<dataset>: value}``."""
    dataset = params.get("dataset", "data")
    out = copy.deepcopy(dict(md))
    for key in params["keys"]:
        if key in out:
            out[key] = {dataset: out[key]}
    return out


def meta_default(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``key`` to ``value`` only where it is absent: a setting a newer anemoi-models reads
    that older configs never wrote, at the value the older code behaved with."""
    node: Any = md
    for p in _path(params["key"]):
        if not isinstance(node, Mapping) or p not in node:
            return meta_set(md, params)
        node = node[p]
    return copy.deepcopy(dict(md))


def meta_delete(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``key`` (a setting the newer code no longer takes). Nothing is lost: the converter
    carries the source's metadata document verbatim whenever a step changed it."""
    out = copy.deepcopy(dict(md))
    *parents, leaf = _path(params["key"])
    node: Any = out
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)
    return out


def meta_copy(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the value at dotted ``from`` to dotted ``to`` (absent ``from``: no-op)."""
    found, value = lookup(md, params["from"])
    if not found:
        return copy.deepcopy(dict(md))
    return meta_set(md, {"key": params["to"], "value": value})


def lookup(md: Any, dotted: str) -> tuple[bool, Any]:
    """(present, value) at a dotted path. Pure."""
    node = md
    for p in _path(dotted):
        if not isinstance(node, Mapping) or p not in node:
            return False, None
        node = node[p]
    return True, node


#: python functions a step may call by name (``kind = "meta_call"``, ``function = "..."``), for
#: metadata changes too structural for set/move/wrap. Each: dict in, new dict out.
META_FUNCTIONS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "synthesize_metadata_inference": synthesize_metadata_inference,
    "complete_data_indices": complete_data_indices,
    "transformer_dropout_off": transformer_dropout_off,
    "legacy_layer_kernels": legacy_layer_kernels,
    "legacy_attention_config": legacy_attention_config,
    "broadcast_hidden_trainables": broadcast_hidden_trainables,
    "legacy_residual": legacy_residual,
    "per_component_layer_kernels": per_component_layer_kernels,
    "component_layer_kernels": component_layer_kernels,
}


def meta_call(md: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    return META_FUNCTIONS[params["function"]](md)
