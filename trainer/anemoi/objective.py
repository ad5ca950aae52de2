"""anemoi-training's forecast objective for a model built from an ``.anc``.

What ``SingleTraining._step`` with the ``Forecaster`` task does, written out: normalise the raw
batch with the model's own pre-processors, feed the first ``multistep_input`` steps of the input
variables, score the prediction against the next ``multistep_output`` steps with the file's loss
(:mod:`.loss`), and for ``rollout > 1`` feed the prediction back (prognostic variables from the
prediction, forcings from the batch), averaging the per-step losses. The weights come from the
file: node weights from its graph (cos-latitude where the file has none), variable and output-step
weights from its training config, read in the layout of the release that wrote it
(:mod:`.legacy_loss`). ``tests/test_anemoi_loss.py`` checks the result against anemoi-training
0.17.1's own training step, ``tests/test_anemoi_loss_releases.py`` against every release's since
0.2.2 (their rollout and reduction are the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..config import ConfigError
from . import legacy_loss as LL
from . import loss as L

_FORECASTERS = ("anemoi.training.tasks.Forecaster", "anemoi.training.tasks.forecaster.Forecaster")
_SINGLE = ("anemoi.training.train.methods.SingleTraining",
           "anemoi.training.train.methods.single.SingleTraining")


@dataclass(frozen=True)
class LossWeights:
    """One dataset's loss weights and where each came from (``describe()``, for lineage)."""

    dataset: str
    variables: tuple[str, ...]  # the model's output variables, in its output order
    node: Tensor  # (grid,)
    variable: Tensor  # (len(variables),)
    time: Tensor  # (multistep_output,)
    ignore_nans: bool = False
    sources: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "loss": "MSELoss (anemoi-training's reduction)",
                "ignore_nans": self.ignore_nans, **self.sources,
                "variable_weights": L.describe_weights(self.variables, self.variable),
                "time_weights": [float(v) for v in self.time.tolist()],
                "node_weights": {"count": int(self.node.numel()), "sum": float(self.node.sum()),
                                 "min": float(self.node.min()), "max": float(self.node.max())}}


def _check_training_config(cfg: Mapping[str, Any]) -> None:
    """Refuse, with one line, a training set-up whose objective is not the one computed here."""
    training = cfg.get("training") or {}
    method = (training.get("method") or {}).get("_target_")
    if method is not None and method not in _SINGLE:
        raise ConfigError(None, f"training.method {method!r} of the file's training config is not "
                          "supported by anemoi-ckpt's trainer", "only SingleTraining is")
    task = (cfg.get("task") or {}).get("_target_")
    if task is not None and task not in _FORECASTERS:
        raise ConfigError(None, f"task {task!r} of the file's training config is not supported by "
                          "anemoi-ckpt's trainer", "only Forecaster is")
    if training.get("loss_gradient_scaling"):
        raise ConfigError(None, "training.loss_gradient_scaling of the file's training config is "
                          "not supported by anemoi-ckpt's trainer")


def _node_weights(scalers: list[L.Scaler], dataset: str, graph: Any, latlons: Tensor,
                  ) -> tuple[Tensor, dict[str, Any]]:
    grid = [s for s in scalers if s.dim == "grid"]
    if not grid:
        return torch.ones(latlons.shape[0]), {"node_source": "none: every grid point weighs 1"}
    w, src = None, []
    for s in grid:
        attr, norm = s.config.get("nodes_attribute_name"), s.config.get("norm")
        if graph is None:
            v = L.cos_latitude_weights(torch.rad2deg(latlons[:, 0]), norm)
            src.append({"scaler": s.name, "kind": "cos-latitude fallback (the file has no graph, "
                        f"so no {attr!r} node attribute)", "norm": norm})
        else:
            # 0.2 to 0.9 name the data nodes (the dataset's name from 0.10 on)
            node_type = s.config.get("nodes_name") or dataset
            nodes = graph[node_type] if node_type in graph.node_types else None
            if nodes is None or attr not in nodes:
                raise ConfigError(None, f"scaler {s.name!r}: the file's graph has no node attribute "
                                  f"{node_type}.{attr}")
            mask_attr = s.config.get("scaling_mask_attribute_name")
            if mask_attr is not None and mask_attr not in nodes:
                raise ConfigError(None, f"scaler {s.name!r}: the file's graph has no node attribute "
                                  f"{node_type}.{mask_attr}")
            v = L.node_weights(nodes[attr], norm, inverse=bool(s.config.get("inverse", False)),
                               mask=None if mask_attr is None else nodes[mask_attr],
                               weight_frac_of_total=s.config.get("weight_frac_of_total"))
            src.append({"scaler": s.name, "kind": s.kind, "graph": f"{node_type}.{attr}", "norm": norm})
        w = v if w is None else w * v
    if w.shape[0] != latlons.shape[0]:
        raise ConfigError(None, f"node weights of dataset {dataset!r} have {w.shape[0]} values for "
                          f"{latlons.shape[0]} grid points")
    return w, {"node_source": src}


