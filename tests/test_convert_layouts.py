"""convert brings old anemoi layouts forward: tensor names, optimizer names, the training-state
document and the anemoi metadata (1.0 -> 2.0) move together, every applied step is in the
lineage, and --keep-layout writes the source unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import anemoi_ckpt
from anemoi_ckpt.errors import FormatError
from anemoi_ckpt.convert import convert
from anemoi_ckpt.translate import load_steps
from tests.conftest import FIXTURES, run_cli

LAYOUTS = FIXTURES / "legacy" / "layouts"
BUFFER = re.compile(r"(_norm_mul|_norm_add|latlons_\w+|edge_inc)$")


@pytest.fixture(scope="module")
def old_lightning(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A Lightning checkpoint in the pre-0.11 layout (chunked processor, single dataset, old MLP
    names, metadata 1.0), written by torch.save with anemoi-utils' own save_metadata."""
    from anemoi.utils.checkpoints import save_metadata

    before = json.loads((LAYOUTS / "full_chain" / "before.json").read_text())
    after = json.loads((LAYOUTS / "full_chain" / "after.json").read_text())
    names = before["sections"]["weights"]
    sd = {f"model.{n}": (torch.tensor([[3], [2]]) if n.endswith("edge_inc") else torch.arange(2.0) + i)
          for i, n in enumerate(names)}
    trainable = [n for n in names if not BUFFER.search(n)]
    state = {i: {"step": torch.tensor(5.0), "exp_avg": torch.full((2,), float(i)),
                 "exp_avg_sq": torch.full((2,), float(i) / 10)} for i in range(len(trainable))}
    ckpt = {"pytorch-lightning_version": "2.5.0", "epoch": 4, "global_step": 100, "state_dict": sd,
            "optimizer_states": [{"state": state, "param_groups": [
                {"lr": 1e-4, "betas": (0.9, 0.95), "params": list(range(len(trainable)))}]}],
            "hyper_parameters": {"config": before["anemoi_metadata"]["config"]}}
    path = tmp_path_factory.mktemp("old") / "last.ckpt"
    torch.save(ckpt, path)
    arrays = {"latitudes": np.linspace(-90, 90, 40), "longitudes": np.linspace(0, 350, 40)}
    md = {k: v for k, v in before["anemoi_metadata"].items() if k != "supporting_arrays_paths"}
    save_metadata(str(path), md, supporting_arrays=arrays)
    return path, before, {"after": after, "trainable": trainable, "arrays": arrays}


def test_old_lightning_layout_brought_forward(old_lightning: tuple[Path, dict, dict], tmp_path: Path) -> None:
    path, before, extra = old_lightning
    after = extra["after"]
    report = convert(path, tmp_path / "new.anc")
    renames = {old: tuple(new) for old, new in after["renames"]["weights"].items()}
    assert report.steps == after["applied"][:len(report.steps)] and "metadata_v2" in report.steps
    with anemoi_ckpt.open(tmp_path / "new.anc") as ck:
        by_section: dict[str, set[str]] = {}
        for sec, new in renames.values():
            by_section.setdefault(sec, set()).add(new)
        assert set(ck.tensors("weights")) == by_section["weights"]
        if "buffers" in by_section:  # the old persistent edge_inc moved out of the weights
            assert set(ck.tensors("buffers")) == by_section["buffers"]
        # values follow their names
        for i, old in enumerate(before["sections"]["weights"]):
            sec, new = renames[old]
            if not old.endswith("edge_inc"):
                assert torch.equal(ck.tensors(sec)[new], torch.arange(2.0) + i), old
        # optimizer state follows the parameters' renames, and so does the training state
        opt = ck.tensors("optimizer")
        expected_params = [renames[n][1] for n in extra["trainable"]]
        assert set(opt) == {f"{p}.{k}" for p in expected_params for k in ("step", "exp_avg", "exp_avg_sq")}
        for i, p in enumerate(expected_params):
            assert torch.equal(opt[f"{p}.exp_avg"], torch.full((2,), float(i)))
        doc = ck.document("training-state")
        assert doc["optimizers"][0]["param_groups"][0]["params"] == expected_params
        # metadata 2.0, arrays nested under the dataset, readable by anemoi-utils
        md = ck.anemoi_metadata
        assert md["version"] == "2.0" and md["metadata_inference"]["dataset_names"] == ["data"]
        assert np.array_equal(ck.supporting_arrays["data"]["latitudes"], extra["arrays"]["latitudes"])
        rec = ck.lineage.records[-1]
        steps = rec.parameters["steps"]
        assert [s["name"] for s in steps] == report.steps
        digests = {s.name: s.digest for s in load_steps()}
        assert all(s["digest"] == digests[s["name"]] for s in steps)
        assert rec.parameters["source_versions"]["metadata"] == "1.0"
    from anemoi.utils.checkpoints import load_metadata

    md, arrays = load_metadata(str(tmp_path / "new.anc"), supporting_arrays=True)
    assert md["version"] == "2.0" and np.array_equal(arrays["data"]["longitudes"], extra["arrays"]["longitudes"])


