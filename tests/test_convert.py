"""`anemoi-ckpt convert`: foreign checkpoints into .anc without running their pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import anemoi_ckpt
from anemoi_ckpt.convert import convert
from tests.conftest import arrays_equal, run_cli


class WithGraph(torch.nn.Module):
    """A module with a non-persistent buffer, as anemoi keeps its graph edges."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.register_buffer("edge_index", torch.randint(0, 9, (2, 12)), persistent=False)
        self.register_buffer("scale", torch.rand(3))


def raw_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def test_state_dict_round_trip_matches_torch_load(tmp_path: Path) -> None:
    sd = {"w": torch.randn(5, 3), "t": torch.randn(3, 5).t(), "h": torch.randn(4).half(),
          "i": torch.arange(6)[::2], "e": torch.empty(0, 2), "nested": {"b": torch.ones(2, dtype=torch.bool)}}
    torch.save(sd, tmp_path / "sd.pt")
    report = convert(tmp_path / "sd.pt", tmp_path / "sd.anc")
    assert report.format == "torch-state-dict" and report.verified == 6
    expected = torch.load(tmp_path / "sd.pt", weights_only=True)
    flat = {**{k: v for k, v in expected.items() if k != "nested"}, "nested.b": expected["nested"]["b"]}
    with anemoi_ckpt.open(tmp_path / "sd.anc") as ck:
        out = ck.state_dict()
        assert out.keys() == flat.keys() and all(raw_equal(out[k], v) for k, v in flat.items())
        rec = ck.lineage.records[0]
        assert rec.operation == "convert" and rec.parameters["source_format"] == "torch-state-dict"
        assert rec.parameters["source_sha256"] == report.source_sha256
        assert ck.verify().ok


def test_module_pickle_gives_weights_and_non_persistent_buffers(tmp_path: Path) -> None:
    model = WithGraph()
    torch.save(model, tmp_path / "model.ckpt")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    report = convert(tmp_path / "model.ckpt", tmp_path / "model.anc")
    assert report.format == "torch-module" and report.tensors == {"weights": 5, "buffers": 1}
    with anemoi_ckpt.open(tmp_path / "model.anc") as ck:
        weights = ck.state_dict()
        assert weights.keys() == model.state_dict().keys()
        assert all(raw_equal(weights[k], v) for k, v in model.state_dict().items())
        assert raw_equal(ck.tensors("buffers")["edge_index"], model.edge_index)
        assert ck.section("buffers.safetensors").role == "buffers"
        fresh = WithGraph()
        ck.load_into(fresh)
        assert torch.equal(fresh.encoder.weight, model.encoder.weight)
    # The pickled model and its state dict hold the same weights: the same content id.
    assert convert(tmp_path / "sd.pt", tmp_path / "sd.anc").content_id == report.content_id


def test_safetensors_source(tmp_path: Path) -> None:
    sd = {"a": torch.randn(3, 2), "b": torch.arange(4).to(torch.bfloat16)}
    safetensors.torch.save_file(sd, tmp_path / "m.safetensors")
    report = convert(tmp_path / "m.safetensors", tmp_path / "m.anc")
    assert report.format == "safetensors" and report.verified == 2
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        assert all(raw_equal(ck.tensors()[k], v) for k, v in sd.items())


def test_anemoi_metadata_and_arrays_carried_over(tmp_path: Path) -> None:
    checkpoints = pytest.importorskip("anemoi.utils.checkpoints")
    path = tmp_path / "inference-last.ckpt"
    torch.save(WithGraph(), path)
    md = {"version": "2.0", "uuid": "source-uuid", "config": {"a": [1, 2]}}
    arrays = {"data": {"latitudes": np.linspace(-90, 90, 5), "longitudes": np.arange(5.0)}}
    checkpoints.save_metadata(str(path), md, supporting_arrays=arrays)
    convert(path, tmp_path / "out.anc")
    got_md, got_arrays = checkpoints.load_metadata(str(tmp_path / "out.anc"), supporting_arrays=True)
    assert got_md["config"] == md["config"] and got_md["version"] == "2.0"
    assert arrays_equal(got_arrays, arrays)
    with anemoi_ckpt.open(tmp_path / "out.anc") as ck:
        # anemoi's uuid is kept (same model, same registry entry); the file's own uuid is new,
        # and the source is its parent in lineage
        assert got_md["uuid"] == "source-uuid" != ck.uuid
        assert [(p.uuid, p.role) for p in ck.lineage.records[0].parents] == [("source-uuid", "source")]


