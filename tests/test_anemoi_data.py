"""Real anemoi-datasets data for the trainer, checked against the base file's own metadata.

The base model is the committed anemoi-training 0.17.1 graphtransformer fixture converted to an
``.anc``; the datasets are real zarrs made by ``anemoi-datasets create`` (tests/anemoi_datasets.py).
Every window is compared with what ``open_dataset(...)[i]`` returns, looked up by variable name.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, require_module

require_module("anemoi.datasets", "needs anemoi-datasets (make test-anemoi)")

import anemoi.datasets  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from anemoi.datasets import open_dataset  # noqa: E402

import anemoi_ckpt  # noqa: E402
from anemoi_ckpt.errors import FormatError  # noqa: E402
from anemoi_ckpt.trainer.anemoi.data import (  # noqa: E402
    AnemoiWindows, date_interval, train_and_validation)
from anemoi_ckpt.trainer.anemoi.info import ModelData  # noqa: E402
from anemoi_ckpt.trainer.config import ConfigError  # noqa: E402
from tests.anemoi_datasets import session_zarr, wrong_specs  # noqa: E402

FIXTURE = REPO / "fixtures" / "legacy" / "anemoi" / "graphtransformer" / "last.ckpt"
ORDER = ["10u", "10v", "2t", "cos_latitude", "insolation", "msl", "tp"]
H6 = datetime.timedelta(hours=6)


@pytest.fixture(scope="module")
def base_anc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base") / "base.anc"
    cli = Path(sys.executable).parent / "anemoi-ckpt"
    subprocess.run([str(cli), "convert", str(FIXTURE), str(out)], check=True, capture_output=True,
                   timeout=300)
    return out


@pytest.fixture(scope="module")
def model(base_anc: Path) -> ModelData:
    return ModelData.from_anc(base_anc)


@pytest.fixture(scope="module")
def finetune_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_zarr(tmp_path_factory, dynamics="finetune")


@pytest.fixture(scope="module")
def other_grid_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return session_zarr(tmp_path_factory, dynamics="finetune", grid="8x16",
                        start="2020-02-01T00:00:00", end="2020-02-03T18:00:00")


def refused(exc_type: type, fn, *args, **kwargs) -> str:
    """The one-line message ``fn`` is refused with."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    line = info.value.line()
    assert "\n" not in line and "Traceback" not in line
    return line


def expected_window(zarr_path: Path, dates: list[str], spec=None) -> np.ndarray:
    """(T, E, G, V) straight from open_dataset, each variable looked up by name in ORDER."""
    ds = open_dataset(spec or str(zarr_path))
    index = {str(np.datetime64(d, "s")): i for i, d in enumerate(ds.dates)}
    rows = [ds[index[d]] for d in dates]  # (V, E, G) each
    return np.stack([np.stack([r[ds.name_to_index[v]] for v in ORDER], axis=-1) for r in rows])


# ---------------------------------------------------------------- the model's data contract

def test_model_data_from_the_real_metadata(model: ModelData, base_anc: Path) -> None:
    with anemoi_ckpt.open(base_anc) as ck:
        md = ck.anemoi_metadata
    assert model.dataset == "data"
    assert list(model.variables) == ORDER
    # the model's order covers exactly the variables of the dataset it was trained on
    assert list(model.variables) == md["dataset"]["data"]["variables"]
    assert model.grid_size == 200 == len(model.latitudes) == len(model.longitudes)
    assert (model.frequency, model.timestep, model.stride) == (H6, H6, 1)
    assert (model.multistep_input, model.multistep_output) == (2, 1)
    assert model.source == str(base_anc)


def test_model_data_refuses_what_it_cannot_read(base_anc: Path) -> None:
    with anemoi_ckpt.open(base_anc) as ck:
        md, arrays = ck.anemoi_metadata, ck.supporting_arrays
    two = copy.deepcopy(md)
    two["data_indices"]["era5"] = two["data_indices"]["data"]
    assert "2 datasets (data, era5)" in refused(FormatError, ModelData.from_metadata, two, "b.anc", arrays)
    none = {k: v for k, v in md.items() if k != "config"}
    assert refused(FormatError, ModelData.from_metadata, none, "b.anc").startswith("b.anc: ")
    broken = copy.deepcopy(md)
    broken["data_indices"]["data"]["data"]["input"]["name_to_index"]["tp"] = 9
    assert "not a permutation" in refused(FormatError, ModelData.from_metadata, broken, "b.anc", arrays)
    bad_step = copy.deepcopy(md)
    bad_step["config"]["task"]["timestep"] = "9h"
    assert "not a multiple" in refused(FormatError, ModelData.from_metadata, bad_step, "b.anc", arrays)


# ---------------------------------------------------------------- windows carry the zarr's values

