"""``load_model``: an ``AnemoiModelInterface`` from an ``.anc`` alone, no pickle.

The module tree is built by the installed anemoi-models from the resolved training configuration in
the anemoi metadata, exactly as anemoi-training builds it (``AnemoiModelInterface(config=...,
graph_data=..., statistics=..., data_indices=..., ...)``), then every persistent tensor is loaded
strictly from the ``weights`` section and the non-persistent buffers (the graph providers' sorted
edges and attributes) are set from the ``buffers`` section.

``graph_data``: a training-converted file has the ``HeteroData`` tensors in its ``graph`` section and
it is rebuilt from them. An inference-converted file has no ``HeteroData`` (the pickled interface
keeps one, but only its derived buffers are needed to run): a stand-in graph with the right node
counts, edge counts and edge attribute widths is made from the ``buffers`` section (each
``StaticGraphProvider``'s edges un-permuted), the module tree is built from it, and every buffer it
derived is then replaced by the file's exact tensor, so nothing computed from the stand-in survives.

Statistics: the normalisers' buffers are persistent, so neutral placeholders of the right length
are used at construction and overwritten by the strict ``load_state_dict``.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from ..errors import AncError, FormatError

_INSTALL = "install anemoi-ckpt[anemoi] (anemoi-models, torch-geometric, hydra-core)"


def _require_anemoi() -> None:
    try:
        import anemoi.models  # noqa: F401
        import torch_geometric  # noqa: F401
    except ImportError as e:
        raise AncError(None, f"loading an anemoi model needs anemoi-models ({e.name} is not "
                       "installed)", _INSTALL) from None


def _instantiate() -> Any:
    """anemoi's own instantiation (Hydra); a pure-Python ``_target_`` fallback without Hydra."""
    try:
        from hydra.utils import instantiate

        return instantiate
    except ImportError:  # pragma: no cover - anemoi-models itself requires hydra today
        return _instantiate_fallback