def test_malicious_state_dict_is_refused_naming_the_global(tmp_path: Path) -> None:
    canary = tmp_path / "canary"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {canary}",)

    torch.save({"w": torch.ones(2), "x": Evil()}, tmp_path / "evil.pt")
    out = run_cli("convert", str(tmp_path / "evil.pt"), str(tmp_path / "evil.anc"))
    assert out.returncode == 1 and not canary.exists()
    assert "entry 'x' is a posix.system, not a tensor" in out.stderr
    assert not (tmp_path / "evil.anc").exists()


def test_unsupported_inputs(tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(os.urandom(64))
    with pytest.raises(anemoi_ckpt.FormatError, match="unrecognised checkpoint format"):
        convert(tmp_path / "junk.bin", tmp_path / "o.anc")
    torch.save({"pytorch-lightning_version": "2.5", "epoch": 0}, tmp_path / "last.ckpt")
    with pytest.raises(anemoi_ckpt.FormatError, match="the Lightning checkpoint has no state_dict"):
        convert(tmp_path / "last.ckpt", tmp_path / "o.anc")
    with pytest.raises(anemoi_ckpt.UsageError, match="unknown source format 'gguf'"):
        convert(tmp_path / "last.ckpt", tmp_path / "o.anc", source_format="gguf")
    assert not (tmp_path / "o.anc").exists()


def test_cli_batch_dry_run_and_usage(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(2)}, tmp_path / "one.pt")
    torch.save({"b": torch.zeros(3)}, tmp_path / "two.pt")
    out = run_cli("convert", str(tmp_path / "one.pt"), str(tmp_path / "two.pt"), "--out-dir",
                  str(tmp_path / "out"), "--json")
    assert out.returncode == 0, out.stderr
    reports = json.loads(out.stdout)
    assert [r["verified"] for r in reports] == [1, 1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.anc", "two.anc"]
    dry = run_cli("convert", str(tmp_path / "one.pt"), str(tmp_path / "dry.anc"), "--dry-run", "--json")
    assert dry.returncode == 0 and json.loads(dry.stdout)["tensors"] == {"weights": 1}
    assert not (tmp_path / "dry.anc").exists()
    assert run_cli("convert", str(tmp_path / "one.pt")).returncode == 2


def test_unstorable_dtype_is_refused_before_writing(tmp_path: Path) -> None:
    torch.save({"ok": torch.ones(2), "z": torch.ones(2, dtype=torch.complex128)}, tmp_path / "c.pt")
    out = run_cli("convert", str(tmp_path / "c.pt"), str(tmp_path / "c.anc"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "tensor 'z' has dtype complex128, which .anc cannot store" in out.stderr
    assert not (tmp_path / "c.anc").exists()


def test_read_back_check_catches_a_changed_byte(tmp_path: Path) -> None:
    """The post-write proof compares the output's bytes with the source file's (memcmp where the
    tensor lies whole in the source, against the source's map or its file, sha256 of the source
    bytes otherwise)."""
    from anemoi_ckpt.convert.plan import build_plan
    from anemoi_ckpt.convert.sources import detect
    from anemoi_ckpt.convert.stream import _by_reread, write_tensors
    from anemoi_ckpt.writer import Writer

    torch.save({"a": torch.arange(64.0), "b": torch.arange(32.0).reshape(4, 8).t()}, tmp_path / "s.pt")
    src = detect(tmp_path / "s.pt")
    plan = build_plan(src.specs)

    class Rep:
        tensors: dict = {}
        bytes = 0

    with Writer(tmp_path / "o.anc", durable=False) as w:
        origins = write_tensors(src, plan, w, Rep())
    assert ("weights", "a") in origins and ("weights", "b") not in origins  # b is a transposed view
    assert _by_reread(plan, str(tmp_path / "o.anc"), src.path, origins) == 2
    assert _by_reread(plan, str(tmp_path / "o.anc"), src.path, origins, src.mapping) == 2
    for name in ("a", "b"):  # flip one byte of each tensor in the output: both paths catch it
        with anemoi_ckpt.open(tmp_path / "o.anc") as ck:
            member = ck._members["weights.safetensors"]
            entry = ck.tensors().entries[name]
            header = int.from_bytes(bytes(ck._mm[member.data_offset:member.data_offset + 8]), "little")
            at = member.data_offset + 8 + header + entry.begin + 3
        bad = tmp_path / f"bad-{name}.anc"
        data = bytearray((tmp_path / "o.anc").read_bytes())
        data[at] ^= 0xFF
        bad.write_bytes(bytes(data))
        for mapping in (None, src.mapping):
            with pytest.raises(anemoi_ckpt.IntegrityError, match=f"tensor '{name}' read back differs"):
                _by_reread(plan, str(bad), src.path, origins, mapping)
    src.close()
