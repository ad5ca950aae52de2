"""anemoi's own metadata tools read an .anc unchanged (the real anemoi-utils, not a copy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import anemoi_ckpt
from tests.conftest import arrays_equal

checkpoints = pytest.importorskip("anemoi.utils.checkpoints")


def test_load_metadata_with_supporting_arrays(demo_file: Path) -> None:
    md, arrays = checkpoints.load_metadata(str(demo_file), supporting_arrays=True)
    with anemoi_ckpt.open(demo_file) as ck:
        assert md == ck.anemoi_metadata
        assert md["uuid"] == ck.uuid
        assert arrays_equal(arrays, ck.supporting_arrays)
    assert arrays["data"]["latitudes"].dtype == np.float64 and arrays["data"]["latitudes"].shape == (512,)
    assert checkpoints.has_metadata(str(demo_file))


def test_flat_arrays_and_metadata_verbatim(tmp_path: Path) -> None:
    md = {"version": "1.0", "config": {"a": [1, 2, {"b": None}]}, "nan": float("nan"), "é": "ü"}
    arrays = {"latitudes": np.linspace(-90, 90, 7), "mask": np.array([True, False]),
              "grid": np.arange(12, dtype=np.int32).reshape(3, 4)}
    path = tmp_path / "flat.anc"
    anemoi_ckpt.save(path, {"w": torch.ones(1)}, anemoi_metadata=md, supporting_arrays=arrays)
    got, got_arrays = checkpoints.load_metadata(str(path), supporting_arrays=True)
    assert got["config"] == md["config"] and got["é"] == "ü" and np.isnan(got["nan"])
    assert arrays_equal(got_arrays, arrays)
    assert got["supporting_arrays_paths"]["grid"] == {"path": "flat/anemoi-metadata/grid.numpy",
                                                      "shape": [3, 4], "dtype": "int32"}


def test_layout_matches_anemoi_utils_save_metadata(tmp_path: Path) -> None:
    """anemoi-utils' own writer, appending to a one-folder zip, produces the same member names and
    supporting_arrays_paths as ours."""
    import zipfile

    arrays = {"data": {"latitudes": np.zeros(3), "longitudes": np.ones(3)}}
    ours = tmp_path / "ours.anc"
    anemoi_ckpt.save(ours, {}, anemoi_metadata={"version": "2.0"}, supporting_arrays=arrays)
    theirs = tmp_path / "ours-ref.zip"
    with zipfile.ZipFile(theirs, "w") as zf:
        zf.writestr("ours/placeholder", b"")
    checkpoints.save_metadata(str(theirs), {"version": "2.0"}, supporting_arrays=arrays)
    ref_md = checkpoints.load_metadata(str(theirs))
    with anemoi_ckpt.open(ours) as ck:
        assert ck.anemoi_metadata["supporting_arrays_paths"] == ref_md["supporting_arrays_paths"]
    with zipfile.ZipFile(theirs) as a, zipfile.ZipFile(ours) as b:
        theirs_names = {n for n in a.namelist() if "anemoi-metadata" in n}
        assert theirs_names <= set(b.namelist())


def test_anemoi_utils_cli_reads_it(demo_file: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "anemoi.utils", "metadata", str(demo_file), "--dump",
                          "--json"], capture_output=True, text=True)
    if out.returncode != 0 and "invalid choice" in out.stderr:
        pytest.skip("this anemoi-utils has no 'metadata' command")
    assert out.returncode == 0, out.stderr
    assert '"metadata_inference"' in out.stdout
