"""Issue 7, first step: an anemoi model built from an ``.anc`` alone (no pickle) by the installed
anemoi-models gives exactly the output of the pickled original.

Needs anemoi-models (the ``anemoi`` extra); skipped with a visible reason where it is not installed.
Run it in an anemoi environment: see docs/anemoi-inference.md.
"""

from __future__ import annotations

import warnings

import pytest

from tests.conftest import require_module  # noqa: E402

require_module("anemoi.models", reason="needs anemoi-models (anemoi-ckpt[anemoi]; make test-anemoi)")
require_module("torch_geometric", reason="needs torch-geometric (anemoi-ckpt[anemoi]; make test-anemoi)")

import torch  # noqa: E402

from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

LEGACY = FIXTURES / "legacy" / "anemoi"
MODELS = ["gnn", "graphtransformer"]


def _batch(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A random batch (batch, time, grid, variables) per dataset, in physical units."""
    gen = torch.Generator().manual_seed(seed)
    batch = {}
    for name, idx in model.data_indices.items():
        grid = getattr(model.model.node_attributes, f"latlons_{name}").shape[0]
        nvar = len(idx.data.input.full)  # what anemoi-inference feeds: the input variables
        batch[name] = torch.randn(2, model.n_step_input, grid, nvar, generator=gen)
    return batch


def _original(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("source", ["inference-last.ckpt", "last.ckpt"])
def test_predict_step_matches_pickled_original(kind: str, source: str, tmp_path) -> None:
    anc = tmp_path / f"{kind}.anc"
    convert(LEGACY / kind / source, anc)
    torch.manual_seed(0)
    loaded = load_model(anc)
    original = _original(LEGACY / kind / "inference-last.ckpt").eval()

    assert set(loaded.state_dict()) == set(original.state_dict())
    for name, t in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    persistent = set(original.state_dict())
    mine = dict(loaded.named_buffers())
    for name, b in original.named_buffers():
        if name not in persistent:
            assert mine[name].dtype == b.dtype and torch.equal(mine[name], b), name

    for seed in (0, 1):
        batch = _batch(original, seed)
        with torch.no_grad():
            expected = original.predict_step({k: v.clone() for k, v in batch.items()})
            got = loaded.predict_step({k: v.clone() for k, v in batch.items()})
        assert expected.keys() == got.keys()
        for name in expected:
            assert got[name].dtype == expected[name].dtype
            assert torch.equal(got[name], expected[name]), \
                f"{name}: max diff {(got[name] - expected[name]).abs().max().item()}"


def test_load_model_is_eval_and_on_device(tmp_path) -> None:
    anc = tmp_path / "gnn.anc"
    convert(LEGACY / "gnn" / "inference-last.ckpt", anc)
    model = load_model(anc, device="cpu")
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
