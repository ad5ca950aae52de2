"""anemoi-training 0.17.1's default forecast loss as pure functions (torch only, no anemoi import).

The loss is ``MSELoss`` with the scalers its config names: squared error times node weights (grid),
variable weights (the product of every variable scaler) and output-step weights (time), then the
reduction of ``anemoi.training.losses.base.BaseLoss.reduce``: mean over variables, sum over output
steps and grid points (the weights carry the normalisation), mean over batch and ensemble members.
Every formula below is read from anemoi-training 0.17.1 (``losses/base.py``, ``losses/mse.py``,
``losses/scalers/*.py``, ``utils/variables_metadata.py``) and is checked against it in
``tests/test_anemoi_loss.py``. A scaler outside this set is refused with one line (ConfigError):
a silently different loss would be worse than none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError

#: anemoi-training's ``BaseScaler.norm`` choices ("l1" is the same as "unit-sum" there).
NORMS = (None, "unit-sum", "l1", "unit-mean")

#: level -> weight of each variable-level scaler (``losses/scalers/variable_level.py``); Python
#: floats, as anemoi computes them, so the float32 weights are bit-identical.
LEVEL_FUNCTIONS = {
    "LinearVariableLevelScaler": lambda level, slope, y0: level * slope + y0,
    "ReluVariableLevelScaler": lambda level, slope, y0: max(y0, level * slope),
    "PolynomialVariableLevelScaler": lambda level, slope, y0: (slope * level) ** 2 + y0,
    "NoVariableLevelScaler": lambda level, slope, y0: 1.0,
}


def normalise(values: Tensor, norm: str | None) -> Tensor:
    """``BaseScaler.normalise``: ``unit-sum``/``l1`` divide by the sum, ``unit-mean`` by the mean."""
    if norm is None:
        return values
    if norm in ("unit-sum", "l1"):
        return values / torch.sum(values)
    if norm == "unit-mean":
        return values / torch.mean(values)
    raise ConfigError(None, f"node/variable/time scaler norm {norm!r} is not one of "
                      f"{', '.join(str(n) for n in NORMS)}")


def node_weights(area: Tensor, norm: str | None = "unit-sum", *, inverse: bool = False,
                 mask: Tensor | None = None, weight_frac_of_total: float | None = None) -> Tensor:
    """Grid-point weights from a node attribute (``GraphNodeAttributeScaler``): the attribute
    squeezed to one value per node (negated if ``inverse``: boolean masks only), then ``norm``.
    With ``mask`` and ``weight_frac_of_total`` (``ReweightedGraphNodeAttributeScaler``) the masked
    nodes together get that fraction of the total, shared equally, before ``norm``."""
    values = area.reshape(area.shape[0], -1).squeeze(1)  # (G,) or (G, 1) -> (G,), even for G = 1
    if inverse:
        if values.dtype != torch.bool:
            raise ConfigError(None, "node weights: 'inverse' applies to a boolean node attribute only")
        values = ~values
    if mask is not None:
        if weight_frac_of_total is None:
            raise ConfigError(None, "node weights: a scaling mask needs weight_frac_of_total")
        values = values.clone()
        mask = mask.squeeze().to(torch.bool)
        values[mask] = (weight_frac_of_total / (1 - weight_frac_of_total)
                        * torch.sum(values[~mask]) / mask.sum())
    return normalise(values, norm)


def cos_latitude_weights(lat_deg: Tensor, norm: str | None = "unit-sum") -> Tensor:
    """cos(latitude) per grid point: the fallback node weights for a file without its graph (an
    inference-converted file keeps only buffers, not ``area_weight``). An approximation of the
    area weights on a regular grid, not what anemoi-training used: lineage says so."""
    return normalise(torch.cos(torch.deg2rad(lat_deg.to(torch.float64))).to(torch.float32), norm)


def uniform_time_weights(n_out: int) -> Tensor:
    """``UniformTimeStepScaler``: 1 per output step, unit-sum."""
    return normalise(torch.ones(n_out, dtype=torch.float32), "unit-sum")


# ------------------------------------------------------------------ variable group, param, level

@dataclass(frozen=True)
class VariableInfo:
    group: str
    param: str
    level: Any  # int from a cracked name, the metadata's levelist otherwise, None for surface


def crack_variable_name(name: str) -> tuple[str, int | None]:
    """``t_850`` -> (``t``, 850); a name whose last ``_`` part is not digits is its own param."""
    parts = name.split("_")
    if len(parts) > 1 and parts[-1].isdigit():
        return name[: -len(parts[-1]) - 1], int(parts[-1])
    return name, None


def _metadata_attr(meta: Mapping[str, Any], name: str, key: str) -> Any:
    """An attribute of ``anemoi.transform.variables.VariableFromDict`` read from its dict."""
    mars = meta.get("mars") or {}
    levtype = mars.get("levtype")
    attrs = {
        "param": mars.get("param", name),
        "level": mars.get("levelist"),
        "is_surface_level": None if levtype is None else levtype == "sfc",
        "is_pressure_level": None if levtype is None else levtype == "pl",
        "is_model_level": None if levtype is None else levtype == "ml",
    }
    if key not in attrs:
        raise ConfigError(None, f"variable_groups: selecting variables by {key!r} is not supported "
                          "by anemoi-ckpt's trainer", f"use one of {', '.join(attrs)}")
    return attrs[key]


def _trusted(meta: Mapping[str, Any] | None, name: str) -> bool:
    """``ExtractVariableGroupAndLevel._is_metadata_trusted``: a vertical level has a level, a
    surface one has none (a missing levtype counts as vertical)."""
    if meta is None:
        return False
    vertical = not _metadata_attr(meta, name, "is_surface_level")
    return vertical ^ (_metadata_attr(meta, name, "level") is None)


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def variable_info(name: str, variable_groups: Mapping[str, Any],
                  variables_metadata: Mapping[str, Any] | None = None) -> VariableInfo:
    """Group (from the training config's ``variable_groups``), param and level of ``name``, as
    ``ExtractVariableGroupAndLevel.get_group_and_level``: param and level from the dataset's
    variables metadata when it is trusted, from the name (``t_850``) otherwise."""
    if "default" not in variable_groups:
        raise ConfigError(None, "training.variable_groups has no 'default' group")
    meta = (variables_metadata or {}).get(name)
    trusted = _trusted(meta, name)
    param = _metadata_attr(meta, name, "param") if trusted else crack_variable_name(name)[0]
    level = _metadata_attr(meta, name, "level") if trusted else crack_variable_name(name)[1]
    group = variable_groups["default"]
    for gname, spec in variable_groups.items():
        if gname == "default":
            continue
        if isinstance(spec, (list, str)):
            hit = param in _as_list(spec)
        elif isinstance(spec, Mapping):
            if meta is None:
                if set(spec) != {"param"}:
                    raise ConfigError(None, f"variable_groups.{gname}: variable {name!r} has no "
                                      "metadata, so its group may only select by 'param'")
                hit = param in _as_list(spec["param"])
            else:
                hit = all(_metadata_attr(meta, name, k) in _as_list(v) for k, v in spec.items())
        else:
            continue
        if hit:
            group = gname
            break
    return VariableInfo(group, param, level)


# ------------------------------------------------------------------ variable weights

def general_variable_weights(infos: Mapping[str, VariableInfo], weights: Mapping[str, Any]) -> Tensor:
    """``GeneralVariableLossScaler``: the weight of the variable's param, else ``default`` (1)."""
    out = torch.empty(len(infos), dtype=torch.float32)
    for i, (name, info) in enumerate(infos.items()):
        if info.param != name and weights.get(name) is not None:
            raise ConfigError(None, f"general_variable weights: {name!r} may not have a weight of "
                              f"its own besides its param {info.param!r}")
        out[i] = weights.get(info.param, weights.get("default", 1.0))
    return out


def level_weights(infos: Mapping[str, VariableInfo], kind: str, group: str, slope: float = 0.0,
                  y_intercept: float = 1.0) -> Tensor:
    """A ``*VariableLevelScaler``: 1 outside ``group``, ``f(level)`` inside it."""
    fn = LEVEL_FUNCTIONS[kind]
    out = torch.ones(len(infos), dtype=torch.float32)
    for i, (name, info) in enumerate(infos.items()):
        if info.group != group:
            continue
        if info.level is None:
            raise ConfigError(None, f"variable {name!r} of group {group!r} has no level to scale")
        out[i] = fn(float(info.level), slope, y_intercept)
    return out


# ------------------------------------------------------------------ the loss

def weighted_mse(pred: Tensor, target: Tensor, node_w: Tensor, var_w: Tensor,
                 time_w: Tensor | None = None, *, ignore_nans: bool = False) -> Tensor:
    """anemoi-training's ``MSELoss`` with its scalers, on (B, T, E, G, V) tensors -> a scalar.

    ``node_w`` (G,), ``var_w`` (V,), ``time_w`` (T,) or None (weight 1 per output step). Squared
    error times the weights, mean over V, sum over T and G, mean over B and E."""
    if pred.shape != target.shape or pred.dim() != 5:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be "
                         "(batch, time, ensemble, grid, variable)")
    if ignore_nans:  # BaseLoss.mask_nans: both zeroed where either is NaN
        nan = torch.isnan(target + pred)
        pred, target = pred.masked_fill(nan, 0.0), target.masked_fill(nan, 0.0)
    sq = torch.square(pred - target)
    w = node_w.to(sq)[:, None] * var_w.to(sq)[None, :]  # (G, V)
    if time_w is not None:
        w = time_w.to(sq)[:, None, None, None] * w  # (T, 1, G, V)
    out = torch.mean(sq * w, dim=4, keepdim=True)
    return torch.sum(out, dim=(1, 3)).mean()


