"""Built-in demo data: a small anemoi-shaped model checkpoint on a synthetic grid.

The tensor names follow anemoi-models' encoder-processor-decoder layout as of 0.19 (recorded as
that version in the metadata's provenance, so the translation steps, which bring older layouts
forward, rightly leave it alone), the normaliser buffers
are shared between the pre- and post-processor (as in anemoi, so the file stores them once, as
aliases), the graph goes to a ``graph`` section, and the anemoi metadata carries the usual
supporting arrays (latitudes, longitudes) so ``load_metadata`` from anemoi-utils works on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

VARIABLES = ["10u", "10v", "2t", "msl", "z_500", "t_850", "q_700", "tp"]


def demo_grid(n_lat: int = 16, n_lon: int = 32) -> tuple[np.ndarray, np.ndarray]:
    lat = np.linspace(-87.5, 87.5, n_lat)
    lon = np.linspace(0.0, 360.0, n_lon, endpoint=False)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return la.ravel().astype(np.float64), lo.ravel().astype(np.float64)


def demo_state_dict(*, channels: int = 64, layers: int = 2, n_vars: int = len(VARIABLES),
                    grid_points: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def lin(out_f: int, in_f: int) -> tuple[torch.Tensor, torch.Tensor]:
        bound = 1 / math.sqrt(in_f)
        return ((torch.rand(out_f, in_f, generator=g) * 2 - 1) * bound,
                (torch.rand(out_f, generator=g) * 2 - 1) * bound)

    sd: dict[str, torch.Tensor] = {}
    for prefix, (o, i) in {"model.encoder.0.emb_nodes_src": (channels, n_vars + 4),
                           "model.decoder.0.node_data_extractor.1": (n_vars, channels)}.items():
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = lin(o, i)
    for k in range(layers):
        p = f"model.processor.proc.{k}"
        for name in ("lin_q", "lin_k", "lin_v", "projection"):
            sd[f"{p}.attention.{name}.weight"], sd[f"{p}.attention.{name}.bias"] = lin(channels, channels)
        sd[f"{p}.mlp.mlp.0.weight"], sd[f"{p}.mlp.mlp.0.bias"] = lin(4 * channels, channels)
        sd[f"{p}.mlp.mlp.2.weight"], sd[f"{p}.mlp.mlp.2.bias"] = lin(channels, 4 * channels)
        for ln in ("layer_norm_attention", "layer_norm_mlp"):
            sd[f"{p}.{ln}.weight"] = torch.ones(channels)
            sd[f"{p}.{ln}.bias"] = torch.zeros(channels)
    sd["model.node_attributes.trainable_tensors.data.trainable"] = torch.randn(grid_points, 8, generator=g) * 0.01
    # anemoi shares one set of statistics between the input and output normalisers.
    stats = {"_norm_mul": torch.rand(n_vars, generator=g) + 0.5, "_norm_add": torch.randn(n_vars, generator=g)}
    for side in ("pre_processors", "post_processors"):
        for k, v in stats.items():
            sd[f"{side}.data.processors.normalizer.{k}"] = v
    sd["data_indices_mask"] = torch.tensor([True] * (n_vars - 1) + [False])
    sd["model.num_steps"] = torch.tensor(0, dtype=torch.int64)
    return sd


def demo_graph(grid_points: int = 512, hidden: int = 128, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    edges = 4 * grid_points
    return {
        "data.x": torch.rand(grid_points, 2, generator=g, dtype=torch.float64),
        "hidden.x": torch.rand(hidden, 2, generator=g, dtype=torch.float64),
        "data__to__hidden.edge_index": torch.stack([torch.randint(0, grid_points, (edges,), generator=g),
                                                    torch.randint(0, hidden, (edges,), generator=g)]),
        "data__to__hidden.edge_length": torch.rand(edges, 1, generator=g),
    }


def demo_anemoi_metadata() -> tuple[dict, dict]:
    lat, lon = demo_grid()
    md = {
        "version": "2.0",
        "config": {"model": {"_target_": "anemoi.models.models.AnemoiModelEncProcDec",
                             "num_channels": 64}},
        "seed": 42,
        "run_id": "demo-run",
        "dataset": {"data": {"variables": VARIABLES, "frequency": "6h", "shape": [1, len(VARIABLES), 1, lat.size]}},
        "data_indices": {"data": {"data": {"input": {"name_to_index": {v: i for i, v in enumerate(VARIABLES)}}}}},
        "metadata_inference": {"dataset_names": ["data"], "task": "forecaster",
                               "data": {"timesteps": {"timestep": "6h"}}},
        "provenance_training": {"module_versions": {"anemoi-ckpt-demo": "0", "anemoi.models": "0.19.0"}},
        "timestamp": "2026-01-01T00:00:00",
    }
    return md, {"data": {"latitudes": lat, "longitudes": lon}}