def build_loss_weights(md: Mapping[str, Any], interface: Any, graph: Any = None,
                       ) -> dict[str, LossWeights]:
    """The loss weights of every dataset the file's training loss covers, from its anemoi metadata
    ``md``, the built ``interface`` (data indices, grid) and its training ``graph`` (None: an
    inference-converted file; node weights fall back to cos-latitude). The loss definition is read
    in the layout of the release that wrote the file (:mod:`.legacy_loss`)."""
    cfg = md.get("config") or {}
    _check_training_config(cfg)
    release = LL.release_of(md)
    out = {}
    for name, idx in interface.data_indices.items():
        names = sorted(idx.model.output.name_to_index, key=idx.model.output.name_to_index.get)
        spec = LL.read_dataset_loss(md, name, names)
        if spec is None:  # anemoi-training skips it as well
            continue
        # (grid, 2) latitude and longitude in radians; the buffer latlons_<name> holds their
        # sines and cosines ([sin lat, sin lon, cos lat, cos lon]), not the angles
        latlons = interface.model.node_attributes.get_coordinates(name)
        node, src = _node_weights(spec.scalers, name, graph, latlons)
        out[name] = LossWeights(
            dataset=name, variables=tuple(names), node=node, variable=spec.variable,
            time=L.time_weights(spec.scalers, int(interface.n_step_output)),
            ignore_nans=spec.ignore_nans,
            sources={"layout": spec.layout,
                     "release": ".".join(map(str, release)) if release else None,
                     "scalers": [{"name": s.name, "kind": s.kind, "dim": s.dim} for s in spec.scalers],
                     "variable_groups": spec.groups, **src})
    if not out:
        raise ConfigError(None, "the file's training config has a loss for none of the model's datasets")
    return out


def advance_input(x: Tensor, y_pred: Tensor, batch: Tensor, idx: Any, step: int, n_in: int,
                  n_out: int) -> Tensor:
    """``Forecaster._advance_dataset_input`` (no output mask): the input window moves by the kept
    steps; at each new step the predicted prognostic variables and the batch's forcings of that
    valid time. ``x`` (B, n_in, E, G, V_in), ``y_pred`` (B, n_out, E, G, V_out), ``batch`` the
    normalised batch; ``step`` the rollout step that produced ``y_pred``. Returns a new tensor."""
    keep = min(n_in, n_out)
    x = x.roll(-keep, dims=1)
    outputs = [n_in + step * n_out + i for i in range(n_out)]  # batch positions of y_pred's steps
    for i in range(keep):
        x[:, -(i + 1), ..., idx.model.input.prognostic] = \
            y_pred[:, -(i + 1), ..., idx.model.output.prognostic]
        x[:, -(i + 1), ..., idx.model.input.forcing] = \
            batch[:, outputs[-(i + 1)], ..., idx.data.input.forcing]
    return x


