"""The loss definition of a training config of any anemoi-training release since 2024 (0.2 to 0.17).

anemoi-training recorded its loss in three layouts, one reader each (``READERS``). Each turns one
dataset's recorded training config into the same thing: the scalers that weight the grid and time
dimensions (``loss.Scaler``, for the node and output-step weights the objective builds from the
file's graph) and the variable weights, computed as that release computed them:

- ``loss_scaling`` (0.2): ``WeightedMSELoss`` with node weights from the graph attribute
  ``model.node_loss_weight`` and variable weights from ``training.loss_scaling`` (``pl``/``sfc``
  tables by variable name) times ``training.pressure_level_scaler`` for pressure levels
  (``GraphForecaster.metrics_loss_scaling``);
- ``variable_loss_scaling`` (0.3, 0.4): the same variable weights from
  ``training.variable_loss_scaling``, node weights from ``training.node_loss_weights``
  (``GraphNodeAttribute`` or ``ReweightedGraphNodeAttribute``), the ``training_loss``'s ``scalars``
  ``variable`` and ``loss_weights_mask``;
- ``scalers`` (0.5 on): ``training_loss`` + ``training.scalers``, read by :func:`loss.loss_scalers`;
  releases before 0.6 differ in three details handled here (``GeneralVariableLossScaler`` ignores
  ``default``, variable param/level/group by 0.5's rules, ``NaNMaskScaler`` in the default loss).

All of them reduce as :func:`loss.weighted_mse` does (the old ``scale_by_node_weights`` divides by
the sum of the node weights, i.e. ``unit-sum``). ``tests/test_anemoi_loss_releases.py`` checks the
result against each release's own training step. Anything else is refused with one line naming
the release and the key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from . import loss as L

#: ``anemoi.training.data.scaling.*PressureLevelScaler`` (0.2 to 0.4) -> the level function of the
#: same formula in :data:`loss.LEVEL_FUNCTIONS` (``minimum`` is the y-intercept).
PRESSURE_LEVEL_SCALERS = {
    "LinearPressureLevelScaler": "LinearVariableLevelScaler",
    "ReluPressureLevelScaler": "ReluVariableLevelScaler",
    "PolynomialPressureLevelScaler": "PolynomialVariableLevelScaler",
    "NoPressureLevelScaler": "NoVariableLevelScaler",
}
_WEIGHTED_MSE = ("anemoi.training.losses.mse.WeightedMSELoss",)
_NODE_ATTRS = {  # 0.3/0.4 node_loss_weights -> the 0.5+ scaler of the same weights
    "anemoi.training.losses.nodeweights.GraphNodeAttribute": "GraphNodeAttributeScaler",
    "anemoi.training.losses.nodeweights.ReweightedGraphNodeAttribute":
        "ReweightedGraphNodeAttributeScaler",
}
_NAN_MASK = "NaNMaskScaler"


@dataclass(frozen=True)
class DatasetLoss:
    """One dataset's loss as a release defined it."""

    layout: str
    scalers: list[L.Scaler]  # grid and time scalers (and the variable ones, for lineage)
    variable: Tensor  # (len(names),), the model's output order
    ignore_nans: bool = False
    groups: dict[str, str] = field(default_factory=dict)  # variable -> group, for lineage


@dataclass(frozen=True)
class Context:
    """What a reader needs besides the training config."""

    cfg: Mapping[str, Any]  # the file's config
    md: Mapping[str, Any]  # the file's anemoi metadata
    dataset: str
    names: Sequence[str]  # the model's output variables, in output order
    release: tuple[int, ...] | None  # anemoi-training version that wrote the file, if recorded

    @property
    def release_str(self) -> str:
        return ".".join(map(str, self.release)) if self.release else "unknown release"

    def refuse(self, key: str, what: str, hint: str | None = None) -> ConfigError:
        return ConfigError(None, f"{key} of the file's training config (anemoi-training "
                           f"{self.release_str}) {what}", hint)


