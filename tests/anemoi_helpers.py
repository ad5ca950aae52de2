"""Helpers shared by the anemoi model tests and the subprocesses they start (imports only torch,
so a child can use it before anemoi-models is imported)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def random_batch(model: Any, seed: int, batch: int = 2) -> dict[str, torch.Tensor]:
    """A random input (batch, time, grid, variables) per dataset, what anemoi-inference feeds:
    the input variables of each dataset on its grid."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, idx in model.data_indices.items():
        grid = getattr(model.model.node_attributes, f"latlons_{name}").shape[0]
        out[name] = torch.randn(batch, model.n_step_input, grid, len(idx.data.input.full), generator=gen)
    return out


def output_digest(model: Any, seed: int) -> str:
    """sha256 of each dataset's ``predict_step`` output on :func:`random_batch`."""
    with torch.no_grad():
        out = model.predict_step(random_batch(model, seed))
    return " ".join(f"{k}:" + hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()
                    for k, v in sorted(out.items()))
