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
    """A stand-in ``HeteroData`` with the shapes the module tree needs, from the inference buffers."""
    import torch
    from anemoi.models.utils.config import get_multiple_datasets_config
    from torch_geometric.data import HeteroData

    hidden = config.model.model.get("hidden_nodes_name", "hidden")
    if not isinstance(hidden, str):
        raise FormatError(path, f"hidden nodes {hidden!r}: only single-level encoder-processor-decoder "
                          "inference files are supported without a graph section (not yet "
                          "hierarchical models)", "convert the training checkpoint instead")
    datasets = list(get_multiple_datasets_config(config.data))
    graph = HeteroData()
    for node in [*datasets, hidden]:
        latlons = weights.get(f"model.node_attributes.latlons_{node}")
        if latlons is None:
            raise FormatError(path, f"no model.node_attributes.latlons_{node} in the weights")
        graph[node].x = torch.zeros(latlons.shape[0], 2, dtype=latlons.dtype)
        graph[node].num_nodes = latlons.shape[0]
    edges = {f"model.encoder_graph_provider.{d}.": (d, "to", hidden) for d in datasets}
    edges |= {f"model.decoder_graph_provider.{d}.": (hidden, "to", d) for d in datasets}
    edges["model.processor_graph_provider."] = (hidden, "to", hidden)
    attrs_by_edge = {
        "encoder": config.model.encoders, "decoder": config.model.decoders,
    }
    for prefix, key in edges.items():
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
        names = _edge_attribute_names(config, prefix, attrs_by_edge)
        # only the total width matters: the file's exact buffers replace what is derived from these
        widths = [1] * (len(names) - 1) + [unsorted.shape[1] - (len(names) - 1)]
        graph[key].edge_index = index
        for name, part in zip(names, torch.split(unsorted, widths, dim=1)):
            graph[key][name] = part.clone()
    return graph


def _edge_attribute_names(config: Any, prefix: str, attrs_by_edge: dict[str, Any]) -> list[str]:
    if prefix.startswith("model.processor"):
        names = config.model.processor.get("sub_graph_edge_attributes")
    else:
        which = "encoder" if prefix.startswith("model.encoder") else "decoder"
        names = None
        for entry in (attrs_by_edge[which] or {}).values():
            names = entry.get("mapper", {}).get("sub_graph_edge_attributes") or names
    return list(names or ["edge_attr"])
