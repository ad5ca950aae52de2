"""Metadata functions for the hierarchical encoder-processor-decoder
(``AnemoiModelEncProcDecHierarchical``), registered as ``meta_call`` functions in :mod:`.ops`.

Pure: a dict in, a new dict out, the input never mutated.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def hidden_levels(md: Mapping[str, Any] | None) -> list[str] | None:
    """The hidden node sets, finest first: ``config.model.model.hidden_nodes_name`` (anemoi-models
    >= 0.12), else ``config.graph.hidden`` (older); a single name is one level."""
    config = (md or {}).get("config") or {}
    for value in (((config.get("model") or {}).get("model") or {}).get("hidden_nodes_name"),
                  (config.get("graph") or {}).get("hidden")):
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    return None


def broadcast_hidden_trainables(md: Mapping[str, Any]) -> dict[str, Any]:
    """``config.model.node_trainable_parameters.hidden`` -> one entry per hidden level.

    Why: up to anemoi-models 0.18 the model broadcast ``trainable_parameters.hidden`` to every node
    set named in ``hidden_nodes_name`` (``broadcast_config_keys``); 0.19 looks each node set up by
    its own name and gives the others 0 trainable parameters, so a hierarchical model's coarser
    levels (``hidden_2``, ...) would lose theirs. A level that already has an entry keeps it; the
    key ``hidden`` is dropped when no level has that name (the old code never read it then)."""
    out = copy.deepcopy(dict(md))
    levels = hidden_levels(out)
    trainables = ((out.get("config") or {}).get("model") or {}).get("node_trainable_parameters")
    if not levels or not isinstance(trainables, dict) or "hidden" not in trainables:
        return out
    value = trainables["hidden"]
    for level in levels:
        trainables.setdefault(level, value)
    if "hidden" not in levels:
        del trainables["hidden"]
    return out
