"""Real anemoi-datasets zarrs for the tests, made with the real ``anemoi-datasets create`` CLI.

``make_zarr(dir, dynamics=..., start=..., end=...)`` writes the synthetic NetCDF with
fixtures/legacy/anemoi/make_synthetic_netcdf.py and builds a dataset from a recipe like
fixtures/legacy/anemoi/dataset.yaml (the NetCDF joined with the computed forcings cos_latitude and
insolation: 7 variables, 6-hourly). ``"fixture"`` dynamics are the weather the committed anemoi
fixtures were trained on; ``"finetune"`` dynamics differ visibly (other advection, a regional
oscillation) on the same 10 x 20 grid, by default over 2020-02-01..2020-02-20 so there are training
and held-out validation dates. ``session_zarr`` caches each distinct dataset for the process
(wrap it in a session fixture); ``wrong_specs`` gives the datasets a model must refuse.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
ANEMOI_FIXTURES = REPO / "fixtures" / "legacy" / "anemoi"
MAKE_NETCDF = ANEMOI_FIXTURES / "make_synthetic_netcdf.py"
RECIPE = ANEMOI_FIXTURES / "dataset.yaml"

#: the periods of each dynamics when none is given
DEFAULT_PERIODS = {"fixture": ("2020-01-01T00:00:00", "2020-01-08T18:00:00"),
                   "finetune": ("2020-02-01T00:00:00", "2020-02-20T18:00:00")}


def _bin(name: str) -> str:
    """A console script of the running venv (``sys.executable``'s folder, not PATH)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the anemoi venv has no {name}")
    return str(path)


def recipe(netcdf: Path, start: str, end: str, frequency: str = "6h") -> dict[str, Any]:
    """fixtures/legacy/anemoi/dataset.yaml on ``netcdf`` over ``start..end``."""
    text = RECIPE.read_text().replace("@DATA@/synthetic.nc", str(netcdf))
    rec = yaml.safe_load(text)
    rec["dates"] = {"start": start, "end": end, "frequency": frequency}
    return rec


def make_zarr(tmp_dir: str | os.PathLike, *, dynamics: str = "fixture", start: str | None = None,
              end: str | None = None, grid: str = "10x20", name: str | None = None) -> Path:
    """Build ``<tmp_dir>/<name>.zarr`` with ``anemoi-datasets create``; returns its path."""
    if dynamics not in DEFAULT_PERIODS:
        raise ValueError(f"dynamics must be one of {sorted(DEFAULT_PERIODS)}, not {dynamics!r}")
    start = start or DEFAULT_PERIODS[dynamics][0]
    end = end or DEFAULT_PERIODS[dynamics][1]
    name = name or f"{dynamics}-{grid}-{start}-{end}".replace(":", "")
    work = Path(tmp_dir)
    work.mkdir(parents=True, exist_ok=True)
    netcdf, rec_path, zarr = work / f"{name}.nc", work / f"{name}.yaml", work / f"{name}.zarr"
    subprocess.run([sys.executable, str(MAKE_NETCDF), str(netcdf), "--dynamics", dynamics,
                    "--start", start, "--end", end, "--grid", grid],
                   check=True, capture_output=True, text=True, timeout=300)
    rec_path.write_text(yaml.safe_dump(recipe(netcdf, start, end)))
    out = subprocess.run([_bin("anemoi-datasets"), "create", str(rec_path), str(zarr)],
                         cwd=work, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"anemoi-datasets create failed for {rec_path}:\n{out.stderr[-4000:]}")
    return zarr


_CACHE: dict[tuple[Any, ...], Path] = {}


def session_zarr(tmp_path_factory: Any, **kwargs: Any) -> Path:
    """``make_zarr`` once per process and argument set, in a pytest ``tmp_path_factory`` folder."""
    key = tuple(sorted(kwargs.items()))
    if key not in _CACHE or not _CACHE[key].exists():
        _CACHE[key] = make_zarr(tmp_path_factory.mktemp("anemoi-datasets"), **kwargs)
    return _CACHE[key]


def wrong_specs(zarr: str | os.PathLike, other_grid_zarr: str | os.PathLike | None = None
                ) -> dict[str, Any]:
    """``data.dataset`` values a model trained on the fixture data must refuse, each with the words
    its one-line refusal holds: a variable dropped, 12-hourly, (given a zarr built with another
    ``grid``) another grid."""
    specs: dict[str, Any] = {
        "missing_variable": ({"dataset": str(zarr), "drop": ["msl", "10v"]}, "lacks variables 10v, msl"),
        "frequency": ({"dataset": str(zarr), "frequency": "12h"}, "frequency of 12h"),
    }
    if other_grid_zarr is not None:
        specs["grid"] = (str(other_grid_zarr), "grid of")
    return specs
