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
from tests.anemoi_helpers import output_digest, random_batch  # noqa: E402
from tests.conftest import FIXTURES  # noqa: E402

LEGACY = FIXTURES / "legacy" / "anemoi"
MODELS = ["gnn", "graphtransformer"]


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
        batch = random_batch(original, seed)
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


def _rewrite(src, dst, change, models_version: str | None = None) -> None:
    """``dst``: ``src``'s weights after ``change(weights)``, with its buffers and anemoi metadata
    (whose recorded anemoi-models version becomes ``models_version`` if given)."""
    import copy

    import anemoi_ckpt

    with anemoi_ckpt.open(src) as ck:
        weights = {k: v.clone() for k, v in ck.tensors("weights").items()}
        buffers = {k: v.clone() for k, v in ck.tensors("buffers").items()}
        md, arrays = copy.deepcopy(ck.anemoi_metadata), ck.supporting_arrays
    change(weights)
    if models_version is not None:
        md["provenance_training"]["module_versions"]["anemoi.models"] = {"version": models_version}
    anemoi_ckpt.save(dst, weights, anemoi_metadata=md, supporting_arrays=arrays,
                     sections={"buffers": buffers})


@pytest.fixture(scope="module")
def gnn_anc(tmp_path_factory):
    anc = tmp_path_factory.mktemp("gnn") / "gnn.anc"
    convert(LEGACY / "gnn" / "inference-last.ckpt", anc)
    return anc


def test_load_model_from_a_url(gnn_anc) -> None:
    """The same model from an HTTP URL (a loopback range server): one transfer of the weights,
    outputs bit for bit those of the local file."""
    from tests.servers import CountingProxy, RangeServer

    local = load_model(gnn_anc)
    with RangeServer(gnn_anc.parent) as srv:
        proxy = CountingProxy(srv.port)
        remote = load_model(srv.url(gnn_anc.name, proxy.port))
        proxy.close()
    assert proxy.bytes_down < gnn_anc.stat().st_size * 1.05 + (256 << 10)  # the file once, at most
    for name, t in local.state_dict().items():
        assert torch.equal(remote.state_dict()[name], t), name
    batch = random_batch(local, 0)
    with torch.no_grad():
        a = local.predict_step({k: v.clone() for k, v in batch.items()})
        b = remote.predict_step({k: v.clone() for k, v in batch.items()})
    assert all(torch.equal(a[k], b[k]) for k in a)


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


def test_older_layout_is_translated_at_load(tmp_path) -> None:
    """A file in anemoi-models 0.15's layout (the Transformer processor's MLP before #943, as
    ``convert --keep-layout`` keeps it) loads in the installed 0.19: the shipped step renames it in
    memory, and the model is the pickled original's, bit for bit."""
    import re

    anc = tmp_path / "gt.anc"
    convert(LEGACY / "graphtransformer" / "inference-last.ckpt", anc)
    old = tmp_path / "gt-0.15.anc"
    pattern = re.compile(r"^(model\.processor\.proc\.\d+\.mlp\.)mlp\.(?=\d)")

    def to_0_15(w):
        renamed = {pattern.sub(r"\1", k): v for k, v in w.items()}
        assert len(renamed) == len(w) and renamed.keys() != w.keys()
        w.clear()
        w.update(renamed)

    _rewrite(anc, old, to_0_15, models_version="0.15.2")
    loaded = load_model(old)
    original = _original(LEGACY / "graphtransformer" / "inference-last.ckpt").eval()
    for name, t in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    batch = random_batch(original, 3)
    with torch.no_grad():
        expected = original.predict_step({k: v.clone() for k, v in batch.items()})
        got = loaded.predict_step({k: v.clone() for k, v in batch.items()})
    assert all(torch.equal(got[k], expected[k]) for k in expected)


_NO_HYDRA = '''
import sys

class _NoHydra:  # as if hydra-core were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "hydra" or name.startswith("hydra."):
            raise ImportError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoHydra())
'''

_CHILD = '''
import sys
from anemoi_ckpt.anemoi import load_model
from tests.anemoi_helpers import output_digest

model = load_model(sys.argv[1])
assert getattr(sys.modules["hydra"], "__anemoi_ckpt_shim__", False), "hydra was imported"
print(output_digest(model, int(sys.argv[2])))
'''


@pytest.mark.parametrize("kind", MODELS)
def test_builds_without_hydra(kind: str, tmp_path) -> None:
    """Where hydra-core is not installed, the pure-Python ``_target_`` instantiation builds the same
    model: its forecast is bit for bit the pickled original's (which needs Hydra to unpickle, so
    it is computed here, in the process that has it)."""
    import os
    import subprocess
    import sys

    anc = tmp_path / f"{kind}.anc"
    convert(LEGACY / kind / "inference-last.ckpt", anc)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_NO_HYDRA)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(tmp_path / "site"), str(LEGACY.parents[2]), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", _CHILD, str(anc), "5"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    original = _original(LEGACY / kind / "inference-last.ckpt").eval()
    assert r.stdout.strip().splitlines()[-1] == output_digest(original, 5)


def test_every_load_function_a_step_may_name_exists() -> None:
    """translate.load_ops lists the names (checked when a step file loads, without anemoi-models);
    anemoi.fixups implements them: a name in one list only would fail at load."""
    from anemoi_ckpt.anemoi.fixups import LOAD_FUNCTIONS as implemented
    from anemoi_ckpt.translate.load_ops import LOAD_FUNCTIONS as listed

    assert set(implemented) == set(listed)
