"""Issue 17: ``anemoi-ckpt merge base.anc adapter.anc -o out.anc`` on a real anemoi base gives a
complete anemoi inference file that anemoi-inference forecasts from.

Bases are the anemoi-training 0.17.1 fixtures converted by the ``anemoi-ckpt convert`` console
script, both the training file (``last.ckpt``: graph, optimizer, state) and the inference file
(``inference-last.ckpt``: buffers). Adapters are made the way the trainer makes them: PEFT's
``get_peft_model`` on the ``AnemoiModelInterface`` that ``load_model`` builds (a LoRA adapter), or
the tensors changed in that interface (a freeze delta), written by
:mod:`anemoi_ckpt.adapters.write`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, arrays_equal, one_error_line, require_module, run_cli

require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")
require_module("anemoi.inference", reason="needs anemoi-inference (make test-anemoi)")
require_module("peft", reason="needs peft (make test-anemoi)")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from anemoi.utils.checkpoints import load_metadata  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.adapters.write import (adapter_tensors, changed_tensors, peft_config_json,  # noqa: E402
                                        write_finetune)
from anemoi_ckpt.anemoi import load_model  # noqa: E402
from tests.anemoi_helpers import random_batch  # noqa: E402
from tests.test_anemoi_inference import _forecast, _read, _run, dataset  # noqa: E402,F401

ANEMOI = FIXTURES / "legacy" / "anemoi"
BIN = Path(sys.executable).parent
R, ALPHA = 4, 8  # LoRA scale alpha / r = 2
#: Keys of the anemoi metadata a merge sets (the rest is the base's, verbatim).
FORK_KEYS = ("uuid", "run_id", "parent_uuid", "supporting_arrays_paths")


def _targets(model: torch.nn.Module) -> list[str]:
    """The processor's attention linears (graphtransformer) or node MLPs (gnn): full names, as the
    trainer's ``lora.targets`` resolve them."""
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and n.startswith("model.processor.") and (".attention." in n or ".node_mlp." in n)]


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    out = {}
    d = tmp_path_factory.mktemp("bases")
    for model in ("graphtransformer", "gnn"):
        for source in ("last", "inference-last"):
            dst = d / f"{model}-{source}.anc"
            r = subprocess.run([str(BIN / "anemoi-ckpt"), "convert", str(ANEMOI / model / f"{source}.ckpt"),
                                str(dst)], capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            out[model, source] = dst
    return out


def make_lora(base: Path, path: Path, seed: int = 0) -> Any:
    """A PEFT LoRA adapter on ``base``'s interface with lora_B drawn (PEFT starts it at zero, which
    would merge to nothing), written as the trainer writes it; returns the PEFT model."""
    model = load_model(base)
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, bias="none",
                                          target_modules=_targets(model)))
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
    with anemoi_ckpt.open(base) as b:
        write_finetune(path, "adapter", adapter_tensors(pm), b, peft_config=peft_config_json(pm),
                       durable=False)
    return pm