def test_keep_layout_writes_the_source_names(old_lightning: tuple[Path, dict, dict], tmp_path: Path) -> None:
    path, before, _ = old_lightning
    report = convert(path, tmp_path / "kept.anc", keep_layout=True)
    assert report.steps == []
    with anemoi_ckpt.open(tmp_path / "kept.anc") as ck:
        assert set(ck.tensors("weights")) == set(before["sections"]["weights"])
        assert ck.anemoi_metadata["version"] == "1.0"
        assert ck.lineage.records[-1].parameters["keep_layout"] is True


def test_dry_run_reports_the_translated_plan(old_lightning: tuple[Path, dict, dict], tmp_path: Path) -> None:
    path, before, extra = old_lightning
    out = run_cli("convert", str(path), str(tmp_path / "x.anc"), "--dry-run", "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["steps"] == convert(path, None, dry_run=True).steps and rep["steps"]
    n_buffers = sum(1 for n in before["sections"]["weights"] if n.endswith("edge_inc"))
    assert rep["tensors"]["weights"] == len(before["sections"]["weights"]) - n_buffers
    assert not (tmp_path / "x.anc").exists()


def test_dtype_casts_weights_only(old_lightning: tuple[Path, dict, dict], tmp_path: Path) -> None:
    path, _, _ = old_lightning
    convert(path, tmp_path / "bf16.anc", dtype="bf16")
    with anemoi_ckpt.open(tmp_path / "bf16.anc") as ck:
        floats = [t for t in ck.tensors("weights").values() if t.is_floating_point()]
        assert floats and all(t.dtype == torch.bfloat16 for t in floats)
        assert all(t.dtype == torch.float32 for t in ck.tensors("optimizer").values())
        assert ck.lineage.records[-1].parameters["dtype"] == "bf16"
    out = run_cli("convert", str(path), str(tmp_path / "q.anc"), "--dtype", "int4")
    assert out.returncode == 2 and "int4" in out.stderr and not (tmp_path / "q.anc").exists()


def test_layout_fixture_files_convert(tmp_path: Path) -> None:
    """Every committed old-layout state dict converts to the names the whole chain of steps
    gives (the full-chain fixture: exactly its after.json)."""
    from anemoi_ckpt.translate import TranslationInput, translate

    for before_pt in sorted(LAYOUTS.glob("*/before.pt")):
        names = json.loads((before_pt.parent / "before.json").read_text())["sections"]["weights"]
        try:
            chain = translate(TranslationInput("torch-state-dict", {"weights": names}, None))
        except FormatError as e:
            # A layout whose translation needs the config (chunk sizes, hierarchy levels) is a
            # plain state dict here, with no metadata: refused in one line, never guessed.
            with pytest.raises(FormatError) as refused:
                convert(before_pt, tmp_path / f"{before_pt.parent.name}.anc")
            assert refused.value.what == e.what and "\n" not in str(refused.value)
            assert not (tmp_path / f"{before_pt.parent.name}.anc").exists()
            continue
        want = {new for sec, new in chain.renames["weights"].values() if sec == "weights"}
        if before_pt.parent.name == "full_chain":
            after = json.loads((before_pt.parent / "after.json").read_text())
            assert want == {new for sec, new in after["renames"]["weights"].values() if sec == "weights"}
        report = convert(before_pt, tmp_path / f"{before_pt.parent.name}.anc")
        assert report.steps == [a["name"] for a in chain.applied] != []
        with anemoi_ckpt.open(tmp_path / f"{before_pt.parent.name}.anc") as ck:
            assert set(ck.tensors("weights")) == want, before_pt.parent.name
