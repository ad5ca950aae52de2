"""``anemoi-ckpt export``: every tensor of a section back out as safetensors, ``.pt`` or a sharded
folder, equal by meaning to ``ck.tensors(section)`` when read by safetensors, torch and
transformers; aliases materialised or recorded as metadata; outputs checked before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import anemoi_ckpt
from anemoi_ckpt.export import export
from anemoi_ckpt.export.stfile import ALIASES_KEY
from tests.conftest import one_error_line, run_cli


def _expected(path: Path, section: str = "weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with anemoi_ckpt.open(path) as ck:
        m = ck.tensors(section)
        return {k: m[k].clone() for k in m}, dict(m.aliases)


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype, name
        assert got[name].shape == t.shape, name
        assert torch.equal(got[name], t), name


@pytest.fixture
def odd_file(tmp_path: Path) -> Path:
    """Dtypes and shapes a byte copier can get wrong: bf16, bool, 0-d, empty, int8, and a tie."""
    w = torch.randn(3, 5)
    sd = {"a.bf16": torch.randn(4, 3).to(torch.bfloat16), "a.bool": torch.rand(7) > 0.5,
          "b.scalar": torch.tensor(42, dtype=torch.int64), "b.empty": torch.zeros(0, 3),
          "c.i8": torch.randint(-128, 127, (2, 2, 2), dtype=torch.int8), "d.w": w, "d.tied": w,
          "e.f64": torch.randn(2, dtype=torch.float64)}
    path = tmp_path / "odd.anc"
    anemoi_ckpt.save(path, sd)
    return path


def test_unzipped_weights_lack_aliases_an_export_has_them(demo_file: Path, tmp_path: Path) -> None:
    want, aliases = _expected(demo_file)
    assert aliases, "the demo file must have aliases for this test to mean anything"
    export(demo_file, tmp_path / "w.safetensors")
    got = load_file(tmp_path / "w.safetensors")
    _assert_same(got, want)
    assert set(aliases) <= set(got)
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_every_dtype_and_shape_round_trips(odd_file: Path, tmp_path: Path) -> None:
    want, _ = _expected(odd_file)
    export(odd_file, tmp_path / "o.safetensors")
    _assert_same(load_file(tmp_path / "o.safetensors"), want)
    export(odd_file, tmp_path / "o.pt")
    _assert_same(torch.load(tmp_path / "o.pt", weights_only=True), want)


def test_aliases_as_safetensors_metadata(demo_file: Path, tmp_path: Path) -> None:
    want, aliases = _expected(demo_file)
    r = export(demo_file, tmp_path / "w.safetensors", aliases="metadata")
    assert r.tensors == len(want) and r.stored == len(want) - len(aliases)
    got = load_file(tmp_path / "w.safetensors")
    assert set(got) == set(want) - set(aliases)
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        recorded = json.loads(f.metadata()[ALIASES_KEY])
    assert recorded == aliases
    got.update({a: got[t] for a, t in recorded.items()})  # re-tied as the docs say
    _assert_same(got, want)


@pytest.mark.parametrize("aliases", ["materialize", "metadata"])
def test_pt_state_dict(demo_file: Path, tmp_path: Path, aliases: str) -> None:
    want, tied = _expected(demo_file)
    export(demo_file, tmp_path / "w.pt", aliases=aliases)
    got = torch.load(tmp_path / "w.pt", weights_only=True)
    _assert_same(got, want)
    for alias, target in tied.items():  # metadata: the tie kept as shared storage, as torch keeps it
        shared = got[alias].untyped_storage().data_ptr() == got[target].untyped_storage().data_ptr()
        assert shared == (aliases == "metadata")
    # each tensor has its own storage: nothing of the mapped .anc section beyond the tensors
    assert os.path.getsize(tmp_path / "w.pt") < sum(t.nbytes for t in want.values()) + 64 * 1024


def test_sharded_folder_loads_with_transformers(demo_file: Path, tmp_path: Path) -> None:
    from transformers.trainer_utils import load_sharded_checkpoint

    want, _ = _expected(demo_file)
    out = tmp_path / "model"
    r = export(demo_file, out, max_shard_size="4KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and r.files == shards + ["model.safetensors.index.json"]
    assert sorted(os.listdir(out)) == sorted(r.files)
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in want.values())
    for s in shards:
        part = load_file(out / s)
        assert {k for k, v in index["weight_map"].items() if v == s} == set(part)
        big = max(t.nbytes for t in part.values())
        assert sum(t.nbytes for t in part.values()) <= max(4000, big)
    # transformers' own loader, into a module with exactly these state-dict names
    module = _module_with(want)
    result = load_sharded_checkpoint(module, out, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same(module.state_dict(), want)


def _module_with(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    root = torch.nn.Module()
    for name, t in sd.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part):
                m.add_module(part, torch.nn.Module())
            m = getattr(m, part)
        m.register_buffer(leaf, torch.zeros_like(t))
    return root


def test_sharded_aliases_as_index_metadata(demo_file: Path, tmp_path: Path) -> None:
    want, aliases = _expected(demo_file)
    export(demo_file, tmp_path / "m", aliases="metadata", max_shard_size=10**9)
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["aliases"] == aliases
    got = load_file(tmp_path / "m" / "model-00001-of-00001.safetensors")
    got.update({a: got[t] for a, t in index["metadata"]["aliases"].items()})
    _assert_same(got, want)


def test_other_section(demo_file: Path, tmp_path: Path) -> None:
    want, _ = _expected(demo_file, "graph")
    r = run_cli("export", str(demo_file), str(tmp_path / "g.safetensors"), "--section", "graph", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["section"] == "graph" and report["tensors"] == len(want)
    _assert_same(load_file(tmp_path / "g.safetensors"), want)
    r = run_cli("export", str(demo_file), str(tmp_path / "n.safetensors"), "--section", "nope")
    one_error_line(r, "no tensor section 'nope'", rc=2)
    assert not (tmp_path / "n.safetensors").exists()


def test_cli_text_and_format_option(demo_file: Path, tmp_path: Path) -> None:
    want, _ = _expected(demo_file)
    r = run_cli("export", str(demo_file), str(tmp_path / "weights.bin"), "--format", "pt")
    assert r.returncode == 0, r.stderr
    assert f"exported {len(want)} tensors of section weights" in r.stdout
    _assert_same(torch.load(tmp_path / "weights.bin", weights_only=True), want)
    one_error_line(run_cli("export", str(demo_file), str(tmp_path / "w.xyz")),
                   "cannot tell the export format", "--format", rc=2)


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_existing_output_kept_unless_overwrite(demo_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"precious")
    before = _listing(tmp_path)
    one_error_line(run_cli("export", str(demo_file), str(out)), "w.safetensors", "already exists",
                   "--overwrite")
    assert _listing(tmp_path) == before  # nothing written, not even a temporary file
    r = run_cli("export", str(demo_file), str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    _assert_same(load_file(out), _expected(demo_file)[0])


def test_sharded_overwrite_replaces_the_folder(demo_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.safetensors").write_bytes(b"old")
    one_error_line(run_cli("export", str(demo_file), str(out)), "already exists", "--overwrite")
    assert os.listdir(out) == ["stale.safetensors"]
    r = run_cli("export", str(demo_file), str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["model-00001-of-00001.safetensors", "model.safetensors.index.json"]
    assert sorted(os.listdir(tmp_path)) == ["demo.anc", "m"]  # no temporary folder left beside it


@pytest.mark.parametrize("case", ["folder", "missing-parent", "file-url", "sharded-onto-file",
                                  "sharded-missing-parent"])
def test_bad_output_one_line_before_any_work(tmp_path: Path, case: str) -> None:
    # the input does not exist: the output's error comes first, so no work was started
    src = str(tmp_path / "missing.anc")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    out, fragments, rc = {
        "folder": (str(tmp_path / "dir"), ("is a folder, not a file",), 1),
        "missing-parent": (str(tmp_path / "nope" / "w.pt"), ("does not exist", "create the folder"), 1),
        "file-url": (f"file://{tmp_path}/w.safetensors", ("not file:// URLs",), 1),
        "sharded-onto-file": (str(tmp_path / "file"), ("exists and is not a folder",), 1),
        "sharded-missing-parent": (str(tmp_path / "nope" / "m"), ("does not exist", "create the folder"), 1),
    }[case]
    extra = ["--format", "safetensors"] if case == "folder" else ["--format", "sharded"] \
        if case.startswith("sharded") else []
    before = sorted(os.listdir(tmp_path))
    one_error_line(run_cli("export", src, out, *extra), *fragments, rc=rc)
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(tmp_path / "dir") == []


def test_bad_max_shard_size(demo_file: Path, tmp_path: Path) -> None:
    one_error_line(run_cli("export", str(demo_file), str(tmp_path / "m"), "--max-shard-size", "lots"),
                   "--max-shard-size 'lots' is not a size", rc=2)
    assert not (tmp_path / "m").exists()