def describe_weights(names: Sequence[str], w: Tensor) -> dict[str, float]:
    """``{variable: weight}`` for lineage."""
    return {n: float(v) for n, v in zip(names, w.tolist())}


# ------------------------------------------------------------------ the file's loss config

#: scaler class -> the loss dimension it weights; anything else is refused.
SCALER_DIMS = {
    "GraphNodeAttributeScaler": "grid", "ReweightedGraphNodeAttributeScaler": "grid",
    "GeneralVariableLossScaler": "variable", **{k: "variable" for k in LEVEL_FUNCTIONS},
    "UniformTimeStepScaler": "time", "TimeStepScaler": "time",
}
_SCALERS = "anemoi.training.losses.scalers."
_MSE = ("anemoi.training.losses.MSELoss", "anemoi.training.losses.mse.MSELoss")


@dataclass(frozen=True)
class Scaler:
    name: str  # the key under training.scalers
    kind: str  # its class, e.g. GeneralVariableLossScaler
    dim: str  # grid | variable | time
    config: Mapping[str, Any]


def loss_scalers(loss_cfg: Mapping[str, Any], scalers_cfg: Mapping[str, Any],
                 where: str = "training") -> list[Scaler]:
    """The scalers the training loss applies, in its order (``get_loss_function``: ``*`` is every
    scaler, ``!name`` drops one). Refuses a loss other than ``MSELoss``, a variable subset and any
    scaler this module does not compute."""
    target = str(loss_cfg.get("_target_"))
    if target not in _MSE:
        raise ConfigError(None, f"{where}.training_loss {target!r} of the file's training config is "
                          "not supported by anemoi-ckpt's trainer", "only MSELoss is")
    for key in ("predicted_variables", "target_variables"):
        if loss_cfg.get(key) is not None:
            raise ConfigError(None, f"{where}.training_loss.{key} of the file's training config is "
                              "not supported by anemoi-ckpt's trainer")
    names = list(loss_cfg.get("scalers") or [])
    if "*" in names:
        names = [s for s in scalers_cfg if f"!{s}" not in names]
    out = []
    for name in names:
        cfg = scalers_cfg.get(name)
        if not isinstance(cfg, Mapping):
            raise ConfigError(None, f"{where}.training_loss uses scaler {name!r}, which "
                              f"{where}.scalers does not define")
        tgt = str(cfg.get("_target_"))
        kind = tgt[len(_SCALERS):].rsplit(".", 1)[-1] if tgt.startswith(_SCALERS) else tgt
        if kind not in SCALER_DIMS:
            raise ConfigError(None, f"scaler {name!r} ({tgt}) of the file's training config is not "
                              "supported by anemoi-ckpt's trainer",
                              f"supported: {', '.join(sorted(SCALER_DIMS))}")
        out.append(Scaler(name, kind, SCALER_DIMS[kind], cfg))
    if out and not any(s.dim == "grid" for s in out):  # BaseLoss.scale refuses this too
        raise ConfigError(None, f"{where}.training_loss: its scalers weight no grid dimension "
                          "(anemoi-training requires a node scaler)")
    return out


