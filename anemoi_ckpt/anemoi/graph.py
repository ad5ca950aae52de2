"""The ``HeteroData`` graph an ``AnemoiModelInterface`` is constructed with, from an ``.anc``.

A training-converted file carries the graph itself (the ``graph`` section). An inference-converted
file has only what the graph providers derived from it (the ``buffers`` section): from those a
stand-in with the right node counts, edges and total edge-attribute width is made; the module tree
is built from it and every derived buffer is then replaced by the file's exact tensor.
"""

from __future__ import annotations

from typing import Any

from ..errors import FormatError


def graph_from_section(ck: Any) -> Any:
    """The training ``HeteroData`` from a ``graph`` section (``<node>.<attr>``,
    ``<src>__<rel>__<dst>.<attr>``)."""
    from torch_geometric.data import HeteroData

    graph = HeteroData()
    for name, t in ck.tensors("graph").items():
        store, _, attr = name.rpartition(".")
        key = tuple(store.split("__")) if "__" in store else store
        graph[key][attr] = t.clone()
    return graph


def graph_from_buffers(buffers: Any, config: Any, weights: Any, path: str) -> Any:
    """A stand-in ``HeteroData`` with the shapes the module tree needs, from the inference buffers.

    A hierarchical model (``hidden_nodes_name`` a list of levels, finest first) also has the edges
    of its level processors (``<h_i> -> <h_i>``, shared by the down- and up-level providers) and of
    its level mappers (``upscale``: ``<h_i> -> <h_i+1>``, ``downscale``: ``<h_i+1> -> <h_i>``, both
    keyed by the finer level ``h_i`` as anemoi-models 0.19 names them)."""
    import torch
    from anemoi.models.utils.config import get_multiple_datasets_config
    from torch_geometric.data import HeteroData

    hidden = config.model.model.get("hidden_nodes_name", "hidden")
    levels = [hidden] if isinstance(hidden, str) else [str(h) for h in hidden]
    if not levels:
        raise FormatError(path, "config.model.model.hidden_nodes_name names no hidden nodes")
    datasets = list(get_multiple_datasets_config(config.data))
    graph = HeteroData()
    for node in [*datasets, *levels]:
        latlons = weights.get(f"model.node_attributes.latlons_{node}")
        if latlons is None:
            raise FormatError(path, f"no model.node_attributes.latlons_{node} in the weights")
        graph[node].x = torch.zeros(latlons.shape[0], 2, dtype=latlons.dtype)
        graph[node].num_nodes = latlons.shape[0]
    first, last = levels[0], levels[-1]
    # provider prefix -> (edge type, which config's sub_graph_edge_attributes name its attributes)
    edges = {f"model.encoder_graph_provider.{d}.": ((d, "to", first), "encoder") for d in datasets}
    edges |= {f"model.decoder_graph_provider.{d}.": ((first, "to", d), "decoder") for d in datasets}
    edges["model.processor_graph_provider."] = ((last, "to", last), "processor")
    for finer, coarser in zip(levels, levels[1:]):
        for side in ("down", "up"):
            edges[f"model.{side}_level_processor_graph_providers.{finer}."] = ((finer, "to", finer), "processor")
        edges[f"model.upscale_graph_providers.{finer}."] = ((finer, "to", coarser), "upscale_mapper")
        edges[f"model.downscale_graph_providers.{finer}."] = ((coarser, "to", finer), "downscale_mapper")
    for prefix, (key, which) in edges.items():
        if f"{prefix}edge_index_base" not in buffers:
            continue
        base, attr = buffers[f"{prefix}edge_index_base"], buffers[f"{prefix}edge_attr"]
        # Before anemoi-models 0.16 the providers kept the graph's edge order (no perm buffer)
        perm = buffers.get(f"{prefix}perm")
        if perm is None:
            perm = torch.arange(base.shape[1])
        index = torch.empty_like(base, dtype=torch.int64)
        index[:, perm] = base.to(torch.int64)
        unsorted = torch.empty_like(attr)
        unsorted[perm] = attr
        if "edge_index" in graph[key]:
            # two providers of one edge set (a hierarchical level's down and up processors)
            if not torch.equal(graph[key].edge_index, index):
                raise FormatError(path, f"{prefix}edge_index_base disagrees with another provider of "
                                  f"the edges {key}", section="buffers")
            continue
        names = _edge_attribute_names(config, which)
        # only the total width matters: the file's exact buffers replace what is derived from these
        widths = [1] * (len(names) - 1) + [unsorted.shape[1] - (len(names) - 1)]
        graph[key].edge_index = index
        for name, part in zip(names, torch.split(unsorted, widths, dim=1)):
            graph[key][name] = part.clone()
    return graph


def _edge_attribute_names(config: Any, which: str) -> list[str]:
    """``sub_graph_edge_attributes`` of the block that reads these edges: ``processor``,
    ``upscale_mapper``, ``downscale_mapper`` (hierarchical), ``encoder`` or ``decoder`` (the last
    one configured that names them)."""
    if which in ("processor", "upscale_mapper", "downscale_mapper"):
        names = (config.model.get(which) or {}).get("sub_graph_edge_attributes")
    else:
        names = None
        for entry in (config.model.get(f"{which}s") or {}).values():
            names = entry.get("mapper", {}).get("sub_graph_edge_attributes") or names
    return list(names or ["edge_attr"])