def make_delta(base: Path, path: Path, seed: int = 0) -> torch.nn.Module:
    """A freeze fine-tune's output: the targeted weights and biases moved; returns the model."""
    model = load_model(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in _targets(model):
            for p in model.get_submodule(name).parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    with anemoi_ckpt.open(base) as b:
        write_finetune(path, "delta", changed_tensors(model, b), b, durable=False)
    return model


def _merge(base: Path, adapter: Path, out: Path) -> None:
    r = run_cli("merge", str(base), str(adapter), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists()


def _predict(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model.predict_step(batch)


@pytest.mark.parametrize("method", ["lora", "delta"])
@pytest.mark.parametrize("source", ["last", "inference-last"])
@pytest.mark.parametrize("model", ["graphtransformer", "gnn"])
def test_merge_gives_a_complete_anemoi_inference_file(model: str, source: str, method: str,
                                                      bases: dict, tmp_path: Path) -> None:
    base = bases[model, source]
    adapter, out = tmp_path / f"{method}.anc", tmp_path / "merged.anc"
    tuned = make_lora(base, adapter) if method == "lora" else make_delta(base, adapter)
    _merge(base, adapter, out)

    with anemoi_ckpt.open(base) as bk, anemoi_ckpt.open(out) as ck, anemoi_ckpt.open(adapter) as ak:
        # an inference file: the model's tensors and graph/buffers, no optimizer, state or hparams
        assert ck.kind == "inference"
        kept = ["graph"] if source == "last" else ["buffers"]
        assert sorted(ck.tensor_sections()) == sorted(["weights", *kept])
        for sec in kept:
            got, want = ck.tensors(sec), bk.tensors(sec)
            assert sorted(got) == sorted(want) and all(torch.equal(got[n], want[n]) for n in want)

        # weights: base + scale·B@A (or the delta's tensor) where targeted, the base's bytes elsewhere
        bw, ow, aw = bk.tensors("weights"), ck.tensors("weights"), ak.tensors("weights")
        assert list(ow) == list(bw)
        if method == "lora":
            prefix = "base_model.model."
            expected = {}
            for key in aw:
                if key.endswith(".lora_A.weight"):
                    module = key[len(prefix):-len(".lora_A.weight")]
                    delta = (ALPHA / R) * aw[f"{prefix}{module}.lora_B.weight"] @ aw[key]
                    expected[f"{module}.weight"] = bw[f"{module}.weight"] + delta
        else:
            expected = {n: aw[n] for n in aw}
        assert expected and set(expected) <= set(bw)
        for name in bw:
            if name in expected:
                assert not torch.equal(ow[name], bw[name]), name
                torch.testing.assert_close(ow[name], expected[name], rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(ow[name], bw[name]) and ow[name].dtype == bw[name].dtype, name

        # anemoi metadata: a new checkpoint forked from the base, as anemoi-training records a fork
        md, base_md = ck.anemoi_metadata, bk.anemoi_metadata
        assert md["uuid"] == ck.uuid and md["uuid"] not in (base_md["uuid"], bk.uuid)
        assert md["parent_uuid"] == base_md["uuid"]
        assert md["run_id"] != base_md["run_id"]
        assert md["metadata_inference"]["run_id"] == md["run_id"] == md["config"]["training"]["run_id"]
        assert md["config"]["training"]["fork_run_id"] == base_md["run_id"]
        strip = lambda d: {k: v for k, v in d.items() if k not in FORK_KEYS + ("metadata_inference", "config")}  # noqa: E731
        assert strip(md) == strip(base_md)
        assert md["config"]["model"] == base_md["config"]["model"]
        assert md["config"]["data"] == base_md["config"]["data"]
        # ... in the member anemoi-utils reads, with the base's supporting arrays
        read, arrays = load_metadata(str(out), supporting_arrays=True)
        assert read == md
        assert arrays_equal(arrays, bk.supporting_arrays) and arrays_equal(ck.supporting_arrays, bk.supporting_arrays)

        # our lineage: a merge whose parents are the base and the adapter
        rec = ck.lineage.records[0]
        assert rec.operation == "merge"
        assert [p.uuid for p in rec.parents] == [bk.uuid, ak.uuid]

    # the merged file predicts what the fine-tuned model predicts (PEFT merged in memory for LoRA)
    reference = tuned.merge_and_unload() if method == "lora" else tuned
    merged, original = load_model(out), load_model(base)
    batch = random_batch(merged, seed=3)
    got, want, before = _predict(merged, batch), _predict(reference, batch), _predict(original, batch)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[k], before[k], atol=1e-4), "the merge changed nothing"


@pytest.mark.parametrize("model,source,method", [("graphtransformer", "last", "lora"),
                                                 ("gnn", "inference-last", "delta")])
def test_anemoi_inference_forecasts_from_a_merged_file(model: str, source: str, method: str,
                                                       bases: dict, dataset: Path, tmp_path: Path) -> None:
    base = bases[model, source]
    adapter, out = tmp_path / f"{method}.anc", tmp_path / "merged.anc"
    (make_lora if method == "lora" else make_delta)(base, adapter)
    _merge(base, adapter, out)
    forecasts = {}
    for name, ckpt in (("merged", out), ("base", base)):
        nc = tmp_path / f"{name}.nc"
        r = _run(tmp_path, name, _forecast(dataset, ckpt, "anc", nc), guard=True)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "without unpickling" in r.stderr
        forecasts[name] = _read(nc)
    got = forecasts["merged"]
    assert got["time"].shape == forecasts["base"]["time"].shape and got["time"].shape[0] > 1
    assert np.isfinite(got["2t"]).all()
    # the forecast starts from the same input and comes from the merged weights
    assert np.array_equal(got["2t"][0], forecasts["base"]["2t"][0])
    assert not np.allclose(got["2t"][-1], forecasts["base"]["2t"][-1])


# --- refusals: one line, non-zero exit, nothing written -------------------------------------------

def _refused(base: Path, adapter: Path, tmp_path: Path, *fragments: str) -> None:
    out = tmp_path / "out" / "merged.anc"
    out.parent.mkdir()
    r = run_cli("merge", str(base), str(adapter), "-o", str(out))
    one_error_line(r, *fragments)
    assert os.listdir(out.parent) == []  # nothing written, not even a temporary


def test_refuses_an_adapter_made_for_another_base(bases: dict, tmp_path: Path) -> None:
    adapter = tmp_path / "lora.anc"
    make_lora(bases["gnn", "inference-last"], adapter)
    _refused(bases["graphtransformer", "inference-last"], adapter, tmp_path,
             "lora.anc", "was made for base content id", "--force")


def _with_base(dst: Path, tensors: dict, kind: str, base: Path, peft_config: dict | None) -> None:
    with anemoi_ckpt.open(base) as b:
        write_finetune(dst, kind, tensors, b, peft_config=peft_config, durable=False)


def test_refuses_a_lora_target_the_base_does_not_have(bases: dict, tmp_path: Path) -> None:
    base = bases["graphtransformer", "last"]
    pm = make_lora(base, tmp_path / "lora.anc")
    tensors = adapter_tensors(pm)
    renamed = {k.replace("proc.1.attention.lin_q", "proc.7.attention.lin_q"): v for k, v in tensors.items()}
    assert renamed.keys() != tensors.keys()
    _with_base(tmp_path / "bad.anc", renamed, "adapter", base, peft_config_json(pm))
    _refused(base, tmp_path / "bad.anc", tmp_path, "bad.anc",
             "'model.processor.proc.7.attention.lin_q.weight' is not in the base")


@pytest.mark.parametrize("method", ["lora", "delta"])
def test_refuses_a_shape_mismatch(method: str, bases: dict, tmp_path: Path) -> None:
    base = bases["gnn", "inference-last"]
    if method == "lora":
        pm = make_lora(base, tmp_path / "lora.anc")
        tensors, cfg = adapter_tensors(pm), peft_config_json(pm)
        key = next(k for k in tensors if k.endswith(".lora_A.weight"))
        tensors[key] = tensors[key][:, :-1].contiguous()  # one input feature short
    else:
        model = make_delta(base, tmp_path / "delta.anc")
        with anemoi_ckpt.open(base) as b:
            tensors, cfg = changed_tensors(model, b), None
        key = next(k for k in tensors if k.endswith(".weight"))
        tensors[key] = torch.cat([tensors[key], tensors[key][:1]])  # one row too many
    _with_base(tmp_path / "bad.anc", tensors, "adapter" if cfg else "delta", base, cfg)
    _refused(base, tmp_path / "bad.anc", tmp_path, "bad.anc", "has shape", "the base tensor")


def test_fork_fields_are_set_only_where_the_layout_has_them() -> None:
    """``derived`` on metadata without ``config.training`` or ``metadata_inference.run_id`` (the demo
    layout) records the fork in the keys it has and invents no others; the parent is not changed."""
    from anemoi_ckpt.anemoi_meta import derived
    from anemoi_ckpt.demo.data import demo_anemoi_metadata

    parent, _ = demo_anemoi_metadata()
    parent["uuid"] = "parent-uuid"
    before = json.dumps(parent, sort_keys=True)
    md = derived(parent, "new-run")
    assert json.dumps(parent, sort_keys=True) == before
    assert set(md) == set(parent) | {"parent_uuid"}
    assert md["run_id"] == "new-run" and md["parent_uuid"] == "parent-uuid"
    assert md["config"] == parent["config"] and md["metadata_inference"] == parent["metadata_inference"]
    # with a training config, the parent run is kept as fork_run_id (found there when not top level)
    parent = {"uuid": "u", "config": {"training": {"run_id": "old", "fork_run_id": None}}}
    md = derived(parent, "new")
    assert md["config"]["training"] == {"run_id": "new", "fork_run_id": "old"} and md["run_id"] == "new"
