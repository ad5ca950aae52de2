"""Issue 17: the trainer's loss for a base of any release equals that release's own training loss.

Every release since 2024 (0.2.2 .. 0.16.0) recorded its loss in its own layout (``loss_scaling``,
``variable_loss_scaling`` + ``node_loss_weights``, ``training_loss`` + ``scalers``).
``fixtures/legacy/anemoi/record_loss.py`` ran each release's own training step (its Lightning
module rebuilt from its ``last.ckpt``, in that release's environment) on a fixed batch of the
dataset it trained on and wrote ``<release>/<model>/loss.npz``. Here each ``last.ckpt`` is converted
to ``.anc``, the model built by today's anemoi-models, the objective built from the file's recorded
training config, and the loss on the same batch compared for rollout 1 and 2. Runs in
``make test-anemoi``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require_module

require_module("anemoi.models", reason="needs anemoi-models (make test-anemoi)")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from anemoi_ckpt.reader import Checkpoint  # noqa: E402
from anemoi_ckpt.trainer.anemoi import legacy_loss as LL  # noqa: E402
from anemoi_ckpt.trainer.anemoi.objective import (  # noqa: E402
    ForecastObjective, build_loss_weights)
from anemoi_ckpt.trainer.config import ConfigError  # noqa: E402

ANEMOI = FIXTURES / "legacy" / "anemoi"
RELEASES = ["0.2.2", "0.3.3", "0.5.1", "0.6.7", "0.8.1", "0.10.0", "0.12.1", "0.14.0", "0.16.0"]
LAYOUTS = {"0.2.2": "loss_scaling", "0.3.3": "variable_loss_scaling"}  # the rest: "scalers"
CELLS = sorted(str(p.parent.relative_to(ANEMOI)) for p in ANEMOI.glob("*/*/loss.npz"))


def test_every_release_has_recorded_losses() -> None:
    """gnn and graphtransformer of every release at least: a missing file fails, never skips."""
    for release in RELEASES:
        for model in ("gnn", "graphtransformer"):
            assert f"{release}/{model}" in CELLS, f"{release}/{model}/loss.npz missing (record_loss.py)"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory):
    cache: dict[str, Path] = {}

    def get(cell: str) -> Path:
        if cell not in cache:
            out = tmp_path_factory.mktemp(cell.replace("/", "-")) / "last.anc"
            convert(ANEMOI / cell / "last.ckpt", out)
            cache[cell] = out
        return cache[cell]
    return get


@pytest.mark.parametrize("cell", CELLS)
def test_loss_equals_the_release_training_step(cell: str, converted) -> None:
    release = cell.split("/")[0]
    rec = np.load(ANEMOI / cell / "loss.npz")
    assert str(rec["release"]) == release
    path = converted(cell)
    interface = load_model(path)
    with Checkpoint(path) as ck:
        objective = ForecastObjective.from_checkpoint(ck, interface)
    w = objective.weights["data"]
    assert w.sources["release"] == release
    assert w.sources["layout"].startswith(LAYOUTS.get(release, "scalers"))
    assert w.sources["node_source"][0]["graph"] == "data.area_weight"  # the graph's, not a fallback

    # the batch's variables are the dataset's, in the order the model's indices were made from
    n2i = interface.data_indices["data"].name_to_index
    assert list(rec["variables"]) == sorted(n2i, key=n2i.get)
    batch = torch.from_numpy(rec["batch"])
    n1 = objective.steps_needed(1)
    for rollout, b in ((1, batch[:, :n1]), (2, batch)):
        ours = objective.evaluate(interface, b, rollout=rollout)
        theirs = float(rec[f"loss_rollout{rollout}"])
        assert ours == pytest.approx(theirs, rel=1e-5, abs=0), f"{cell} rollout {rollout}"
    # rollout 2 is not rollout 1 again: the recorded numbers tell the steps apart
    assert float(rec["loss_rollout2"]) != pytest.approx(float(rec["loss_rollout1"]), rel=1e-3)


# ------------------------------------------------------------------ what each layout computes

def _md(cell: str, converted) -> tuple[dict, object]:
    path = converted(cell)
    with Checkpoint(path) as ck:
        return copy.deepcopy(ck.anemoi_metadata), load_model(path)


def test_table_layouts_weight_pressure_levels_by_name() -> None:
    """0.2-0.4: ``pl[param] * scaler(level)`` for ``<param>_<level>`` names, ``sfc[name]`` for the
    rest, ``default`` otherwise (a level variable whose param is not in ``pl`` is not level-scaled);
    the scaler's ``minimum`` is the floor of the Relu (anemoi-training 0.2.2 data/scaling.py)."""
    names = ["t_500", "t_100", "q_850", "z_1000", "2t", "10u", "tp", "foo_3", "bar"]
    table = {"default": 2.0, "pl": {"t": 6, "q": 0.6, "z": 12}, "sfc": {"10u": 0.1, "tp": 0.025}}
    relu = {"_target_": "anemoi.training.data.scaling.ReluPressureLevelScaler", "minimum": 0.2,
            "slope": 0.001}
    ctx = LL.Context({}, {}, "data", tuple(names), (0, 2, 2))
    w = LL.table_variable_weights(names, table, relu, ctx)
    expected = [6 * 0.5, 6 * 0.2, 0.6 * 0.85, 12 * 1.0, 2.0, 0.1, 0.025, 2.0, 2.0]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))
    lin = {**relu, "_target_": "anemoi.training.data.scaling.LinearPressureLevelScaler"}
    assert float(LL.table_variable_weights(["t_100"], table, lin, ctx)[0]) == pytest.approx(6 * 0.3)


