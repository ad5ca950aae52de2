"""The container seen from outside: any zip tool lists it, members are STORED and aligned, each
tensor member is an ordinary safetensors file, and streaming writes keep memory and layout right."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import anemoi_ckpt
from anemoi_ckpt.container.zipwrite import ALIGNMENT


def local_data_offset(raw: bytes, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def test_zip_is_standard_stored_aligned_one_root(demo_file: Path) -> None:
    raw = demo_file.read_bytes()
    with zipfile.ZipFile(demo_file) as zf:
        assert zf.testzip() is None  # every CRC-32 correct
        infos = zf.infolist()
        assert {i.filename.split("/")[0] for i in infos} == {"demo"}
        for info in infos:
            assert info.compress_type == zipfile.ZIP_STORED, info.filename
            assert local_data_offset(raw, info) % ALIGNMENT == 0, info.filename
        names = {i.filename for i in infos}
    assert {"demo/manifest.json", "demo/metadata.json", "demo/lineage.json",
            "demo/weights.safetensors", "demo/graph.safetensors",
            "demo/anemoi-metadata/anemoi.json", "demo/anemoi-metadata/data/latitudes.numpy",
            "demo/anemoi-metadata/data/longitudes.numpy"} == names


def test_tensor_members_are_plain_safetensors(demo_file: Path, demo_sd) -> None:
    with zipfile.ZipFile(demo_file) as zf:
        weights = safetensors.torch.load(zf.read("demo/weights.safetensors"))
        graph = safetensors.torch.load(zf.read("demo/graph.safetensors"))
    with anemoi_ckpt.open(demo_file) as ck:
        aliases = ck.tensors().aliases
        assert set(weights) == set(demo_sd) - set(aliases)
        for k, v in weights.items():
            assert torch.equal(v, demo_sd[k])
        assert set(graph) == set(ck.tensors("graph"))


def test_zip_extracts_with_unzip_tool(demo_file: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(demo_file) as zf:
        zf.extractall(tmp_path / "x")
    loaded = safetensors.torch.load_file(tmp_path / "x" / "demo" / "weights.safetensors")
    assert loaded


def test_streaming_writer_moves_data_when_header_outgrows_reservation(tmp_path: Path) -> None:
    path = tmp_path / "stream.anc"
    expected = {}
    # 64 bytes reserved, ~300 tensors: the header must grow several times over the reservation.
    with anemoi_ckpt.Writer(path, header_reserve=64) as w:
        for i in range(300):
            t = torch.full((i % 7 + 1, 3), float(i))
            expected[f"layer.{i}.a_rather_long_parameter_name.weight"] = t
            w.add(f"layer.{i}.a_rather_long_parameter_name.weight", t)
        w.add("graph_edges", torch.arange(10), section="graph")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert safetensors.torch.load(zf.read("stream/weights.safetensors")).keys() == expected.keys()
    with anemoi_ckpt.open(path) as ck:
        assert ck.verify().ok
        sd = ck.state_dict()
        assert all(torch.equal(sd[k], v) for k, v in expected.items())
        assert torch.equal(ck.tensors("graph")["graph_edges"], torch.arange(10))


def test_writer_api_rules(tmp_path: Path) -> None:
    path = tmp_path / "w.anc"
    with anemoi_ckpt.Writer(path) as w:
        w.add("a", torch.ones(2))
        with pytest.raises(ValueError, match="duplicate tensor name 'a'"):
            w.add("a", torch.zeros(2))
        w.add_alias("b", "a")
        with pytest.raises(ValueError, match="not in section"):
            w.add_alias("c", "missing")
        w.add("g", torch.ones(1), section="graph")
        with pytest.raises(ValueError, match="already closed"):
            w.add("late", torch.ones(1))
        with pytest.raises(ValueError, match="invalid section name"):
            w.add("x", torch.ones(1), section="../evil")
    with anemoi_ckpt.open(path) as ck:
        assert ck.tensors().aliases == {"b": "a"}


def test_writer_exception_leaves_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.anc"
    anemoi_ckpt.save(path, {"old": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with anemoi_ckpt.Writer(path) as w:
            w.add("new", torch.zeros(3))
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.anc"]


def test_streaming_memory_is_bounded_by_largest_tensor(tmp_path: Path) -> None:
    """Write 24 x 32 MiB through the Writer, each tensor dropped after add: peak RSS growth must
    stay far below the 768 MiB written (measured in a fresh process)."""
    import subprocess
    import sys

    code = f"""
