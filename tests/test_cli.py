"""The command line as users run it (a real subprocess): inspect, verify, demo, --version."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import anemoi_ckpt
from anemoi_ckpt.schema_export import schema_documents
from tests.conftest import REPO, run_cli, section_span


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"anemoi-ckpt {anemoi_ckpt.__version__}"


def test_inspect_json(demo_file: Path, demo_sd) -> None:
    out = run_cli("inspect", str(demo_file), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    with anemoi_ckpt.open(demo_file) as ck:
        assert info["uuid"] == ck.uuid and info["content_id"] == ck.content_id
    w = info["tensor_sections"]["weights"]
    assert w["tensors"] == len(demo_sd) and w["aliases"] == 2
    assert w["parameters"] == sum(t.numel() for t in demo_sd.values())
    assert set(w["dtypes"]) == {"F32", "BOOL", "I64"}
    assert {s["role"] for s in info["sections"]} >= {"weights", "graph", "metadata", "lineage",
                                                      "anemoi-metadata", "supporting-array"}
    assert info["lineage"] == {"records": 1, "depth": 0, "operation": "create"}
    assert info["anemoi_metadata"]["version"] == "2.0"


def test_inspect_text(demo_file: Path) -> None:
    out = run_cli("inspect", str(demo_file))
    assert out.returncode == 0, out.stderr
    for needle in ("kind            inference", "content id      sha256:", "tensors [weights]",
                   "tensors [graph]", "weights.safetensors", "data/latitudes float64 [512]"):
        assert needle in out.stdout


def test_inspect_reads_no_tensor_bytes(demo_file: Path, tmp_path: Path) -> None:
    """Overwrite every tensor payload byte (headers kept): inspect reports exactly the same."""
    damaged = tmp_path / "demo.anc"  # same stem, so the same root folder name
    data = bytearray(demo_file.read_bytes())
    with anemoi_ckpt.open(demo_file) as ck:
        for section in ck.tensor_sections():
            m = ck.tensors(section)
            for e in m.entries.values():
                start = m._offsets[e.name]
                data[start:start + e.nbytes] = b"\xa5" * e.nbytes
    damaged.write_bytes(bytes(data))
    a = json.loads(run_cli("inspect", str(demo_file), "--json").stdout)
    b = json.loads(run_cli("inspect", str(damaged), "--json").stdout)
    assert {**a, "path": None} == {**b, "path": None}
    assert run_cli("verify", str(damaged)).returncode == 1


def test_verify_ok_and_json(demo_file: Path) -> None:
    out = run_cli("verify", str(demo_file))
    assert out.returncode == 0 and out.stdout.strip().endswith("intact")
    report = json.loads(run_cli("verify", str(demo_file), "--json").stdout)
    assert report["ok"] and report["content_id_ok"] and len(report["sections"]) == 7


def test_verify_names_damaged_tensor(demo_file: Path) -> None:
    with anemoi_ckpt.open(demo_file) as ck:
        m = ck.tensors("graph")
        offset = m._offsets["data.x"]
    data = bytearray(demo_file.read_bytes())
    data[offset] ^= 0xFF
    demo_file.write_bytes(bytes(data))
    out = run_cli("verify", str(demo_file), "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    bad = [s for s in report["sections"] if not s["ok"]]
    assert [(s["path"], s["damaged_tensors"]) for s in bad] == [("graph.safetensors", ["data.x"])]
    assert report["content_id_ok"]  # the weights are fine; only the graph is damaged
    assert f"anemoi-ckpt: error: {demo_file}: section graph.safetensors:" in out.stderr


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = run_cli("demo", "--out-dir", str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert "verify: intact" in out.stdout
    assert "0 would execute code" in out.stdout and "content id equals the demo model's" in out.stdout
    with anemoi_ckpt.open(tmp_path / "d" / "demo-model.anc") as ck:
        assert ck.verify().ok and ck.tensors("graph")
    # The training story (needs the trainer extra, which the dev extra includes).
    pytest.importorskip("lightning")
    pytest.importorskip("peft")
    text = out.stdout
    assert "pretrain reference/tiny" in text and "-> base.anc (inference" in text
    assert "-> lora.anc (adapter" in text and "-> freeze.anc (delta" in text
    assert "-> base+lora.anc" in text and "weights equal base+freeze.anc's" in text
    assert "LoRA fine-tune: regional val loss" in text and "lower than the base: yes" in text
    assert "freeze fine-tune: regional val loss" in text and "lower than the base: NO" not in text
    assert "training story checks: 8/8 passed" in text
    for prefix in ("LoRA fine-tune:", "freeze fine-tune:"):  # fine-tuned val loss < the base's
        line = next(x for x in text.splitlines() if x.startswith(prefix))
        before, after = (float(v) for v in re.findall(r"regional val loss ([0-9.]+) -> ([0-9.]+)", line)[0])
        assert after < before
    train = tmp_path / "d" / "train"
    with anemoi_ckpt.open(train / "lora.anc") as ck:
        assert ck.kind == "adapter"
    with anemoi_ckpt.open(train / "base+lora.anc") as ck:
        assert ck.kind == "inference" and len(ck.lineage.records) >= 3
    # The catalogue part: every file registered, one tagged, fetched by uuid, a gc plan.
    files = [p for p in (tmp_path / "d").rglob("*.anc") if "fetched" not in p.parts]
    assert f"{len(files)} files (parents first)" in text
    assert "list --tag production" in text and "verified (digests, content id)" in text
    listed = json.loads(run_cli("catalogue", "list", "--tag", "production", "--catalogue",
                                str(tmp_path / "d" / "catalogue.db"), "--json").stdout)
    assert len(listed) == 1 and len(listed[0]["locations"]) == 2  # the file and its fetched copy
    fetched = next((tmp_path / "d" / "fetched").iterdir())
    assert fetched.read_bytes() == Path(listed[0]["locations"][0]).read_bytes()


def test_usage_errors_exit_2() -> None:
    assert run_cli("inspect").returncode == 2
    assert run_cli("inspect", "x.anc", "--bogus").returncode == 2
    assert run_cli("no-such-command").returncode == 2


def test_published_schemas_match_models() -> None:
    for name, text in schema_documents().items():
        path = REPO / "docs" / "schemas" / name
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run make schemas"


def test_section_span_helper(demo_file: Path) -> None:
    offset, size = section_span(demo_file, "metadata.json")
    assert offset % 64 == 0 and size > 0
