"""Issue 17: the trainer's forecast loss is anemoi-training's, on the same batch.

For both 0.17.1 fixtures (GNN; GraphTransformer mappers + Transformer processor), converted to
``.anc``: anemoi-training's own ``SingleTraining`` is built from the file's training config (its
``Forecaster`` task, ``create_scalers`` and ``get_loss_function``, the file's graph and data indices)
with the converted model's weights, and its training step on a real batch (from a zarr made by
``anemoi-datasets create``) gives the loss ours must equal, for rollout 1 and 2, gradients included.
A second set-up renames two variables ``t_500``/``t_850`` (pressure levels, by metadata and by name)
so the level scaler and the param lookup are compared too. Runs in ``make test-anemoi``.
"""

from __future__ import annotations

import copy
from operator import attrgetter
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, require_module

require_module("anemoi.training", reason="needs anemoi-training (make test-anemoi)")
require_module("anemoi.datasets", reason="needs anemoi-datasets (make test-anemoi)")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from anemoi.models.data_indices.collection import IndexCollection  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from anemoi_ckpt.anemoi import load_model  # noqa: E402
from anemoi_ckpt.anemoi.graph import graph_from_section  # noqa: E402
from anemoi_ckpt.convert import convert  # noqa: E402
from anemoi_ckpt.reader import Checkpoint  # noqa: E402
from anemoi_ckpt.trainer.anemoi import loss as L  # noqa: E402
from anemoi_ckpt.trainer.anemoi.objective import (  # noqa: E402
    ForecastObjective, advance_input, build_loss_weights)
from anemoi_ckpt.trainer.config import ConfigError  # noqa: E402
from tests.anemoi_datasets import session_zarr  # noqa: E402

ANEMOI = FIXTURES / "legacy" / "anemoi"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixtures' training dataset, remade by ``anemoi-datasets create`` from their recipe."""
    return session_zarr(tmp_path_factory, dynamics="fixture")


def raw_batch(dataset: Path, steps: int, starts: tuple[int, ...] = (0, 9)) -> torch.Tensor:
    """(batch, time, ensemble, grid, variable), what anemoi-training's dataloader yields."""
    from anemoi.datasets import open_dataset

    ds = open_dataset(str(dataset))
    assert ds.variables == ["10u", "10v", "2t", "cos_latitude", "insolation", "msl", "tp"]
    windows = np.stack([ds[s:s + steps] for s in starts])  # (B, T, V, E, G)
    return torch.from_numpy(windows).permute(0, 1, 3, 4, 2).contiguous().float()


@pytest.fixture(scope="module", params=["gnn", "graphtransformer"])
def anc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / "last.anc"
    convert(ANEMOI / request.param / "last.ckpt", out)
    return out


def anemoi_training_module(path: Path, interface, rollout: int, md: dict | None = None,
                           data_indices: dict | None = None):
    """anemoi-training's ``SingleTraining`` built from the file's own config, as its trainer does
    (scalers, loss, task), holding the converted model's weights."""
    from anemoi.training.train.methods import SingleTraining

    with Checkpoint(path) as ck:
        md = copy.deepcopy(md or ck.anemoi_metadata)
        graph = graph_from_section(ck)
        hp = ck.tensors("hparams")
        stats = {"data": {k: hp[f"statistics.data.{k}"].numpy().copy()
                          for k in ("mean", "stdev", "minimum", "maximum")}}
    cfg = OmegaConf.create(md["config"])
    cfg.task.rollout = {"start": rollout, "epoch_increment": 0, "maximum": rollout}
    module = SingleTraining(config=cfg, task=instantiate(cfg.task), graph_data=graph,
                            statistics=stats, statistics_tendencies=None,
                            data_indices=data_indices or interface.data_indices, metadata=md,
                            supporting_arrays={"data": {}})
    module.model.load_state_dict(interface.state_dict(), strict=True)
    return module


def anemoi_training_loss(module, batch: torch.Tensor) -> torch.Tensor:
    """Its training step: the batch normalised in place and the scalers prepared by
    ``on_after_batch_transfer``, then ``_step``."""
    b = module.on_after_batch_transfer({"data": batch.clone()}, 0)
    return module._step(b).loss


@pytest.mark.parametrize("rollout", [1, 2])
def test_loss_equals_anemoi_training_step(anc: Path, dataset: Path, rollout: int) -> None:
    interface = load_model(anc)
    with Checkpoint(anc) as ck:
        objective = ForecastObjective.from_checkpoint(ck, interface)
    batch = raw_batch(dataset, objective.steps_needed(rollout))
    module = anemoi_training_module(anc, interface, rollout)

    theirs = anemoi_training_loss(module, batch)
    raw = batch.clone()
    ours = objective(interface, raw, rollout=rollout)
    assert torch.equal(raw, batch), "the caller's batch was modified"
    torch.testing.assert_close(ours, theirs.reshape(()), rtol=1e-6, atol=0)

    # the same gradients: the training signal is anemoi-training's, not just the number
    theirs.sum().backward()
    ours.backward()
    mine = dict(interface.named_parameters())
    for name, p in module.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(mine[name].grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)

    # rollout 2 is not rollout 1 counted twice: the second step feeds the prediction back
    if rollout == 2:
        assert not torch.isclose(ours.detach(), objective(interface, batch, rollout=1).detach())
    assert objective.evaluate(interface, batch, rollout) == pytest.approx(float(ours), rel=1e-6)