import resource, torch, anemoi_ckpt
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with anemoi_ckpt.Writer({str(tmp_path / 'big.anc')!r}) as w:
    for i in range(24):
        w.add(f"t{{i}}", torch.full((8 << 20,), float(i)))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip())
    assert growth < 400 << 20, f"peak RSS grew by {growth >> 20} MiB"
    with anemoi_ckpt.open(tmp_path / "big.anc") as ck:
        assert len(ck.tensors()) == 24 and float(ck.tensors()["t23"][-1]) == 23.0


def test_metadata_model_and_lineage_parents(tmp_path: Path) -> None:
    a = tmp_path / "a.anc"
    anemoi_ckpt.save(a, {"w": torch.ones(2)}, metadata={"model": {"builder": "demo", "config": {"c": 4}}})
    b = tmp_path / "b.anc"
    with anemoi_ckpt.open(a) as pa:
        anemoi_ckpt.save(b, {"w": torch.full((2,), 2.0)}, parents=[pa], operation="fine-tune",
                         parameters={"lr": 1e-4})
    c = tmp_path / "c.anc"
    anemoi_ckpt.save(c, {"w": torch.full((2,), 3.0)}, parents=[b, {"uuid": "external-1"}],
                     operation="merge")
    with anemoi_ckpt.open(a) as ca, anemoi_ckpt.open(b) as cb, anemoi_ckpt.open(c) as cc:
        assert ca.metadata.model.builder == "demo" and ca.metadata.model.config == {"c": 4}
        recs = cc.lineage.records
        assert recs[0].uuid == cc.uuid and recs[0].operation == "merge"
        assert [p.uuid for p in recs[0].parents] == [cb.uuid, "external-1"]
        assert [r.uuid for r in recs] == [cc.uuid, cb.uuid, ca.uuid]
        assert recs[1].parameters == {"lr": 1e-4}
        assert recs[1].parents[0].content_id == ca.content_id
        assert cc.lineage.depth() == 2 and ca.lineage.depth() == 0


def test_load_into_module(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    anemoi_ckpt.save(tmp_path / "m.anc", model.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        ck.load_into(fresh)
    for (k, v), (_, w) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), k
    other = torch.nn.Sequential(torch.nn.Linear(4, 5))
    with anemoi_ckpt.open(tmp_path / "m.anc") as ck:
        with pytest.raises(anemoi_ckpt.FormatError, match=r"2 unexpected tensor\(s\): 1.bias, 1.weight"):
            ck.load_into(other)
        with pytest.raises(anemoi_ckpt.FormatError, match=r"shape mismatch .*0.weight \(3, 4\) vs \(5, 4\)"):
            ck.load_into(other, strict=False)


def test_non_durable_save_is_still_complete_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    anemoi_ckpt.save(tmp_path / "fast.anc", {"w": torch.arange(10.0)}, durable=False)
    assert calls == []
    anemoi_ckpt.save(tmp_path / "safe.anc", {"w": torch.arange(10.0)})
    assert len(calls) >= 1  # the durable default fsyncs the file (and its folder)
    with anemoi_ckpt.open(tmp_path / "fast.anc") as ck:
        assert ck.verify().ok and torch.equal(ck.tensors()["w"], torch.arange(10.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.anc", "safe.anc"]


def test_bad_parent_fails_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(anemoi_ckpt.FormatError, match="no such file"):
        anemoi_ckpt.Writer(tmp_path / "child.anc", parents=[tmp_path / "missing.anc"])
    assert list(tmp_path.iterdir()) == []
