"""Issue 7: ``anemoi-inference run`` makes a forecast from an ``.anc`` through the ``anc`` runner
plug-in, with no change to anemoi-inference, and the forecast is bit for bit the one the default
runner makes from the pickled original.

Everything here is the real thing: the legacy checkpoints written by anemoi-training
(``fixtures/legacy/anemoi/``), a dataset made by ``anemoi-datasets create`` from the recipe beside
them, and the installed ``anemoi-inference`` console script in a subprocess, which finds the runner
through the ``anemoi.inference.runners`` entry point group. Skipped, with the reason shown, where
anemoi-inference is not installed (the project venv); ``make test-anemoi`` installs it and runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require_module

require_module("anemoi.inference", reason="needs anemoi-inference (make test-anemoi)")
require_module("anemoi.datasets", reason="needs anemoi-datasets (make test-anemoi)")
require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from anemoi_ckpt.convert import convert  # noqa: E402

ANEMOI = FIXTURES / "legacy" / "anemoi"
MODELS = ["gnn", "graphtransformer"]
BIN = Path(sys.executable).parent
DATE = "2020-01-05T00:00:00"  # the dataset spans 2020-01-01 .. 2020-01-08T18, 6-hourly
LEAD_HOURS = 24

# Loaded first by every subprocess below (a sitecustomize.py on PYTHONPATH): torch.load raises, so
# a run that passes cannot have unpickled anything with it.
NO_TORCH_LOAD = """
import torch
def _refuse(*args, **kwargs):
    raise RuntimeError("torch.load was called")
torch.load = _refuse
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny anemoi-datasets zarr (200 points, 5 variables + 2 forcings, 6-hourly for 8 days),
    made with the same recipe the legacy checkpoints were trained on."""
    d = tmp_path_factory.mktemp("dataset")
    subprocess.run([sys.executable, str(ANEMOI / "make_synthetic_netcdf.py"), str(d / "synthetic.nc")],
                   check=True, capture_output=True)
    (d / "dataset.yaml").write_text((ANEMOI / "dataset.yaml").read_text().replace("@DATA@", str(d)))
    r = subprocess.run([str(BIN / "anemoi-datasets"), "create", "dataset.yaml", "synthetic.zarr"],
                       cwd=d, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return d / "synthetic.zarr"


def _run(tmp: Path, name: str, config: dict, guard: bool = False) -> subprocess.CompletedProcess[str]:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    if guard:
        site = tmp / f"{name}-site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(NO_TORCH_LOAD)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return subprocess.run([str(BIN / "anemoi-inference"), "run", str(cfg)], capture_output=True,
                          text=True, cwd=tmp, env=env, timeout=600)


def _forecast(dataset: Path, checkpoint: Path, runner: str, out: Path) -> dict:
    return {"checkpoint": str(checkpoint), "runner": runner, "date": DATE, "lead_time": LEAD_HOURS,
            "input": {"dataset": str(dataset)}, "output": {"netcdf": str(out)}}


def _read(path: Path) -> dict[str, np.ndarray]:
    import netCDF4

    with netCDF4.Dataset(path) as nc:
        return {name: np.asarray(var[:]) for name, var in nc.variables.items()}


@pytest.fixture(scope="module")
def pickled_forecasts(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The reference: anemoi-inference's default runner on the pickled originals (torch.load)."""
    out = {}
    for kind in MODELS:
        tmp = tmp_path_factory.mktemp(f"pickle-{kind}")
        nc = tmp / "forecast.nc"
        r = _run(tmp, "run", _forecast(dataset, ANEMOI / kind / "inference-last.ckpt", "default", nc))
        assert r.returncode == 0, r.stderr[-3000:]
        out[kind] = _read(nc)
    return out


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("source", ["inference-last.ckpt", "last.ckpt"])
def test_forecast_from_anc_matches_pickled_original(kind: str, source: str, dataset: Path,
                                                    pickled_forecasts: dict, tmp_path: Path) -> None:
    anc = tmp_path / "model.anc"
    convert(ANEMOI / kind / source, anc)
    nc = tmp_path / "forecast.nc"
    r = _run(tmp_path, "run", _forecast(dataset, anc, "anc", nc), guard=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "without unpickling" in r.stderr

    got, expected = _read(nc), pickled_forecasts[kind]
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert np.array_equal(got[name], expected[name], equal_nan=True), name
    # a real forecast: the initial state plus one field per 6 h step, and the model moved it
    assert got["time"].shape == (1 + LEAD_HOURS // 6,)
    assert not np.array_equal(got["2t"][0], got["2t"][-1])


def test_anc_runner_refuses_a_pickle(dataset: Path, tmp_path: Path) -> None:
    r = _run(tmp_path, "run", _forecast(dataset, ANEMOI / "gnn" / "inference-last.ckpt", "anc",
                                         tmp_path / "forecast.nc"), guard=True)
    assert r.returncode != 0
    assert "runner 'anc' loads .anc files only" in r.stderr
    assert "anemoi-ckpt convert" in r.stderr
    assert "torch.load was called" not in r.stderr


def test_anemoi_inference_reads_anc_metadata(tmp_path: Path) -> None:
    """anemoi-inference's own metadata commands work on an .anc unchanged."""
    anc = tmp_path / "model.anc"
    convert(ANEMOI / "gnn" / "inference-last.ckpt", anc)
    r = subprocess.run([str(BIN / "anemoi-inference"), "inspect", "--variables", str(anc)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for var in ("2t", "msl", "10u", "cos_latitude"):
        assert var in r.stdout