def renamed(interface, md: dict, with_metadata: bool) -> tuple[dict, dict]:
    """10u, 10v renamed t_500, t_850: pressure-level temperatures (by metadata, or only by name)."""
    rename = {"10u": "t_500", "10v": "t_850"}
    md = copy.deepcopy(md)
    recorded = md["data_indices"]["data"]["data"]["input"]["name_to_index"]
    n2i = {rename.get(k, k): v for k, v in recorded.items()}
    cfg = OmegaConf.create(md["config"])
    indices = {"data": IndexCollection(cfg.data.datasets.data, n2i)}
    old = interface.data_indices["data"]
    for part in ("data.input", "data.output", "model.input", "model.output"):
        a, b = (attrgetter(part)(x) for x in (old, indices["data"]))
        assert torch.equal(a.full, b.full) and torch.equal(a.prognostic, b.prognostic)
    meta = md["dataset"]["data"]["variables_metadata"]
    for old_name, new in rename.items():
        entry = meta.pop(old_name)
        if with_metadata:  # otherwise no metadata: param and level are cracked from the name
            entry["mars"].update(param="t", levtype="pl", levelist=int(new.split("_")[1]))
            meta[new] = entry
    return md, indices


@pytest.mark.parametrize("with_metadata", [True, False], ids=["metadata", "names"])
def test_pressure_levels_equal_anemoi_training(dataset: Path, tmp_path: Path, with_metadata: bool) -> None:
    path = tmp_path / "gnn.anc"
    convert(ANEMOI / "gnn" / "last.ckpt", path)
    interface = load_model(path)
    with Checkpoint(path) as ck:
        md, indices = renamed(interface, ck.anemoi_metadata, with_metadata)
        graph = graph_from_section(ck)
    module = anemoi_training_module(path, interface, 1, md=md, data_indices=indices)
    interface.data_indices = indices  # the names our objective reads (the index tensors are equal)
    objective = ForecastObjective(interface, build_loss_weights(md, interface, graph))

    w = objective.weights["data"]
    assert w.variables == ("t_500", "t_850", "2t", "msl", "tp")
    assert w.describe()["variable_groups"]["t_850"] == "pl"
    # general_variable t: 6, Relu level scaler max(0.2, 0.001 * level)
    torch.testing.assert_close(w.variable[:2], torch.tensor([6.0 * 0.5, 6.0 * 0.85]))

    batch = raw_batch(dataset, objective.steps_needed(1))
    theirs = anemoi_training_loss(module, batch)
    torch.testing.assert_close(objective(interface, batch), theirs.reshape(()), rtol=1e-6, atol=0)


def test_variable_weights_equal_anemoi_scalers() -> None:
    """Every supported variable scaler, including the other level functions and norms, against
    anemoi-training's scaler classes on the same names, groups and metadata."""
    from anemoi.training.losses.scalers import create_scalers
    from anemoi.training.utils.variables_metadata import ExtractVariableGroupAndLevel

    names = ["t_500", "t_850", "q_100", "z_1000", "2t", "w_50", "tp"]
    meta = {"z_1000": {"mars": {"param": "z", "levtype": "pl", "levelist": 1000}},
            "2t": {"mars": {"param": "2t", "levtype": "sfc"}}}
    groups = {"default": "sfc", "pl": {"param": ["t", "q", "z", "w"]}}
    data_cfg = OmegaConf.create({"forcing": [], "diagnostic": ["tp"], "target": []})
    indices = IndexCollection(data_cfg, {n: i for i, n in enumerate(names)})
    extractor = ExtractVariableGroupAndLevel(groups, meta)
    infos = {n: L.variable_info(n, groups, meta) for n in names}
    for n in names:
        assert (infos[n].group, infos[n].param, infos[n].level) == extractor.get_group_and_level(n)
    weights = {"default": 1.5, "t": 6.0, "z": 12.0, "tp": 0.025}
    for kind in L.LEVEL_FUNCTIONS:
        for norm in (None, "unit-sum", "unit-mean"):
            cfg = {"general": {"_target_": "anemoi.training.losses.scalers.GeneralVariableLossScaler",
                               "weights": weights, "norm": norm},
                   "level": {"_target_": f"anemoi.training.losses.scalers.{kind}", "group": "pl",
                             "slope": 0.002, "y_intercept": 0.3, "norm": norm}}
            theirs, _ = create_scalers(OmegaConf.create(cfg), data_indices=indices,
                                       metadata_extractor=extractor)
            scalers = [L.Scaler("general", "GeneralVariableLossScaler", "variable", cfg["general"]),
                       L.Scaler("level", kind, "variable", cfg["level"])]
            expected = theirs["general"][1] * theirs["level"][1]
            torch.testing.assert_close(L.variable_weights(scalers, infos), expected, msg=f"{kind} {norm}")


