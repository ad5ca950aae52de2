"""Real anemoi-training checkpoints (fixtures/legacy/anemoi/, made by anemoi-training 0.17.1 on a
synthetic dataset) convert bit for bit against what ``torch.load`` gave in the anemoi
environment (recorded in expected.json), in an environment with no anemoi package importable."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.anemoi_meta import flat_arrays
from anemoi_ckpt.convert import convert
from tests.conftest import FIXTURES

ROOT = FIXTURES / "legacy" / "anemoi"
MODELS = sorted(p.name for p in ROOT.iterdir() if (p / "expected.json").exists())


def sha(t: torch.Tensor) -> str:
    flat = t.detach().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"").hexdigest()


def same(t: torch.Tensor, meta: dict) -> bool:
    return (str(t.dtype).removeprefix("torch.") == meta["dtype"] and list(t.shape) == meta["shape"]
            and sha(t) == meta["sha256"])


@pytest.fixture(scope="module", params=MODELS)
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    name = request.param
    expected = json.loads((ROOT / name / "expected.json").read_text())
    expected["folder"] = ROOT / name
    out = tmp_path_factory.mktemp(name)
    convert(ROOT / name / "last.ckpt", out / "training.anc", durable=False, progress=False)
    convert(ROOT / name / "inference-last.ckpt", out / "inference.anc", durable=False, progress=False)
    return expected, out / "training.anc", out / "inference.anc"


def test_models_present() -> None:
    assert MODELS == ["gnn", "graphtransformer"]


def test_training_weights_and_optimizer(model: tuple[dict, Path, Path]) -> None:
    expected, training, _ = model
    exp = expected["training"]
    with anemoi_ckpt.open(training) as ck:
        assert ck.kind == "training" and ck.verify().ok
        weights = ck.tensors("weights")
        want = {k.removeprefix("model."): v for k, v in exp["state_dict"].items() if k.startswith("model.")}
        assert sorted(weights) == sorted(want)
        bad = [n for n, meta in want.items() if not same(weights[n], meta)]
        assert not bad
        # optimizer index i is the i-th trainable parameter of the rebuilt LightningModule
        opt = ck.tensors("optimizer")
        names = exp["trainable_parameter_names_in_order"]
        checked = 0
        for index, state in exp["optimizer"]["state"].items():
            pname = names[int(index)].removeprefix("model.")
            for key, meta in state.items():
                assert same(opt[f"{pname}.{key}"], meta), (pname, key)
                checked += 1
        assert checked == len(opt) > 0
        doc = ck.document("training-state")
        assert (doc["epoch"], doc["global_step"]) == (exp["epoch"], exp["global_step"])
        assert doc["pytorch-lightning_version"] == exp["pytorch-lightning_version"]
        assert [m["name"] for m in doc["migrations"]] == exp["migrations"]
        assert doc["task_state"] == exp["task_state"]
        assert doc["optimizers"][0]["param_groups"][0]["params"] == [n.removeprefix("model.") for n in names]
        hp = ck.document("hyper-parameters")
        assert set(hp) == set(exp["hyper_parameters_keys"])
        assert hp["graph_data"]["__class__"] == "torch_geometric.data.hetero_data.HeteroData"
        graph = ck.tensors("graph")
        assert any(n.endswith(".edge_index") for n in graph)
        assert len(graph) > 0


def test_graph_tensors_match_the_inference_buffers(model: tuple[dict, Path, Path]) -> None:
    """The HeteroData edges in the training file are the graph the inference model holds."""
    expected, training, _ = model
    with anemoi_ckpt.open(training) as ck:
        graph = ck.tensors("graph")
        hp = ck.document("hyper-parameters")
        edges = {k: v for k, v in hp["graph_data"]["edges"].items() if v}
        assert {"data__to__hidden", "hidden__to__data"} <= set(edges)
        for edge_type, attrs in edges.items():
            ref = attrs["edge_index"]["__tensor__"]
            assert ref == f"graph/{edge_type}.edge_index"
            t = graph[f"{edge_type}.edge_index"]
            assert not t.is_floating_point() and t.dim() == 2 and t.shape[0] == 2


def test_inference_weights_and_buffers(model: tuple[dict, Path, Path]) -> None:
    expected, _, inference = model
    exp = expected["inference"]
    with anemoi_ckpt.open(inference) as ck:
        assert ck.kind == "inference" and ck.verify().ok
        weights = ck.tensors("weights")
        assert sorted(weights) == sorted(exp["state_dict"])
        assert not [n for n, meta in exp["state_dict"].items() if not same(weights[n], meta)]
        buffers = ck.tensors("buffers")
        assert sorted(buffers) == sorted(exp["named_buffers_non_persistent"])
        assert not [n for n, m in exp["named_buffers_non_persistent"].items() if not same(buffers[n], m)]
        arrays = flat_arrays(ck.supporting_arrays)
        assert {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()} \
            == {k: v["sha256"] for k, v in exp["supporting_arrays"].items()}


@pytest.mark.parametrize("part,file", [("training", "last.ckpt"), ("inference", "inference-last.ckpt")])
def test_anemoi_metadata_copied_exactly(model: tuple[dict, Path, Path], part: str, file: str) -> None:
    expected, training, inference = model
    src = expected["folder"] / file
    with zipfile.ZipFile(src) as zf:
        raw = zf.read(expected[part]["anemoi_json_member"])
    assert hashlib.sha256(raw).hexdigest() == expected[part]["anemoi_metadata_sha256"]
    original = json.loads(raw)
    with anemoi_ckpt.open(training if part == "training" else inference) as ck:
        ours = ck.anemoi_metadata
        root = ck.root
        assert ck.lineage.records[-1].parents[0].uuid == original["uuid"]
    paths_src, paths_ours = original.pop("supporting_arrays_paths"), ours.pop("supporting_arrays_paths")
    assert json.dumps(ours, sort_keys=True) == json.dumps(original, sort_keys=True)  # NaN-safe
    src_root = expected[part]["anemoi_json_member"].split("/")[0]
    for ds, arrays in paths_src.items():
        for key, entry in arrays.items():
            mine = paths_ours[ds][key]
            assert (mine["shape"], mine["dtype"]) == (entry["shape"], entry["dtype"])
            assert mine["path"].removeprefix(root + "/") == entry["path"].removeprefix(src_root + "/")


def test_training_and_inference_twins_share_content_id(model: tuple[dict, Path, Path]) -> None:
    _, training, inference = model
    with anemoi_ckpt.open(training) as a, anemoi_ckpt.open(inference) as b:
        assert a.content_id == b.content_id


def test_newest_layout_needs_no_step(model: tuple[dict, Path, Path]) -> None:
    _, training, inference = model
    for path in (training, inference):
        with anemoi_ckpt.open(path) as ck:
            assert ck.lineage.records[-1].parameters["steps"] == []
            assert ck.lineage.records[-1].parameters["source_versions"]["anemoi.models"] == "0.19.0"


BLOCKER = """
import sys
class Block:
    # No anemoi, PyG, OmegaConf or Hydra: the converter must not need (or import) them.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"anemoi", "torch_geometric", "omegaconf", "hydra", "timm"}:
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from anemoi_ckpt.cli.main import main
sys.argv = ["anemoi-ckpt", *sys.argv[1:]]
main()
"""


def test_converts_with_no_anemoi_package_importable(tmp_path: Path) -> None:
    name = MODELS[0]
    out = subprocess.run([sys.executable, "-c", BLOCKER, "convert", str(ROOT / name / "last.ckpt"),
                          str(ROOT / name / "inference-last.ckpt"), "--out-dir", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    reports = json.loads(out.stdout)
    assert [r["format"] for r in reports] == ["lightning", "torch-module"]
    assert reports[0]["content_id"] == reports[1]["content_id"]
    assert all(r["verified"] > 0 for r in reports)