def variable_weights(scalers: Sequence[Scaler], infos: Mapping[str, VariableInfo]) -> Tensor:
    """The product of the variable scalers (one weight per output variable, ``infos`` order)."""
    w = torch.ones(len(infos), dtype=torch.float32)
    for s in scalers:
        if s.dim != "variable":
            continue
        c = s.config
        if s.kind == "GeneralVariableLossScaler":
            v = general_variable_weights(infos, c.get("weights") or {})
        elif s.kind == "NoVariableLevelScaler":
            v = level_weights(infos, s.kind, str(c.get("group")))
        else:
            v = level_weights(infos, s.kind, str(c.get("group")), float(c.get("slope")),
                              float(c.get("y_intercept")))
        norm = None if s.kind == "NoVariableLevelScaler" else c.get("norm")
        w = w * normalise(v, norm)
    return w


def time_weights(scalers: Sequence[Scaler], n_out: int) -> Tensor:
    """The product of the output-step scalers; 1 per step where the loss has none (summed)."""
    w = torch.ones(n_out, dtype=torch.float32)
    for s in scalers:
        if s.kind == "UniformTimeStepScaler":
            w = w * uniform_time_weights(n_out)
        elif s.kind == "TimeStepScaler":
            v = torch.as_tensor(s.config.get("weights") or [1.0], dtype=torch.float32)
            if v.numel() not in (1, n_out):
                raise ConfigError(None, f"scaler {s.name!r}: {v.numel()} weights for {n_out} "
                                  "output steps")
            w = w * normalise(v, s.config.get("norm"))
    return w