@pytest.mark.parametrize("n_in,n_out", [(2, 1), (2, 2), (1, 3), (3, 2)])
def test_rollout_advance_equals_forecaster(n_in: int, n_out: int) -> None:
    """The input update between rollout steps, against ``Forecaster._advance_dataset_input``, also
    for multistep_output > 1 (which the fixtures do not have)."""
    from anemoi.training.tasks.forecaster import Forecaster
    from anemoi.training.utils.masks import NoOutputMask

    names = ["10u", "10v", "2t", "cos_latitude", "insolation", "msl", "tp"]
    data_cfg = OmegaConf.create({"forcing": ["cos_latitude", "insolation"], "diagnostic": ["tp"],
                                 "target": []})
    idx = IndexCollection(data_cfg, {n: i for i, n in enumerate(names)})
    rollout = 3
    task = Forecaster(multistep_input=n_in, multistep_output=n_out, timestep="6h",
                      rollout={"start": rollout, "maximum": rollout})
    gen = torch.Generator().manual_seed(n_in * 10 + n_out)
    batch = torch.randn(2, n_in + rollout * n_out, 1, 5, len(names), generator=gen)
    x = batch[:, :n_in][..., idx.data.input.full]
    for step in range(rollout - 1):
        y_pred = torch.randn(2, n_out, 1, 5, len(idx.model.output.full), generator=gen)
        theirs = task._advance_dataset_input(x.clone(), y_pred, batch, rollout_step=step,
                                             data_indices=idx, output_mask=NoOutputMask())
        ours = advance_input(x, y_pred, batch, idx, step, n_in, n_out)
        assert torch.equal(ours, theirs)
        x = ours


def test_inference_file_falls_back_to_cos_latitude(tmp_path: Path, dataset: Path) -> None:
    path = tmp_path / "inference.anc"
    convert(ANEMOI / "gnn" / "inference-last.ckpt", path)
    interface = load_model(path)
    with Checkpoint(path) as ck:
        assert "graph" not in ck.tensor_sections()
        objective = ForecastObjective.from_checkpoint(ck, interface)
    w = objective.weights["data"]
    src = w.describe()["node_source"]
    assert "cos-latitude" in src[0]["kind"]
    # the grid's latitudes as the dataset has them (the node buffer latlons_data holds their sines
    # and cosines, not the angles)
    from anemoi.datasets import open_dataset

    lat = torch.as_tensor(np.asarray(open_dataset(str(dataset)).latitudes), dtype=torch.float32)
    torch.testing.assert_close(w.node, L.cos_latitude_weights(lat))
    assert float(w.node.sum()) == pytest.approx(1.0, rel=1e-6)  # the config's unit-sum norm
    loss = objective(interface, raw_batch(dataset, objective.steps_needed(1)))
    assert torch.isfinite(loss) and loss > 0


@pytest.mark.parametrize("edit,fragment", [
    (lambda t: t["training_loss"]["datasets"]["data"]["scalers"].append("stdev_tendency"),
     "scaler 'stdev_tendency' (anemoi.training.losses.scalers.StdevTendencyScaler) of the file's "
     "training config is not supported by anemoi-ckpt's trainer"),
    (lambda t: t["training_loss"]["datasets"]["data"].update(scalers=["*"]),
     "scaler 'nan_mask_weights'"),
    (lambda t: t["training_loss"]["datasets"]["data"].update(_target_="anemoi.training.losses.MAELoss"),
     "'anemoi.training.losses.MAELoss' of the file's training config is not supported"),
    (lambda t: t["training_loss"]["datasets"]["data"].update(scalers=["general_variable"]),
     "weight no grid dimension"),
])
def test_unsupported_training_config_is_refused(anc: Path, edit, fragment: str) -> None:
    interface = load_model(anc)
    with Checkpoint(anc) as ck:
        md = copy.deepcopy(ck.anemoi_metadata)
    edit(md["config"]["training"])
    with pytest.raises(ConfigError) as e:
        build_loss_weights(md, interface, None)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_the_given_model_makes_the_forward(anc: Path, dataset: Path) -> None:
    """A PEFT LoRA model wrapping the interface: the objective calls it, so the adapters act (the
    loss is that of the merged weights, not of the frozen base)."""
    peft = require_module("peft", reason="needs peft")
    interface = load_model(anc)
    with Checkpoint(anc) as ck:
        objective = ForecastObjective.from_checkpoint(ck, interface)
    batch = raw_batch(dataset, objective.steps_needed(2))
    linears = [n for n, m in interface.named_modules()
               if isinstance(m, torch.nn.Linear) and ".processor." in f".{n}"]
    model = peft.get_peft_model(interface, peft.LoraConfig(r=4, target_modules=linears))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    with_adapters = objective.evaluate(model, batch, rollout=2)
    with model.disable_adapter():
        base = objective.evaluate(model, batch, rollout=2)
    assert with_adapters != pytest.approx(base, rel=1e-4)
    merged = model.merge_and_unload()
    assert objective.evaluate(merged, batch, rollout=2) == pytest.approx(with_adapters, rel=1e-5)