def test_release_0_5_general_weights_ignore_default(converted) -> None:
    """0.5's ``GeneralVariableLossScaler`` gives a param without a weight 1.0, 0.6 on ``default``
    (``losses/scalers/variable.py`` of each release); the same config, two releases."""
    md, interface = _md("0.5.1/gnn", converted)
    scalers = md["config"]["training"]["scalers"]["datasets"]["data"]
    scalers["general_variable"]["weights"] = {"default": 3.0, "tp": 0.025}
    old = build_loss_weights(md, interface)["data"]
    assert dict(zip(old.variables, old.variable.tolist())) == pytest.approx(
        {"10u": 1.0, "10v": 1.0, "2t": 1.0, "msl": 1.0, "tp": 0.025})
    md["provenance_training"]["module_versions"]["anemoi.training"] = "0.6.7"
    loss = md["config"]["training"]["training_loss"]["datasets"]["data"]
    loss["scalers"].remove("nan_mask_weights")  # 0.6 dropped it from the default loss
    new = build_loss_weights(md, interface)["data"]
    assert new.variable.tolist()[:4] == [3.0] * 4
    assert "nan_mask_weights" not in [s["name"] for s in old.sources["scalers"]]


# ------------------------------------------------------------------ refusals

def _add_imputer(cfg: dict) -> None:
    procs = cfg["data"]["datasets"]["data"]["processors"]
    procs["imputer"] = {"_target_": "anemoi.models.preprocessing.imputer.InputImputer", "config": {}}


@pytest.mark.parametrize("cell,edit,fragment", [
    ("0.2.2/gnn", lambda c: c["training"]["pressure_level_scaler"].update(_target_="x.CubicScaler"),
     "training.pressure_level_scaler of the file's training config (anemoi-training 0.2.2) 'x.CubicScaler'"),
    ("0.2.2/gnn", lambda c: c["model"].update(output_mask="cutout_mask"),
     "model.output_mask of the file's training config (anemoi-training 0.2.2) is 'cutout_mask'"),
    ("0.2.2/gnn", lambda c: c["training"].pop("loss_scaling"),
     "training of the file's training config (anemoi-training 0.2.2) has no loss definition"),
    ("0.3.3/gnn", lambda c: c["training"]["training_loss"]["datasets"]["data"].update(
        _target_="anemoi.training.losses.mae.WeightedMAELoss"),
     "training.training_loss of the file's training config (anemoi-training 0.3.3) "
     "'anemoi.training.losses.mae.WeightedMAELoss' is not supported"),
    ("0.3.3/gnn", lambda c: c["training"]["training_loss"]["datasets"]["data"]["scalars"].append("tendency"),
     "names 'tendency'"),
    ("0.3.3/gnn", lambda c: c["training"]["node_loss_weights"].update(_target_="x.Lat"),
     "training.node_loss_weights of the file's training config (anemoi-training 0.3.3) 'x.Lat'"),
    ("0.3.3/gnn", _add_imputer, "applies loss_weights_mask with an imputer"),
    ("0.5.1/gnn", _add_imputer, "training.scalers.nan_mask_weights of the file's training config "
     "(anemoi-training 0.5.1) masks imputed points"),
    ("0.12.1/gnn", lambda c: c["training"]["training_loss"]["datasets"]["data"].update(ignore_nans=True),
     "training.training_loss.ignore_nans of the file's training config (anemoi-training 0.12.1) is "
     "true"),
    ("0.8.1/gnn", lambda c: c["training"]["training_loss"]["datasets"]["data"]["scalers"].append(
        "stdev_tendency"), "scaler 'stdev_tendency'"),
])
def test_unsupported_release_configs_are_refused(cell: str, edit, fragment: str, converted) -> None:
    md, interface = _md(cell, converted)
    edit(md["config"])
    with pytest.raises(ConfigError) as e:
        build_loss_weights(md, interface)
    assert fragment in str(e.value) and "\n" not in str(e.value)
