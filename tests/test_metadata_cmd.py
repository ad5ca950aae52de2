"""``anemoi-ckpt metadata``: view, --set/--load edits with a new uuid and a lineage record, the
refusals (one line, nothing written), and files whose anemoi.json another zip tool rewrote."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

import anemoi_ckpt
from anemoi_ckpt.errors import UsageError
from anemoi_ckpt.metadata_edit import apply_sets, changed_keys, parse_assignment, set_path
from tests.conftest import arrays_equal, one_error_line, run_cli

ANEMOI_JSON = "anemoi-metadata/anemoi.json"


# --- pure functions --------------------------------------------------------------------------------
def test_set_values_are_yaml_and_nest() -> None:
    assert parse_assignment("a.b.c=3") == (("a", "b", "c"), 3)
    assert parse_assignment("x=[1, two]") == (("x",), [1, "two"])
    assert parse_assignment("x=null") == (("x",), None)
    assert parse_assignment("x=2020-01-01T00:00:00Z")[1] is not None
    assert set_path({"a": {"k": 1}}, ("a", "b", "c"), 3) == {"a": {"k": 1, "b": {"c": 3}}}
    with pytest.raises(UsageError, match="a.k is a int, not an object"):
        set_path({"a": {"k": 1}}, ("a", "k", "z"), 3)
    for bad in ("novalue", "=3", "a..b=1", "uuid=1", "supporting_arrays_paths.x=1"):
        with pytest.raises(UsageError):
            parse_assignment(bad)


def test_changed_keys_are_the_deepest_differences() -> None:
    old = {"a": {"b": 1, "c": [1, 2]}, "s": float("nan"), "uuid": "u1", "gone": 1}
    new = {"a": {"b": 2, "c": [1, 2]}, "s": float("nan"), "uuid": "u2", "new": {"x": 1}}
    assert changed_keys(old, new) == ["a.b", "gone", "new.x"]
    assert changed_keys(old, old) == []
    # a string stays a string (YAML would read 2.0 as a float); other keys get YAML's types
    assert apply_sets({"version": "1.0", "n": 1}, ["version=2.0", "n=3", "new=true"]) == \
        {"version": "2.0", "n": 3, "new": True}
    assert changed_keys({"n": 1}, {"n": 1.0}) == ["n"]  # 1 and 1.0 are different JSON


# --- the command ---------------------------------------------------------------------------------
def _lineage0(path: Path):
    with anemoi_ckpt.open(path) as ck:
        return ck.lineage.records[0]


def test_view_and_supporting_arrays(demo_file: Path) -> None:
    out = run_cli("metadata", str(demo_file), "--json")
    assert out.returncode == 0, out.stderr
    with anemoi_ckpt.open(demo_file) as ck:
        assert json.loads(out.stdout) == ck.anemoi_metadata
    out = run_cli("metadata", str(demo_file), "--supporting-arrays")
    assert out.returncode == 0, out.stderr
    assert "data/latitudes: shape=(512,) dtype=float64" in out.stdout


def test_set_writes_a_new_file_with_new_uuid_and_a_record(demo_file: Path, tmp_path: Path) -> None:
    dst = tmp_path / "edited.anc"
    before = demo_file.read_bytes()
    out = run_cli("metadata", str(demo_file), "--set", "config.training.max_epochs=7",
                  "--set", "description=hello world", "-o", str(dst))
    assert out.returncode == 0, out.stderr
    assert demo_file.read_bytes() == before  # -o never touches the input
    with anemoi_ckpt.open(demo_file) as src, anemoi_ckpt.open(dst) as ck:
        md = ck.anemoi_metadata
        assert md["config"]["training"]["max_epochs"] == 7 and md["description"] == "hello world"
        assert md["config"]["model"] == src.anemoi_metadata["config"]["model"]
        assert ck.uuid != src.uuid and md["uuid"] == ck.uuid
        assert ck.content_id == src.content_id
        for name in src.tensor_sections():  # copied, not re-encoded: same section digests
            assert ck.section(f"{name}.safetensors").digest == src.section(f"{name}.safetensors").digest
        assert arrays_equal(ck.supporting_arrays, src.supporting_arrays)
        assert ck.metadata.model_dump() == src.metadata.model_dump()
        rec = ck.lineage.records[0]
        assert rec.operation == "metadata-edit"
        assert rec.parameters == {"changed": ["config.training.max_epochs", "description"]}
        assert [p.uuid for p in rec.parents] == [src.uuid]
        assert ck.verify().ok


def test_inplace_and_load(demo_file: Path, tmp_path: Path) -> None:
    with anemoi_ckpt.open(demo_file) as ck:
        old_uuid, md = ck.uuid, dict(ck.anemoi_metadata)
    md["version"] = "9.9"
    del md["supporting_arrays_paths"]  # --load keeps the file's arrays when the JSON omits them
    src = tmp_path / "new.json"
    src.write_text(json.dumps(md))
    out = run_cli("metadata", str(demo_file), "--load", str(src), "--inplace")
    assert out.returncode == 0, out.stderr
    with anemoi_ckpt.open(demo_file) as ck:
        assert ck.anemoi_metadata["version"] == "9.9" and ck.uuid != old_uuid
        assert ck.supporting_arrays["data"]["latitudes"].shape == (512,)
        assert ck.lineage.records[0].parameters == {"changed": ["version"]}
        assert ck.verify().ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize("args, fragments", [
    (["--set", "x=1", "-o", "{existing}"], ["already exists", "--overwrite"]),
    (["--set", "x=1", "-o", "{file}"], ["already exists"]),
    (["--set", "uuid=1", "--inplace"], ["written by anemoi-ckpt itself"]),
    (["--set", "version=2.0", "--inplace"], ["changes nothing"]),
    (["--set", "config.model=3", "--inplace"], []),  # allowed: a whole object replaced
    (["--edit", "--inplace"], ["--edit needs"]),
    (["--reseal"], ["nothing to reseal"]),
    (["--load", "{missing}", "--inplace"], ["no such file"]),
])
def test_refusals_are_one_line_and_write_nothing(demo_file: Path, tmp_path: Path, args: list[str],
                                                 fragments: list[str]) -> None:
    existing = tmp_path / "existing.anc"
    existing.write_bytes(b"keep me")
    args = [a.format(existing=existing, file=demo_file, missing=tmp_path / "no.json") for a in args]
    before = demo_file.read_bytes()
    out = run_cli("metadata", str(demo_file), *args)
    if not fragments:
        assert out.returncode == 0, out.stderr
        return
    one_error_line(out, *fragments, rc=2 if "already exists" not in fragments else 1)
    assert demo_file.read_bytes() == before and existing.read_bytes() == b"keep me"


def test_usage_mistakes(demo_file: Path, tmp_path: Path) -> None:
    out = run_cli("metadata", str(demo_file), "--set", "x=1")
    assert out.returncode == 2 and "exactly one of -o OUT and --inplace" in out.stderr
    out = run_cli("metadata", str(demo_file), "--set", "x=1", "--reseal", "--inplace")
    assert out.returncode == 2 and "cannot be combined" in out.stderr


# --- a member rewritten by another zip tool --------------------------------------------------------
def _rewrite_like_anemoi_utils(path: Path, change) -> None:
    """What ``anemoi.utils.checkpoints.replace_metadata`` does (without importing it: this suite
    runs without anemoi): copy every member into a new zip, anemoi.json last, with the new JSON."""
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
        target = next(n for n in src.namelist() if n.endswith(ANEMOI_JSON))
        for name in src.namelist():
            if name != target:
                dst.writestr(name, src.read(name))
        dst.writestr(target, json.dumps(change(json.loads(src.read(target)))))
    tmp.replace(path)


def test_outside_edit_is_named_and_resealed(demo_file: Path) -> None:
    with anemoi_ckpt.open(demo_file) as ck:
        old_uuid, weights = ck.uuid, {k: v.clone() for k, v in ck.tensors("weights").items()}
        old_digest = ck.section(ANEMOI_JSON).digest
    _rewrite_like_anemoi_utils(demo_file, lambda md: {**md, "description": "fixed by hand"})

    with anemoi_ckpt.open(demo_file) as ck:  # the weights still load
        assert all((ck.tensors("weights")[k] == t).all() for k, t in weights.items())
        assert ck.edited_members() == [ANEMOI_JSON]
    out = run_cli("verify", str(demo_file))
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert err == [f"anemoi-ckpt: error: {demo_file}: section {ANEMOI_JSON}: edited outside anemoi-ckpt "
                   "(e.g. anemoi-utils metadata --inplace): run "
                   f"`anemoi-ckpt metadata {demo_file} --reseal`"]
    out = run_cli("inspect", str(demo_file))
    one_error_line(out, "edited outside anemoi-ckpt", "--reseal")

    out = run_cli("metadata", str(demo_file), "--reseal")
    assert out.returncode == 0, out.stderr
    assert run_cli("verify", str(demo_file)).returncode == 0
    with anemoi_ckpt.open(demo_file) as ck:
        assert ck.anemoi_metadata["description"] == "fixed by hand" and ck.uuid != old_uuid
        rec = ck.lineage.records[0]
        assert rec.operation == "metadata-edit" and rec.parents[0].uuid == old_uuid
        assert rec.parameters["old_digest"] == old_digest
        assert rec.parameters["new_digest"] != old_digest and rec.parameters["resealed"] is True
        assert ck.supporting_arrays["data"]["latitudes"].shape == (512,)


def test_outside_edit_dropping_the_arrays_is_refused(demo_file: Path) -> None:
    _rewrite_like_anemoi_utils(demo_file, lambda md: {k: v for k, v in md.items()
                                                      if k != "supporting_arrays_paths"})
    before = demo_file.read_bytes()
    one_error_line(run_cli("metadata", str(demo_file), "--reseal"), "no supporting_arrays_paths",
                   "put supporting_arrays_paths back")
    assert demo_file.read_bytes() == before


def test_damage_is_still_damage(demo_file: Path) -> None:
    """A changed byte breaks the zip CRC too: that is damage, never called an outside edit."""
    with anemoi_ckpt.open(demo_file) as ck:
        member = ck._members[ANEMOI_JSON]
        at = member.data_offset + member.size // 2
    data = bytearray(demo_file.read_bytes())
    data[at] = ord("x") if data[at] != ord("x") else ord("y")
    demo_file.write_bytes(bytes(data))
    out = run_cli("verify", str(demo_file))
    assert out.returncode == 1
    assert f"section {ANEMOI_JSON}: digest mismatch" in out.stderr and "edited" not in out.stderr
    one_error_line(run_cli("metadata", str(demo_file), "--reseal"), "damaged, not edited",
                   "verify", rc=1)
