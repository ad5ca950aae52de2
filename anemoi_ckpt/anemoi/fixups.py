"""Load-time operations of the translation steps (``kind = "load_call"``): what a layout change
needs that names alone cannot express, run with the module tree the installed anemoi-models built.

Each function takes the built model, the file's tensors (``weights``, ``buffers``: name -> tensor,
already re-keyed by the name steps) and the op's parameters, and returns the two mappings to load.
Each decides from the file itself whether it applies (a tensor the newer layout has and the file
lacks), never from a version string, so a file that already has the newer layout (converted, or
saved again after a load) passes through unchanged, and running every step's load ops on every
file is safe. Pure with respect to the file: tensors are replaced in the returned dicts only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..translate.steps import Step

Tensors = dict[str, Any]
LoadFn = Callable[[Any, Tensors, Tensors, Mapping[str, Any]], tuple[Tensors, Tensors]]


def keep_built(model: Any, weights: Tensors, buffers: Tensors,
               params: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    """Persistent tensors matching ``pattern`` that the file lacks take the value the installed
    anemoi-models computed while building (e.g. index buffers derived from the data indices,
    which older releases did not store). Only names the file does not have: never overwrites."""
    pattern: re.Pattern[str] = params["pattern"]
    own = model.state_dict()
    weights = dict(weights)
    for name, tensor in own.items():
        if name not in weights and pattern.search(name):
            weights[name] = tensor.detach().clone()
    return weights, buffers


def permute_trainable_edges(model: Any, weights: Tensors, buffers: Tensors,
                            params: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    """anemoi-models 0.16 stores a graph provider's trainable edge parameters in its sorted edge
    order (``perm``) and marks it with ``trainable_layout_version``; a file without the marker
    holds them in the graph's edge order, which anemoi's own migration (1779202136) re-orders with
    ``index_select(0, perm)``. The same here, with the ``perm`` the installed code computed from
    this file's graph."""
    from anemoi.models.layers.graph_provider import StaticGraphProvider

    weights, buffers = dict(weights), dict(buffers)
    for path, provider in model.named_modules():
        if not isinstance(provider, StaticGraphProvider):
            continue
        prefix = f"{path}." if path else ""
        if f"{prefix}edge_index_base" in buffers and f"{prefix}perm" not in buffers:
            # An older provider kept the graph's edge order; the installed one sorted the same
            # edges (given to it in that order, see graph.graph_from_buffers) by destination:
            # its derived buffers are the ones the newer code computes from this graph.
            for name, tensor in provider.named_buffers(recurse=False):
                if name in provider._non_persistent_buffers_set:
                    buffers[prefix + name] = tensor.detach().clone()
        marker = prefix + provider._TRAINABLE_LAYOUT_VERSION_KEY
        if marker in weights:
            continue
        trainable = weights.get(prefix + "trainable.trainable")
        perm = getattr(provider, "perm", None)
        if trainable is not None and perm is not None and trainable.shape[0] == perm.shape[0]:
            weights[prefix + "trainable.trainable"] = trainable.index_select(0, perm.to(trainable.device))
        weights[marker] = provider.trainable_layout_version.detach().clone()
    return weights, buffers


def tie_shared(model: Any, weights: Tensors, buffers: Tensors,
               params: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    """A persistent tensor matching ``pattern`` that the file lacks, where the installed
    anemoi-models built it as the same tensor as another state-dict name (one module reachable
    under two names, e.g. the graph transformer mapper's ``layer_norm_attention_dest``, which is
    ``layer_norm_attention`` since anemoi-models 0.5.0), takes the file's value of that other
    name. A file that stores one module once (translated from a layout with one name) then loads
    strictly. Only names the file does not have: never overwrites."""
    pattern: re.Pattern[str] = params["pattern"]
    own = model.state_dict(keep_vars=True)
    by_id: dict[int, list[str]] = {}
    for name, tensor in own.items():
        by_id.setdefault(id(tensor), []).append(name)
    weights = dict(weights)
    for name, tensor in own.items():
        if name in weights or not pattern.search(name):
            continue
        twin = next((n for n in by_id[id(tensor)] if n != name and n in weights), None)
        if twin is not None:
            weights[name] = weights[twin]
    return weights, buffers


def split_fused_qkv(model: Any, weights: Tensors, buffers: Tensors,
                    params: Mapping[str, Any]) -> tuple[Tensors, Tensors]:
    """anemoi-models <= 0.6 projected query, key and value of its (multi-head self-) attention with
    one fused ``lin_qkv`` whose output ``chunk(3, -1)`` split into q, k, v; 0.7.0 (anemoi-core#179)
    has three ``lin_q``, ``lin_k``, ``lin_v``. Where the installed code built the three and the
    file has only ``lin_qkv``: its rows (and bias) split in three, in that order, which computes
    exactly what the fused projection did."""
    weights = dict(weights)
    for path, module in model.named_modules():
        if not all(hasattr(module, a) for a in ("lin_q", "lin_k", "lin_v")):
            continue
        prefix = f"{path}." if path else ""
        for kind in ("weight", "bias"):
            fused = weights.get(f"{prefix}lin_qkv.{kind}")
            if fused is None or f"{prefix}lin_q.{kind}" in weights:
                continue
            for part, chunk in zip(("lin_q", "lin_k", "lin_v"), fused.chunk(3, dim=0)):
                weights[f"{prefix}{part}.{kind}"] = chunk
            del weights[f"{prefix}lin_qkv.{kind}"]
    return weights, buffers


LOAD_FUNCTIONS: dict[str, LoadFn] = {
    "keep_built": keep_built,
    "permute_trainable_edges": permute_trainable_edges,
    "tie_shared": tie_shared,
    "split_fused_qkv": split_fused_qkv,
}


def run_load_ops(model: Any, weights: Mapping[str, Any], buffers: Mapping[str, Any],
                 steps: Sequence[Step]) -> tuple[Tensors, Tensors, list[str]]:
    """Every ``load_call`` op of ``steps`` in order; also the names of the steps whose ops changed
    something (for the log)."""
    w, b = dict(weights), dict(buffers)
    changed = []
    for step in steps:
        for op in step.load_ops:
            new_w, new_b = LOAD_FUNCTIONS[op.params["function"]](model, w, b, op.params)
            if new_w.keys() != w.keys() or new_b.keys() != b.keys() \
                    or any(new_w[k] is not w[k] for k in w) or any(new_b[k] is not b[k] for k in b):
                changed.append(step.name)
            w, b = new_w, new_b
    return w, b, changed