def per_dataset(cfg: Any, name: str) -> Any:
    """``get_multiple_datasets_config``: ``{datasets: {name: ...}}``, or one config for all."""
    if isinstance(cfg, Mapping) and "datasets" in cfg:
        return (cfg.get("datasets") or {}).get(name)
    return cfg


def release_of(md: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The anemoi-training version in the file's provenance (a string before 0.9, a dict after)."""
    versions = (md.get("provenance_training") or {}).get("module_versions") or {}
    v = versions.get("anemoi.training")
    v = v.get("version") if isinstance(v, Mapping) else v
    try:
        return tuple(int(p) for p in str(v).split("+")[0].split(".")[:3])
    except ValueError:
        return None


def layout_of(training: Mapping[str, Any]) -> str | None:
    if training.get("scalers") and training.get("training_loss"):
        return "scalers"
    if training.get("variable_loss_scaling") is not None:
        return "variable_loss_scaling"
    if training.get("loss_scaling") is not None:
        return "loss_scaling"
    return None


def _has_imputer(ctx: Context) -> bool:
    """Whether the data processors include an imputer (its loss mask zeroes imputed points)."""
    data = ctx.cfg.get("data") or {}
    procs = per_dataset(data, ctx.dataset) if "datasets" in data else data
    procs = (procs or {}).get("processors") or {}
    return any("imputer" in str((p or {}).get("_target_", "")).lower()
               for p in procs.values() if isinstance(p, Mapping))


def _refuse_string_output_mask(ctx: Context) -> None:
    mask = (ctx.cfg.get("model") or {}).get("output_mask")
    if isinstance(mask, str):  # 0.2-0.4: a Boolean1DMask from that graph attribute
        raise ctx.refuse("model.output_mask", f"is {mask!r} (a boundary mask), which anemoi-ckpt's "
                         "trainer does not reproduce")


# ------------------------------------------------------------------ 0.2 to 0.4: tables by name

def table_variable_weights(names: Sequence[str], table: Mapping[str, Any],
                           level_scaler: Mapping[str, Any], ctx: Context) -> Tensor:
    """``metrics_loss_scaling`` / ``get_variable_scaling`` (0.2 to 0.4): ``default`` for every
    variable; a name ending in ``_<digits>`` whose param is in ``pl`` gets ``pl[param]`` times the
    pressure-level scaler of its level, any other name found in ``sfc`` gets ``sfc[name]``."""
    tgt = str(level_scaler.get("_target_", ""))
    kind = PRESSURE_LEVEL_SCALERS.get(tgt.rsplit(".", 1)[-1])
    if kind is None:
        raise ctx.refuse("training.pressure_level_scaler", f"{tgt!r} is not supported by "
                         "anemoi-ckpt's trainer", f"supported: {', '.join(PRESSURE_LEVEL_SCALERS)}")
    slope, minimum = float(level_scaler.get("slope", 0.0)), float(level_scaler.get("minimum", 1.0))
    fn = L.LEVEL_FUNCTIONS[kind]
    pl, sfc = table.get("pl") or {}, table.get("sfc") or {}
    out = torch.full((len(names),), float(table.get("default", 1.0)), dtype=torch.float32)
    for i, name in enumerate(names):
        param, level = L.crack_variable_name(name)
        if level is not None:
            if param in pl:
                out[i] = float(pl[param]) * fn(float(level), slope, minimum)
        elif name in sfc:
            out[i] = float(sfc[name])
    return out


def read_loss_scaling(ctx: Context) -> DatasetLoss:
    """0.2: ``WeightedMSELoss(node_weights=graph[data][model.node_loss_weight],
    data_variances=loss_scaling)``, fixed in the code (no loss config)."""
    training = ctx.cfg.get("training") or {}
    _refuse_string_output_mask(ctx)
    attr = (ctx.cfg.get("model") or {}).get("node_loss_weight")
    if not attr:
        raise ctx.refuse("model.node_loss_weight", "is missing (the graph attribute of the node "
                         "weights)")
    nodes = (ctx.cfg.get("graph") or {}).get("data") or ctx.dataset
    node = L.Scaler("node_loss_weight", "GraphNodeAttributeScaler", "grid",
                    {"nodes_name": nodes, "nodes_attribute_name": attr, "norm": "unit-sum"})
    var = table_variable_weights(ctx.names, training["loss_scaling"],
                                 training.get("pressure_level_scaler") or {}, ctx)
    return DatasetLoss("loss_scaling (anemoi-training 0.2)", [node], var)


def read_variable_loss_scaling(ctx: Context) -> DatasetLoss:
    """0.3/0.4: ``training_loss`` a ``WeightedMSELoss`` with ``scalars`` from {variable,
    loss_weights_mask}, node weights from ``training.node_loss_weights``."""
    training = ctx.cfg.get("training") or {}
    _refuse_string_output_mask(ctx)
    loss_cfg = per_dataset(training.get("training_loss") or {}, ctx.dataset) or {}
    tgt = str(loss_cfg.get("_target_"))
    if tgt not in _WEIGHTED_MSE:
        raise ctx.refuse("training.training_loss", f"{tgt!r} is not supported by anemoi-ckpt's "
                         "trainer", "only WeightedMSELoss is")
    scalars = list(loss_cfg.get("scalars") or [])
    for s in scalars:
        if s not in ("variable", "loss_weights_mask"):
            raise ctx.refuse("training.training_loss.scalars", f"names {s!r}, which anemoi-ckpt's "
                             "trainer does not compute")
    if "loss_weights_mask" in scalars and _has_imputer(ctx):
        raise ctx.refuse("training.training_loss.scalars", "applies loss_weights_mask with an "
                         "imputer, whose mask anemoi-ckpt's trainer does not compute")
    nw = training.get("node_loss_weights") or {}
    kind = _NODE_ATTRS.get(str(nw.get("_target_")))
    if kind is None:
        raise ctx.refuse("training.node_loss_weights", f"{nw.get('_target_')!r} is not supported by "
                         "anemoi-ckpt's trainer", f"supported: {', '.join(_NODE_ATTRS)}")
    node_cfg = {"nodes_name": nw.get("target_nodes"), "nodes_attribute_name": nw.get("node_attribute"),
                "norm": "unit-sum"}
    if kind == "ReweightedGraphNodeAttributeScaler":
        node_cfg.update(scaling_mask_attribute_name=nw.get("scaled_attribute"),
                        weight_frac_of_total=nw.get("weight_frac_of_total"))
    node = L.Scaler("node_loss_weights", kind, "grid", node_cfg)
    if "variable" in scalars:
        var = table_variable_weights(ctx.names, training["variable_loss_scaling"],
                                     training.get("pressure_level_scaler") or {}, ctx)
    else:
        var = torch.ones(len(ctx.names), dtype=torch.float32)
    return DatasetLoss("variable_loss_scaling (anemoi-training 0.3/0.4)", [node], var,
                       ignore_nans=bool(loss_cfg.get("ignore_nans", False)))


# ------------------------------------------------------------------ 0.5 on: scalers

def variable_info_0_5(name: str, groups: Mapping[str, Any],
                      meta: Mapping[str, Any] | None) -> L.VariableInfo:
    """0.5's ``ExtractVariableGroupAndLevel``: param and level from the mars metadata whenever it
    has a param (no trust check), else cracked from the name; groups are lists of params."""
    if "default" not in groups:
        raise ConfigError(None, "training.variable_groups has no 'default' group")
    mars = ((meta or {}).get(name) or {}).get("mars") or {}
    level = None
    if mars.get("param"):
        name, level = mars["param"], mars.get("levelist")
    param, cracked = L.crack_variable_name(name)
    level = cracked if cracked is not None else level
    group = groups["default"]
    for gname, spec in groups.items():  # "default" too: 0.5 inverts every entry
        if not isinstance(spec, (list, str)):
            raise ConfigError(None, f"training.variable_groups.{gname}: anemoi-training 0.5 groups "
                              "are lists of params")
        if param in ([spec] if isinstance(spec, str) else spec):
            group = gname  # the last group naming the param wins, as 0.5's dict inversion
    return L.VariableInfo(group, param, level)


def read_scalers(ctx: Context) -> DatasetLoss | None:
    """0.5 on: the ``training_loss`` and ``scalers`` of :func:`loss.loss_scalers` (None: no loss
    for this dataset, which anemoi-training skips as well)."""
    training = ctx.cfg.get("training") or {}
    loss_cfg = per_dataset(training["training_loss"], ctx.dataset)
    if loss_cfg is None:
        return None
    mask = per_dataset((ctx.cfg.get("model") or {}).get("output_mask") or {}, ctx.dataset) or {}
    if not isinstance(mask, Mapping) or mask.get("_target_") not in (
            None, "anemoi.training.utils.masks.NoOutputMask"):
        raise ctx.refuse("model.output_mask", f"{mask!r} is not supported by anemoi-ckpt's trainer")
    scalers_cfg = dict(per_dataset(training["scalers"], ctx.dataset) or {})
    old = ctx.release is not None and ctx.release < (0, 6)
    if old:  # 0.5 named NaNMaskScaler in its default loss: all ones without an imputer
        nan = [k for k, v in scalers_cfg.items()
               if isinstance(v, Mapping) and str(v.get("_target_", "")).endswith(_NAN_MASK)]
        if nan and _has_imputer(ctx):
            raise ctx.refuse(f"training.scalers.{nan[0]}", "masks imputed points, which "
                             "anemoi-ckpt's trainer does not compute")
        loss_cfg = {**loss_cfg, "scalers": [s for s in loss_cfg.get("scalers") or [] if s not in nan]}
        for k in nan:
            scalers_cfg.pop(k)
    where = f"training (dataset {ctx.dataset})"
    scalers = L.loss_scalers(loss_cfg, scalers_cfg, where)
    groups = per_dataset(training.get("variable_groups") or {"default": "sfc"}, ctx.dataset)
    ds_md = (ctx.md.get("dataset") or {}).get(ctx.dataset) or {}
    meta = ds_md.get("variables_metadata") if isinstance(ds_md, Mapping) else None
    info = variable_info_0_5 if old else L.variable_info
    infos = {n: info(n, groups, meta) for n in ctx.names}
    if old:  # 0.5's GeneralVariableLossScaler: a param without a weight gets 1, not `default`
        scalers = [L.Scaler(s.name, s.kind, s.dim, {**s.config, "weights": {
            **(s.config.get("weights") or {}), "default": 1.0}})
            if s.kind == "GeneralVariableLossScaler" else s for s in scalers]
    return DatasetLoss("scalers (anemoi-training 0.5+)", scalers, L.variable_weights(scalers, infos),
                       ignore_nans=bool(loss_cfg.get("ignore_nans", False)),
                       groups={n: i.group for n, i in infos.items()})


#: layout -> its reader
READERS: dict[str, Callable[[Context], DatasetLoss | None]] = {
    "scalers": read_scalers,
    "variable_loss_scaling": read_variable_loss_scaling,
    "loss_scaling": read_loss_scaling,
}


def read_dataset_loss(md: Mapping[str, Any], dataset: str, names: Sequence[str]) -> DatasetLoss | None:
    """One dataset's loss from the file's anemoi metadata, whatever release wrote it."""
    cfg = md.get("config") or {}
    ctx = Context(cfg, md, dataset, tuple(names), release_of(md))
    layout = layout_of(cfg.get("training") or {})
    if layout is None:
        raise ctx.refuse("training", "has no loss definition anemoi-ckpt's trainer reads",
                         "one of: training_loss + scalers (0.5+), variable_loss_scaling (0.3/0.4), "
                         "loss_scaling (0.2)")
    spec = READERS[layout](ctx)
    if spec is not None and spec.ignore_nans and (layout != "scalers" or (
            ctx.release is not None and ctx.release < (0, 14))):
        # before 0.14 ignore_nans reduced with nanmean/nansum (a mean over the non-NaN variables);
        # from 0.14 NaNs are zeroed before a plain mean, which is what loss.weighted_mse does
        raise ctx.refuse("training.training_loss.ignore_nans", "is true: that release's nanmean "
                         "reduction is not reproduced by anemoi-ckpt's trainer")
    return spec
