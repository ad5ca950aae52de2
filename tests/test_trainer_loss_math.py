"""The pure maths of the trainer's anemoi forecast loss (:mod:`anemoi_ckpt.trainer.anemoi.loss`):
properties that hold for any input. Equality with anemoi-training itself is
``tests/test_anemoi_loss.py`` (``make test-anemoi``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from anemoi_ckpt.trainer.anemoi import loss as L
from anemoi_ckpt.trainer.config import ConfigError

shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(1, 12),
                   st.integers(1, 5))
FAST = settings(max_examples=60, deadline=None)


def _pair(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64), \
        torch.randn(*shape, generator=g, dtype=torch.float64)


@FAST
@given(shapes, st.integers(0, 2**31))
def test_uniform_weights_are_plain_mse(shape, seed) -> None:
    """Unit-sum node and time weights, unit variable weights: the plain mean squared error."""
    pred, target = _pair(shape, seed)
    _, t, _, g, v = shape
    node = L.node_weights(torch.ones(g, dtype=torch.float64))
    time = L.uniform_time_weights(t).double()
    got = L.weighted_mse(pred, target, node, torch.ones(v, dtype=torch.float64), time)
    torch.testing.assert_close(got, torch.mean((pred - target) ** 2))


@FAST
@given(st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=50), st.floats(1e-3, 1e3))
def test_unit_sum_node_weights_ignore_the_area_scale(area, c) -> None:
    a = torch.tensor(area, dtype=torch.float64)
    w = L.node_weights(a)
    torch.testing.assert_close(w, L.node_weights(a * c))
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(L.node_weights(a, "unit-mean").mean()) == pytest.approx(1.0)
    torch.testing.assert_close(L.node_weights(a, None), a)


@FAST
@given(shapes, st.integers(0, 2**31))
def test_grid_permutation_leaves_the_loss_unchanged(shape, seed) -> None:
    pred, target = _pair(shape, seed)
    g = torch.Generator().manual_seed(seed + 1)
    node = L.node_weights(torch.rand(shape[3], generator=g, dtype=torch.float64) + 0.1)
    var = torch.rand(shape[4], generator=g, dtype=torch.float64)
    perm = torch.randperm(shape[3], generator=g)
    a = L.weighted_mse(pred, target, node, var)
    b = L.weighted_mse(pred[:, :, :, perm], target[:, :, :, perm], node[perm], var)
    torch.testing.assert_close(a, b)


@FAST
@given(shapes, st.integers(0, 2**31), st.floats(0.01, 100))
def test_loss_is_linear_in_the_variable_weights(shape, seed, c) -> None:
    pred, target = _pair(shape, seed)
    node = L.node_weights(torch.ones(shape[3], dtype=torch.float64))
    var = torch.rand(shape[4], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(L.weighted_mse(pred, target, node, var * c),
                               c * L.weighted_mse(pred, target, node, var))


@FAST
@given(shapes, st.integers(0, 2**31))
def test_weights_act_where_they_should(shape, seed) -> None:
    """Grid weight w_g: the loss is the per-point MSE (over variables) summed with weights w_g,
    averaged over batch and ensemble (time summed: no time scaler)."""
    pred, target = _pair(shape, seed)
    node = torch.rand(shape[3], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    per_point = ((pred - target) ** 2).mean(dim=4)  # (B, T, E, G)
    expected = (per_point * node).sum(dim=(1, 3)).mean()
    torch.testing.assert_close(L.weighted_mse(pred, target, node, torch.ones(shape[4]).double()),
                               expected)


@FAST
@given(shapes, st.integers(0, 2**31))
def test_ignore_nans_drops_exactly_the_nan_points(shape, seed) -> None:
    pred, target = _pair(shape, seed)
    nan = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.3
    node, var = torch.ones(shape[3]).double(), torch.ones(shape[4]).double()
    clean = L.weighted_mse(pred, torch.where(nan, pred, target), node, var)
    got = L.weighted_mse(pred, target.masked_fill(nan, float("nan")), node, var, ignore_nans=True)
    torch.testing.assert_close(got, clean)
    if nan.any():
        assert torch.isnan(L.weighted_mse(pred, target.masked_fill(nan, float("nan")), node, var))


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="batch, time, ensemble, grid, variable"):
        L.weighted_mse(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3), torch.ones(1))


@FAST
@given(st.from_regex(r"[a-z][a-z0-9_]{0,6}[a-z]", fullmatch=True), st.integers(0, 100000))
def test_a_level_suffix_is_cracked(param, level) -> None:
    assert L.crack_variable_name(f"{param}_{level}") == (param, level)
    assert L.crack_variable_name(param) == (param, None)


def test_group_param_level_follow_the_metadata_when_it_is_trusted() -> None:
    groups = {"default": "sfc", "pl": {"param": ["t"]}}
    # trusted metadata: pressure level with a level -> its param and level, not the name's
    meta = {"temp_a": {"mars": {"param": "t", "levtype": "pl", "levelist": 500}}}
    assert L.variable_info("temp_a", groups, meta) == L.VariableInfo("pl", "t", 500)
    # untrusted (no levtype, no level): param and level cracked from the name, but the group of a
    # variable with metadata is matched on the metadata's param (its name): anemoi's own rule
    assert L.variable_info("t_850", groups, {"t_850": {}}) == L.VariableInfo("sfc", "t", 850)
    assert L.variable_info("t_850", groups, None) == L.VariableInfo("pl", "t", 850)
    with pytest.raises(ConfigError, match="no 'default' group"):
        L.variable_info("t_850", {"pl": ["t"]})


def test_level_and_general_weights() -> None:
    infos = {n: L.variable_info(n, {"default": "sfc", "pl": ["t", "q"]}) for n in ("t_100", "q_850", "2t")}
    relu = L.level_weights(infos, "ReluVariableLevelScaler", "pl", 0.001, 0.2)
    torch.testing.assert_close(relu, torch.tensor([0.2, 0.85, 1.0]))
    gen = L.general_variable_weights(infos, {"default": 2.0, "t": 6.0})
    torch.testing.assert_close(gen, torch.tensor([6.0, 2.0, 2.0]))
    with pytest.raises(ConfigError, match="may not have a weight of its own"):
        L.general_variable_weights(infos, {"t": 6.0, "t_100": 1.0})


MSE = {"_target_": "anemoi.training.losses.MSELoss"}
SCALERS = {
    "nodes": {"_target_": "anemoi.training.losses.scalers.GraphNodeAttributeScaler",
              "nodes_attribute_name": "area_weight", "norm": "unit-sum"},
    "var": {"_target_": "anemoi.training.losses.scalers.GeneralVariableLossScaler", "weights": {}},
    "tend": {"_target_": "anemoi.training.losses.scalers.StdevTendencyScaler"},
}


def test_loss_scalers_resolve_star_and_refuse_what_they_cannot_compute() -> None:
    got = L.loss_scalers({**MSE, "scalers": ["*", "!tend"]}, SCALERS)
    assert [(s.name, s.dim) for s in got] == [("nodes", "grid"), ("var", "variable")]
    with pytest.raises(ConfigError) as e:
        L.loss_scalers({**MSE, "scalers": ["nodes", "tend"]}, SCALERS)
    assert "scaler 'tend' (anemoi.training.losses.scalers.StdevTendencyScaler) of the file's " \
        "training config is not supported by anemoi-ckpt's trainer" in str(e.value)
    with pytest.raises(ConfigError, match="does not define"):
        L.loss_scalers({**MSE, "scalers": ["nodes", "missing"]}, SCALERS)
    with pytest.raises(ConfigError, match="only MSELoss"):
        L.loss_scalers({"_target_": "anemoi.training.losses.AlmostFairKernelCRPS"}, SCALERS)


def test_time_weights() -> None:
    uni = L.Scaler("t", "UniformTimeStepScaler", "time", {})
    torch.testing.assert_close(L.time_weights([uni], 4), torch.full((4,), 0.25))
    torch.testing.assert_close(L.time_weights([], 3), torch.ones(3))
    explicit = L.Scaler("t", "TimeStepScaler", "time", {"weights": [1.0, 3.0], "norm": "unit-sum"})
    torch.testing.assert_close(L.time_weights([explicit], 2), torch.tensor([0.25, 0.75]))
    with pytest.raises(ConfigError, match="2 weights for 3 output steps"):
        L.time_weights([explicit], 3)


def test_cos_latitude_weights() -> None:
    w = L.cos_latitude_weights(torch.tensor([0.0, 60.0, 90.0, -60.0]))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.25, 0.0, 0.25]), atol=1e-7, rtol=0)