def _instantiate_fallback(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Minimal ``_target_`` instantiation: import the dotted name and call it with the remaining
    keys (recursively for nested ``_target_`` mappings unless ``_recursive_`` is false)."""
    import importlib

    cfg = dict(config)
    target = cfg.pop("_target_")
    recursive = kwargs.pop("_recursive_", cfg.pop("_recursive_", True))
    cfg.pop("_convert_", None)
    kwargs.pop("_convert_", None)
    module, _, name = target.rpartition(".")
    obj = getattr(importlib.import_module(module), name)

    def build(v: Any) -> Any:
        if isinstance(v, dict) and "_target_" in v:
            return _instantiate_fallback(v)
        return v

    if recursive:
        cfg = {k: build(v) for k, v in cfg.items()}
    return obj(*args, **{**cfg, **kwargs})


def _config(md: dict[str, Any], path: str) -> Any:
    from omegaconf import OmegaConf

    cfg = md.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "data" not in cfg:
        raise FormatError(path, "the anemoi metadata has no resolved training config",
                          "convert the checkpoint with a recent anemoi-ckpt")
    return OmegaConf.create(cfg)


def _n_steps(config: Any, md: dict[str, Any], path: str) -> tuple[int, int]:
    for section in ("task", "training"):
        sec = config.get(section) or {}
        if sec.get("multistep_input") is not None:
            return int(sec.get("multistep_input")), int(sec.get("multistep_output") or 1)
    ts = ((md.get("metadata_inference") or {}).get("data") or {}).get("timesteps") or {}
    if ts.get("input_relative_date_indices"):
        return len(ts["input_relative_date_indices"]), len(ts.get("output_relative_date_indices") or [1])
    raise FormatError(path, "cannot tell the number of input steps from the config")


def _data_indices(config: Any, md: dict[str, Any], path: str) -> dict[str, Any]:
    """``IndexCollection(data_config, name_to_index)`` per dataset, as anemoi-training builds them."""
    from anemoi.models.data_indices.collection import IndexCollection
    from anemoi.models.utils.config import get_multiple_datasets_config

    data_config = get_multiple_datasets_config(config.data)
    indices = (md.get("data_indices") or {})
    out = {}
    for name in data_config:
        try:
            name_to_index = indices[name]["data"]["input"]["name_to_index"]
        except (KeyError, TypeError):
            raise FormatError(path, f"no data_indices.{name}.data.input.name_to_index in the anemoi "
                              "metadata") from None
        out[name] = IndexCollection(data_config[name], name_to_index)
        # the collection must agree with the one recorded at training time
        recorded = indices[name]
        mine = out[name].todict() if hasattr(out[name], "todict") else None
        if mine is not None and _plain(mine) != _plain(recorded):
            raise FormatError(path, f"data indices of dataset {name!r} rebuilt by the installed "
                              "anemoi-models differ from the recorded ones")
    return out


def _plain(obj: Any) -> Any:
    """JSON-like comparison form (tensors and tuples to lists)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def _statistics(data_indices: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import numpy as np

    stats = {}
    for name, idx in data_indices.items():
        n = len(idx.name_to_index)
        stats[name] = {"mean": np.zeros(n), "stdev": np.ones(n),
                       "minimum": np.zeros(n), "maximum": np.ones(n)}
    return stats


def _graph_from_section(ck: Any) -> Any:
    """The training ``HeteroData`` from a ``graph`` section (``<node>.<attr>``,
    ``<src>__<rel>__<dst>.<attr>``)."""
    from torch_geometric.data import HeteroData

    graph = HeteroData()
    for name, t in ck.tensors("graph").items():
        store, _, attr = name.rpartition(".")
        key = tuple(store.split("__")) if "__" in store else store
        graph[key][attr] = t.clone()
    return graph


def _graph_from_buffers(ck: Any, config: Any, weights: Any, path: str) -> Any:
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
    buffers = ck.tensors("buffers")
    edges = {f"model.encoder_graph_provider.{d}.": (d, "to", hidden) for d in datasets}
    edges |= {f"model.decoder_graph_provider.{d}.": (hidden, "to", d) for d in datasets}
    edges["model.processor_graph_provider."] = (hidden, "to", hidden)
    attrs_by_edge = {
        "encoder": config.model.encoders, "decoder": config.model.decoders,
    }
    for prefix, key in edges.items():
        if f"{prefix}edge_index_base" not in buffers:
            continue
        base, attr, perm = (buffers[f"{prefix}{n}"] for n in ("edge_index_base", "edge_attr", "perm"))
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


def load_model(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """A working ``AnemoiModelInterface`` (eval mode) built from the ``.anc`` at ``path`` with the
    installed anemoi-models: weights loaded strictly, non-persistent buffers set from the file."""
    _require_anemoi()
    import torch
    from anemoi.models.interface import AnemoiModelInterface

    from ..reader import open_checkpoint

    path = os.fspath(path)
    with open_checkpoint(path) as ck:
        md = ck.anemoi_metadata
        if not md:
            raise FormatError(path, "no anemoi metadata: not an anemoi checkpoint")
        config = _config(md, path)
        n_in, n_out = _n_steps(config, md, path)
        data_indices = _data_indices(config, md, path)
        weights = ck.tensors("weights")
        sections = ck.tensor_sections()
        if "graph" in sections:
            graph = _graph_from_section(ck)
        elif "buffers" in sections:
            graph = _graph_from_buffers(ck, config, weights, path)
        else:
            raise FormatError(path, "neither a graph nor a buffers section: cannot build the graph")
        supporting = {k: copy.deepcopy(v) for k, v in ck.supporting_arrays.items()}
        model = AnemoiModelInterface(
            config=config,
            n_step_input=n_in,
            n_step_output=n_out,
            graph_data=graph,
            statistics=_statistics(data_indices),
            data_indices=data_indices,
            metadata=copy.deepcopy(md),
            supporting_arrays=supporting,
        )
        state = {k: v.clone() for k, v in weights.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise FormatError(path, "the weights do not fit the module tree built by the installed "
                              f"anemoi-models: {' '.join(first[:3])[:600]}") from None
        if "buffers" in sections:
            _set_buffers(model, ck.tensors("buffers"), path)
    model.eval()
    return model.to(device)


def _set_buffers(model: Any, buffers: Any, path: str) -> None:
    persistent = set(model.state_dict())
    expected = {n for n, _ in model.named_buffers() if n not in persistent}
    missing, unexpected = sorted(expected - set(buffers)), sorted(set(buffers) - expected)
    if missing or unexpected:
        raise FormatError(path, f"non-persistent buffers do not match the installed anemoi-models "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})", section="buffers")
    for name, tensor in buffers.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        owner._buffers[leaf] = tensor.clone()
