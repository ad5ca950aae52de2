"""``export --format anemoi-ckpt``: the pickled ``inference-*.ckpt`` for sites without the ``anc``
runner. The real ``anemoi-inference run`` with its default runner (``torch.load``) forecasts from
the export exactly as the ``anc`` runner forecasts from the ``.anc`` it came from; the anemoi
metadata and supporting arrays sit in the zip where anemoi-utils puts them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import arrays_equal, one_error_line, require_module, run_cli

require_module("anemoi.inference", reason="needs anemoi-inference (make test-anemoi)")
require_module("anemoi.datasets", reason="needs anemoi-datasets (make test-anemoi)")
require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")

import numpy as np  # noqa: E402
from anemoi.utils.checkpoints import load_metadata  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from tests.test_anemoi_inference import ANEMOI, MODELS, _forecast, _read, _run, dataset  # noqa: E402,F401


@pytest.mark.parametrize("kind", MODELS)
def test_default_runner_forecasts_from_the_export(kind: str, dataset: Path, tmp_path: Path) -> None:
    anc = tmp_path / "model.anc"
    convert(ANEMOI / kind / "inference-last.ckpt", anc)
    ckpt = tmp_path / "inference-model.ckpt"
    r = run_cli("export", str(anc), str(ckpt))  # the format from the .ckpt suffix
    assert r.returncode == 0, r.stderr
    assert "(anemoi-ckpt, inference-model.ckpt" in r.stdout

    # anemoi's metadata and arrays, where anemoi-training's save_metadata puts them
    md, arrays = load_metadata(str(ckpt), supporting_arrays=True)
    with anemoi_ckpt.open(anc) as ck:
        paths = md.pop("supporting_arrays_paths")  # save_metadata records where it put them
        assert md == {k: v for k, v in ck.anemoi_metadata.items() if k != "supporting_arrays_paths"}
        assert paths["data"]["latitudes"]["path"] == "inference-model/anemoi-metadata/data/latitudes.numpy"
        assert arrays_equal(arrays, ck.supporting_arrays) and arrays

    r = _run(tmp_path, "pickle", _forecast(dataset, ckpt, "default", tmp_path / "pickle.nc"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run(tmp_path, "anc", _forecast(dataset, anc, "anc", tmp_path / "anc.nc"), guard=True)
    assert r.returncode == 0, r.stderr[-3000:]
    got, expected = _read(tmp_path / "pickle.nc"), _read(tmp_path / "anc.nc")
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert np.array_equal(got[name], expected[name], equal_nan=True), name
    assert not np.array_equal(got["2t"][0], got["2t"][-1])  # the model moved the state


def test_anemoi_export_refuses_a_section(tmp_path: Path) -> None:
    anc = tmp_path / "model.anc"
    convert(ANEMOI / "gnn" / "inference-last.ckpt", anc)
    r = run_cli("export", str(anc), str(tmp_path / "inference-x.ckpt"), "--section", "buffers")
    one_error_line(r, "--format anemoi-ckpt exports the whole model", rc=2)
    assert not (tmp_path / "inference-x.ckpt").exists()


def test_anemoi_export_keeps_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "inference-x.ckpt"
    out.write_bytes(b"keep")
    r = run_cli("export", str(tmp_path / "absent.anc"), str(out))
    one_error_line(r, "exists", "--overwrite")
    assert out.read_bytes() == b"keep"
