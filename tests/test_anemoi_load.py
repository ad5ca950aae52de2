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


def _rewrite(src, dst, change) -> None:
    """``dst``: ``src``'s weights after ``change(weights)``, with its buffers and anemoi metadata."""
    import anemoi_ckpt

    with anemoi_ckpt.open(src) as ck:
        weights = {k: v.clone() for k, v in ck.tensors("weights").items()}
        buffers = {k: v.clone() for k, v in ck.tensors("buffers").items()}
        md, arrays = ck.anemoi_metadata, ck.supporting_arrays
    change(weights)
    anemoi_ckpt.save(dst, weights, anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"buffers": buffers})


@pytest.fixture(scope="module")
def gnn_anc(tmp_path_factory):
    anc = tmp_path_factory.mktemp("gnn") / "gnn.anc"
    convert(LEGACY / "gnn" / "inference-last.ckpt", anc)
    return anc


def test_weights_are_copy_on_write_views_and_init_is_restored(gnn_anc) -> None:
    import hashlib

    import torch.nn.init as init

    before = hashlib.sha256(gnn_anc.read_bytes()).hexdigest()
    kaiming = init.kaiming_uniform_
    model = load_model(gnn_anc)
    assert init.kaiming_uniform_ is kaiming  # the construction-time patch is undone
    name, p = next(iter(model.named_parameters()))
    original = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)  # in place: a private copy of the page, never the file
    assert torch.equal(p.detach(), original + 1.0)
    assert hashlib.sha256(gnn_anc.read_bytes()).hexdigest() == before
    again = load_model(gnn_anc)
    assert torch.equal(dict(again.named_parameters())[name].detach(), original)


def test_missing_tensor_is_one_clear_error(gnn_anc, tmp_path) -> None:
    from anemoi_ckpt.errors import FormatError

    bad = tmp_path / "missing.anc"
    victim = "model.decoder.0.emb_edges.mlp.0.weight"

    def drop(w):
        assert victim in w, sorted(w)[:20]
        del w[victim]

    _rewrite(gnn_anc, bad, drop)
    with pytest.raises(FormatError) as err:
        load_model(bad)
    msg = str(err.value)
    assert str(bad) in msg and "1 missing from the file" in msg and victim in msg
    assert "anemoi-models 0.19.0" in msg and "no translation step covers" in msg


def test_shape_mismatch_is_one_clear_error(gnn_anc, tmp_path) -> None:
    from anemoi_ckpt.errors import FormatError

    bad = tmp_path / "shape.anc"
    victim = "model.decoder.0.emb_edges.mlp.0.weight"

    def shrink(w):
        w[victim] = w[victim][:-1].clone()

    _rewrite(gnn_anc, bad, shrink)
    with pytest.raises(FormatError) as err:
        load_model(bad)
    msg = str(err.value)
    assert str(bad) in msg and victim in msg and "shape" in msg