def test_windows_carry_the_zarrs_values_in_the_models_order(model, finetune_zarr) -> None:
    w = AnemoiWindows(str(finetune_zarr), model, start="2020-02-01", end="2020-02-14", rollout=2)
    assert len(w) == 14 * 4 - 3  # 56 dates, windows of 4 consecutive ones
    assert w.dates(0) == ["2020-02-01T00:00:00", "2020-02-01T06:00:00", "2020-02-01T12:00:00",
                          "2020-02-01T18:00:00"]
    assert w.dates(len(w) - 1)[-1] == "2020-02-14T18:00:00"
    for i in (0, 17, len(w) - 1):
        x = w[i]
        assert x.dtype == torch.float32 and x.shape == (4, 1, 200, 7)
        np.testing.assert_array_equal(x.numpy(), expected_window(finetune_zarr, w.dates(i)))
    assert torch.equal(w[-1], w[len(w) - 1])
    with pytest.raises(IndexError):
        w[len(w)]


def test_variables_are_picked_by_name_whatever_the_datasets_order(model, finetune_zarr) -> None:
    spec = {"dataset": str(finetune_zarr), "reorder": list(reversed(ORDER))}
    w = AnemoiWindows(spec, model, start="2020-02-03", end="2020-02-04")
    assert open_dataset(spec).variables == list(reversed(ORDER))
    plain = AnemoiWindows(str(finetune_zarr), model, start="2020-02-03", end="2020-02-04")
    assert torch.equal(w[3], plain[3])
    np.testing.assert_array_equal(w[3].numpy(), expected_window(finetune_zarr, w.dates(3), spec))


def test_finetune_weather_differs_visibly_from_the_fixtures(model, finetune_zarr, tmp_path_factory) -> None:
    """Same grid, variables and dates; other dynamics: far apart beyond the noise (0.5 K, 50 Pa)."""
    fixture = session_zarr(tmp_path_factory, dynamics="fixture", start="2020-02-01T00:00:00",
                           end="2020-02-03T18:00:00")
    a = AnemoiWindows(str(fixture), model, start="2020-02-02", end="2020-02-03")
    b = AnemoiWindows(str(finetune_zarr), model, start="2020-02-02", end="2020-02-03")
    assert a.dates(2) == b.dates(2)
    diff = (a[2] - b[2]).abs().mean(dim=(0, 1, 2))
    assert diff[ORDER.index("2t")] > 2.0 and diff[ORDER.index("msl")] > 200.0
    # the forcings are computed from the dates and the grid alone, so they agree
    assert torch.allclose(a[2][..., ORDER.index("insolation")], b[2][..., ORDER.index("insolation")])


def test_a_timestep_of_several_dataset_steps_reads_with_a_stride(model, finetune_zarr) -> None:
    twelve = dataclasses.replace(model, timestep=datetime.timedelta(hours=12))
    w = AnemoiWindows(str(finetune_zarr), twelve, start="2020-02-01", end="2020-02-02", rollout=1)
    assert w.dates(0) == ["2020-02-01T00:00:00", "2020-02-01T12:00:00", "2020-02-02T00:00:00"]
    assert len(w) == 8 - 4  # first dates 00, 06, 12 and 18 on the 1st
    np.testing.assert_array_equal(w[1].numpy(), expected_window(finetune_zarr, w.dates(1)))


# ---------------------------------------------------------------- refusals, one line each

def test_wrong_datasets_are_refused_with_one_line(model, finetune_zarr, other_grid_zarr) -> None:
    for kind, (spec, words) in wrong_specs(finetune_zarr, other_grid_zarr).items():
        line = refused(ConfigError, AnemoiWindows, spec, model)
        assert words in line and str(finetune_zarr if kind != "grid" else other_grid_zarr) in line, line
        assert str(model.source) in line
    assert "grid of 128 points" in refused(ConfigError, AnemoiWindows, str(other_grid_zarr), model)
    assert "200" in refused(ConfigError, AnemoiWindows, str(other_grid_zarr), model)
    assert "frequency of 12h" in refused(ConfigError, AnemoiWindows,
                                         {"dataset": str(finetune_zarr), "frequency": "12h"}, model)
    shifted = dataclasses.replace(model, longitudes=tuple(x + 9.0 for x in model.longitudes))
    assert "other coordinates" in refused(ConfigError, AnemoiWindows, str(finetune_zarr), shifted)
    line = refused(ConfigError, AnemoiWindows, str(finetune_zarr.parent / "absent.zarr"), model)
    assert "cannot open" in line and "absent.zarr" in line