class ForecastObjective:
    """anemoi-training's forecast loss for ``interface`` (an ``AnemoiModelInterface``).

    The model called for the forward is the one passed to :meth:`__call__` (a PEFT model wrapping
    the interface, for LoRA); the interface gives the pre-processors and the data indices."""

    def __init__(self, interface: Any, weights: Mapping[str, LossWeights]) -> None:
        self.interface = interface
        self.weights = dict(weights)
        self.n_step_input = int(interface.n_step_input)
        self.n_step_output = int(interface.n_step_output)

    @classmethod
    def from_checkpoint(cls, ck: Any, interface: Any) -> ForecastObjective:
        """From an open ``.anc`` (``anemoi_ckpt.reader.Checkpoint``) and the model built from it."""
        graph = None
        if "graph" in ck.tensor_sections():
            from anemoi_ckpt.anemoi.graph import graph_from_section

            graph = graph_from_section(ck)
        try:
            return cls(interface, build_loss_weights(ck.anemoi_metadata, interface, graph))
        except ConfigError as e:
            raise ConfigError(getattr(ck, "path", None), e.what, e.hint) from None

    def describe(self) -> dict[str, Any]:
        return {"multistep_input": self.n_step_input, "multistep_output": self.n_step_output,
                "datasets": {n: w.describe() for n, w in self.weights.items()}}

    def steps_needed(self, rollout: int = 1) -> int:
        """Time steps a batch must hold: the inputs, then ``multistep_output`` per rollout step."""
        return self.n_step_input + rollout * self.n_step_output

    def _normalised(self, batch: Tensor | Mapping[str, Tensor], rollout: int) -> dict[str, Tensor]:
        if isinstance(batch, Tensor):
            if len(self.interface.data_indices) != 1:
                raise ConfigError(None, "the model has several datasets: pass the batch as "
                                  "{dataset: tensor}")
            batch = {next(iter(self.interface.data_indices)): batch}
        out = {}
        for name, b in batch.items():
            nvar = len(self.interface.data_indices[name].name_to_index)
            if b.dim() != 5 or b.shape[-1] != nvar or b.shape[1] < self.steps_needed(rollout):
                raise ConfigError(None, f"batch of dataset {name!r} has shape {tuple(b.shape)}",
                                  f"expected (batch, >= {self.steps_needed(rollout)} steps, "
                                  f"ensemble, grid, {nvar} variables) for rollout {rollout}")
            # a copy: the caller's batch stays raw (anemoi-training normalises its own in place)
            out[name] = self.interface.pre_processors[name](b, in_place=False)
        return out

    def step_losses(self, model: Any, batch: Tensor | Mapping[str, Tensor], rollout: int = 1,
                    ) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """The loss of each rollout step (summed over datasets) and the normalised predictions."""
        if rollout < 1:
            raise ConfigError(None, f"rollout {rollout}: must be at least 1")
        norm = self._normalised(batch, rollout)
        n_in, n_out = self.n_step_input, self.n_step_output
        indices = self.interface.data_indices
        x = {n: b[:, :n_in][..., indices[n].data.input.full] for n, b in norm.items()}
        losses, preds = [], []
        for step in range(rollout):
            y_pred = model(x)
            t0 = n_in + step * n_out
            total = None
            for name, w in self.weights.items():
                full = indices[name].name_to_index
                target = norm[name][:, t0:t0 + n_out][..., [full[v] for v in w.variables]]
                part = L.weighted_mse(y_pred[name], target, w.node, w.variable, w.time,
                                      ignore_nans=w.ignore_nans)
                total = part if total is None else total + part
            losses.append(total)
            preds.append(y_pred)
            if step < rollout - 1:
                x = {n: advance_input(x[n], y_pred[n], norm[n], indices[n], step, n_in, n_out)
                     for n in x}
        return losses, preds

    def __call__(self, model: Any, batch: Tensor | Mapping[str, Tensor], rollout: int = 1) -> Tensor:
        """The training loss: the mean over rollout steps, as ``SingleTraining._step``."""
        losses, _ = self.step_losses(model, batch, rollout)
        return torch.stack(losses).sum() / len(losses)

    @torch.no_grad()
    def evaluate(self, model: Any, batch: Tensor | Mapping[str, Tensor], rollout: int = 1) -> float:
        """The validation loss (no gradients)."""
        return float(self(model, batch, rollout))

    @torch.no_grad()
    def predict_next(self, model: Any, batch: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The model's normalised prediction of the ``multistep_output`` steps after the inputs."""
        return self.step_losses(model, batch, 1)[1][0]
