"""Real anemoi-utils editing an ``.anc`` converted from the genuine anemoi-training 0.17.1 fixture:
``anemoi-utils metadata --load --inplace`` (and ``replace_metadata``), then ``verify`` naming the
edit and its remedy, the weights still loading, ``anemoi-ckpt metadata --reseal`` recording it;
and ``anemoi-utils metadata --supporting-arrays``, which fails on the per-dataset arrays that
anemoi-training 0.17 writes, in the original ``.ckpt`` just as in the ``.anc``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

checkpoints = pytest.importorskip("anemoi.utils.checkpoints")

import anemoi_ckpt  # noqa: E402
from tests.conftest import arrays_equal, one_error_line, run_cli  # noqa: E402

FIXTURE = Path(__file__).parent.parent / "fixtures/legacy/anemoi/gnn/inference-last.ckpt"
ANEMOI_JSON = "anemoi-metadata/anemoi.json"
UTILS = [os.path.join(os.path.dirname(sys.executable), "anemoi-utils"), "metadata"]


@pytest.fixture
def anc(tmp_path: Path) -> Path:
    dst = tmp_path / "model.anc"
    out = run_cli("convert", str(FIXTURE), str(dst))
    assert out.returncode == 0, out.stderr
    return dst


def _utils(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UTILS, *args], capture_output=True, text=True, timeout=120)


def test_utils_load_inplace_then_reseal(anc: Path, tmp_path: Path) -> None:
    with anemoi_ckpt.open(anc) as ck:
        old_uuid, old_digest = ck.uuid, ck.section(ANEMOI_JSON).digest
        weights = {k: v.clone() for k, v in ck.tensors("weights").items()}
        arrays = {k: {n: a.copy() for n, a in v.items()} for k, v in ck.supporting_arrays.items()}
    # the anemoi user's way: dump, edit, load back in place
    dump = _utils("--dump", str(anc), "--json")
    assert dump.returncode == 0, dump.stderr
    md = json.loads(dump.stdout)
    md["config"]["training"]["max_epochs"] = 99
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(md))
    out = _utils("--load", "--input", str(edited), "--inplace", str(anc))
    assert out.returncode == 0, out.stderr

    with anemoi_ckpt.open(anc) as ck:  # the weights still load, bit for bit
        assert ck.tensors("weights").keys() == weights.keys()
        assert all((ck.tensors("weights")[k] == t).all() for k, t in weights.items())
    out = run_cli("verify", str(anc))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"anemoi-ckpt: error: {anc}: section {ANEMOI_JSON}: edited outside anemoi-ckpt (e.g. "
        f"anemoi-utils metadata --inplace): run `anemoi-ckpt metadata {anc} --reseal`"]
    assert "weights.safetensors                      ok" in out.stdout

    out = run_cli("metadata", str(anc), "--reseal")
    assert out.returncode == 0, out.stderr
    out = run_cli("verify", str(anc))
    assert out.returncode == 0, out.stdout + out.stderr
    with anemoi_ckpt.open(anc) as ck:
        assert ck.uuid != old_uuid
        assert ck.anemoi_metadata["config"]["training"]["max_epochs"] == 99
        assert arrays_equal(ck.supporting_arrays, arrays)
        rec = ck.lineage.records[0]
        assert rec.operation == "metadata-edit" and rec.parents[0].uuid == old_uuid
        assert rec.parameters["old_digest"] == old_digest
        assert rec.parameters["new_digest"] not in (old_digest, ck.section(ANEMOI_JSON).digest)
        assert [r.uuid for r in ck.lineage.records[1:]][:1] == [old_uuid]
    # and anemoi-utils reads the resealed file as before, with its new uuid
    md2, arrays2 = checkpoints.load_metadata(str(anc), supporting_arrays=True)
    assert md2["config"]["training"]["max_epochs"] == 99 and md2["uuid"] == rec.uuid
    assert arrays_equal(arrays2, arrays)


def test_replace_metadata_python_api_then_reseal(anc: Path) -> None:
    md = checkpoints.load_metadata(str(anc))
    md["description"] = "set with replace_metadata"
    checkpoints.replace_metadata(str(anc), md)
    with anemoi_ckpt.open(anc) as ck:
        assert ck.edited_members() == [ANEMOI_JSON]
    one_error_line(run_cli("inspect", str(anc)), "edited outside anemoi-ckpt", "--reseal")
    assert run_cli("metadata", str(anc), "--reseal").returncode == 0
    assert run_cli("verify", str(anc)).returncode == 0
    assert checkpoints.load_metadata(str(anc))["description"] == "set with replace_metadata"


def test_our_edit_is_read_by_anemoi_utils(anc: Path, tmp_path: Path) -> None:
    dst = tmp_path / "set.anc"
    out = run_cli("metadata", str(anc), "--set", "config.training.max_epochs=5", "-o", str(dst))
    assert out.returncode == 0, out.stderr
    md, arrays = checkpoints.load_metadata(str(dst), supporting_arrays=True)
    assert md["config"]["training"]["max_epochs"] == 5
    assert arrays["data"]["latitudes"].shape == (200,)


def test_supporting_arrays_listing(anc: Path) -> None:
    """anemoi-utils' --supporting-arrays prints ``array.shape`` of each top-level entry; the
    arrays anemoi-training 0.17 writes are per dataset ({"data": {"latitudes": ...}}), so it fails
    on the genuine .ckpt exactly as on the .anc: not a layout we could change without breaking
    anemoi-inference. ``anemoi-ckpt metadata FILE --supporting-arrays`` lists them."""
    for path in (FIXTURE, anc):
        out = _utils("--supporting-arrays", str(path))
        assert out.returncode != 0 and "'dict' object has no attribute 'shape'" in out.stderr
    out = run_cli("metadata", str(anc), "--supporting-arrays")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["data/latitudes: shape=(200,) dtype=float64",
                                       "data/longitudes: shape=(200,) dtype=float64"]