def test_dates_outside_the_dataset_or_too_few_are_refused(model, finetune_zarr) -> None:
    z = str(finetune_zarr)
    line = refused(ConfigError, AnemoiWindows, z, model, start="2020-01-31", end="2020-02-05")
    assert "start 2020-01-31 is outside" in line and "2020-02-01T00:00:00 to 2020-02-20T18:00:00" in line
    assert "end 2020-02-21" in refused(ConfigError, AnemoiWindows, z, model, start="2020-02-10",
                                       end="2020-02-21")
    assert "end 2020-02" in refused(ConfigError, AnemoiWindows, z, model, end="2020-02")  # whole month
    assert "too few for one window" in refused(ConfigError, AnemoiWindows, z, model,
                                               start="2020-02-05T00:00:00", end="2020-02-05T06:00:00")
    assert "after end" in refused(ConfigError, AnemoiWindows, z, model, start="2020-02-06",
                                  end="2020-02-05")
    assert "not a date" in refused(ConfigError, AnemoiWindows, z, model, start="soon")
    assert "holds start" in refused(ConfigError, AnemoiWindows, {"dataset": z, "start": "2020"}, model)
    # the last instant of the data is inside: a whole last day and its exact last date are accepted
    assert len(AnemoiWindows(z, model, start="2020-02-20", end="2020-02-20T18:00:00")) == 2


def test_training_and_validation_periods(model, finetune_zarr) -> None:
    z = str(finetune_zarr)
    train, val = train_and_validation(z, model, start="2020-02-01", end="2020-02-14",
                                      validation={"start": "2020-02-15", "end": "2020-02-20"})
    assert train.dates(len(train) - 1)[-1] == "2020-02-14T18:00:00"
    assert val.dates(0)[0] == "2020-02-15T00:00:00" and len(val) == 6 * 4 - 2
    assert not set(train.dates(len(train) - 1)) & set(val.dates(0))
    line = refused(ConfigError, train_and_validation, z, model, start="2020-02-01", end="2020-02-14",
                   validation={"start": "2020-02-14T18:00:00", "end": "2020-02-20"})
    assert "overlaps the training period" in line
    assert "outside" in refused(ConfigError, train_and_validation, z, model, start="2020-02-01",
                                end="2020-02-14", validation={"start": "2020-02-15", "end": "2020-03-01"})
    assert train_and_validation(z, model, start="2020-02-01", end="2020-02-02", validation=None)[1] is None


def test_date_interval_means_what_anemoi_datasets_means() -> None:
    day = datetime.timedelta(days=1) - datetime.timedelta(microseconds=1)
    assert date_interval("2020-02-14") == (datetime.datetime(2020, 2, 14), datetime.datetime(2020, 2, 14) + day)
    assert date_interval(datetime.date(2020, 2, 14)) == date_interval(20200214)
    assert date_interval("2020-02")[1] == datetime.datetime(2020, 2, 29) + day  # leap year
    assert date_interval(2020)[1] == datetime.datetime(2020, 12, 31) + day
    t = datetime.datetime(2020, 2, 14, 6)
    assert date_interval("2020-02-14T06:00:00") == (t, t) == date_interval(t)
    for bad in ("2020-13", "14/02/2020", 1.5):
        with pytest.raises(ValueError):
            date_interval(bad)


# ---------------------------------------------------------------- lineage

def test_describe_says_what_was_read(model, finetune_zarr) -> None:
    spec = {"dataset": str(finetune_zarr), "reorder": list(reversed(ORDER))}
    w = AnemoiWindows(spec, model, start="2020-02-01", end="2020-02-14", rollout=1)
    d = json.loads(json.dumps(w.describe()))
    assert d["dataset"] == spec and (d["start"], d["end"]) == ("2020-02-01", "2020-02-14")
    assert d["first_window"] == ["2020-02-01T00:00:00", "2020-02-01T06:00:00", "2020-02-01T12:00:00"]
    assert d["last_window"][-1] == "2020-02-14T18:00:00" and d["n_samples"] == len(w) == 54
    assert (d["frequency"], d["timestep"], d["rollout"], d["multistep_input"]) == ("6h", "6h", 1, 2)
    assert d["variables"] == ORDER and (d["grid_size"], d["ensembles"]) == (200, 1)
    assert d["anemoi_datasets_version"] == anemoi.datasets.__version__
    assert d["uuid"] == zarr.open(str(finetune_zarr), mode="r").attrs["uuid"]
    assert (d["first_date"], d["last_date"]) == ("2020-02-01T00:00:00", "2020-02-14T18:00:00")


def test_the_module_imports_without_anemoi_datasets(model, finetune_zarr) -> None:
    """The CLI validates a configuration without anemoi-datasets; opening data then says what to
    install, in one line."""
    code = (
        "import sys; sys.modules['anemoi.datasets'] = None\n"
        "from anemoi_ckpt.trainer.anemoi.data import AnemoiWindows\n"
        "from anemoi_ckpt.trainer.anemoi.info import ModelData\n"
        "from anemoi_ckpt.trainer.config import ConfigError\n"
        f"m = ModelData.from_anc({model.source!r})\n"
        "try:\n"
        f"    AnemoiWindows({str(finetune_zarr)!r}, m)\n"
        "except ConfigError as e:\n"
        "    print(e.line())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(install anemoi-datasets (pip install anemoi-ckpt[anemoi] anemoi-datasets))")
    assert len(out.stdout.strip().splitlines()) == 1
