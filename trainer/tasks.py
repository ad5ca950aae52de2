"""What a run trains on and what it minimises: a *task* per kind of base, in a registry.

- ``synthetic``: the built-in synthetic atmosphere on the reference model's grid, MSE of the next
  state (no files; the demo and the tests);
- ``anemoi``: an anemoi-datasets dataset through the base file's own metadata, anemoi-training's
  forecast loss (:mod:`anemoi_ckpt.trainer.anemoi.task`, imported only when chosen).

A task opens its data, checks it against the model (one line before training), computes the
training loss of a batch and the validation loss of a model, and describes both datasets for lineage.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import ConfigError, TrainConfig
from .data import SyntheticWeather

VAL_SEED_OFFSET = 10_000  # the validation set's seed: data.seed + this (never the training samples)


class Task(Protocol):
    name: str
    train: Dataset
    val: Dataset

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module) -> float: ...

    def describe(self) -> dict[str, Any]: ...

    def describe_val(self) -> dict[str, Any]: ...


class SyntheticTask:
    """The reference model on :class:`SyntheticWeather` (``data.variant``), MSE of the next state."""

    name = "synthetic"

    def __init__(self, cfg: TrainConfig, model: nn.Module, spec: dict[str, Any]) -> None:
        grid = {"n_lat": getattr(model, "n_lat", None), "n_lon": getattr(model, "n_lon", None)}
        for key, have in grid.items():
            want = getattr(cfg.data, key)
            if want is not None and have is not None and want != have:
                raise ConfigError(None, f"data.{key}: {want}, but the model's grid has {key} {have}")
        n_vars = getattr(model, "n_vars", None)
        if None in (grid["n_lat"], grid["n_lon"], n_vars):
            raise ConfigError(None, f"the model ({spec.get('builder')}) has no n_lat/n_lon/n_vars: the "
                              "synthetic dataset cannot be laid on its grid",
                              "an anemoi base trains on an anemoi-datasets dataset: give data.dataset")
        d = cfg.data
        dims = dict(n_lat=grid["n_lat"], n_lon=grid["n_lon"], n_vars=n_vars)
        if d.n_samples < d.batch_size:
            raise ConfigError(None, f"data.n_samples ({d.n_samples}) is smaller than data.batch_size ({d.batch_size})")
        self.train = SyntheticWeather(d.n_samples, seed=d.seed, variant=d.variant, **dims)
        self.val = SyntheticWeather(d.val_samples, seed=d.seed + VAL_SEED_OFFSET, variant="regional", **dims)

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return next_state_mse(model, batch)

    def evaluate(self, model: nn.Module) -> float:
        return evaluate(model, self.val)

    def describe(self) -> dict[str, Any]:
        return self.train.describe()

    def describe_val(self) -> dict[str, Any]:
        return self.val.describe()


def next_state_mse(model: nn.Module, batch: Any) -> torch.Tensor:
    """The synthetic task's loss: MSE of the predicted next state."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


@torch.no_grad()
def evaluate(model: nn.Module, data: SyntheticWeather, batch_size: int = 16) -> float:
    """Mean squared error of the predicted next state over ``data`` (eval mode, no dropout)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data), batch_size):
        xs, ys = zip(*(data[i] for i in range(start, min(len(data), start + batch_size))))
        x, y = torch.stack(xs), torch.stack(ys)
        total += float(nn.functional.mse_loss(model(x), y, reduction="sum"))
        count += y.numel()
    model.train(was)
    return total / count


def _anemoi(cfg: TrainConfig, model: nn.Module, spec: dict[str, Any], base: Any) -> Task:
    from .anemoi.task import AnemoiTask

    return AnemoiTask(cfg, model, base)


TaskFactory = Callable[[TrainConfig, nn.Module, dict[str, Any], Any], Task]
#: task name -> factory(cfg, model, spec, base checkpoint or None)
TASKS: dict[str, TaskFactory] = {
    "synthetic": lambda cfg, model, spec, base: SyntheticTask(cfg, model, spec),
    "anemoi": _anemoi,
}


def choose_task(cfg: TrainConfig, spec: dict[str, Any]) -> str:
    """``anemoi`` for an anemoi base (which needs ``data.dataset``), else ``synthetic``."""
    anemoi_base = spec.get("builder") == "anemoi"
    if anemoi_base and cfg.data.dataset is None:
        raise ConfigError(None, "the base is an anemoi model: give data.dataset (what anemoi-datasets' "
                          "open_dataset accepts), data.start/end and data.validation")
    if cfg.data.dataset is not None and not anemoi_base:
        raise ConfigError(None, f"data.dataset is for anemoi bases; this base is built by "
                          f"{spec.get('builder')!r}", "leave data.dataset out to train on the built-in "
                          "synthetic data")
    return "anemoi" if anemoi_base else "synthetic"


def make_task(cfg: TrainConfig, model: nn.Module, spec: dict[str, Any], base: Any) -> Task:
    return TASKS[choose_task(cfg, spec)](cfg, model, spec, base)
