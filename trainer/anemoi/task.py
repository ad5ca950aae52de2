"""The ``anemoi`` task: an anemoi base fine-tuned on an anemoi-datasets dataset with anemoi's loss.

Everything the data must agree with comes from the base file's own metadata
(:class:`~anemoi_ckpt.trainer.anemoi.info.ModelData`: variables and their order, grid, frequency,
time step, multi-step input); the windows are cut by :mod:`~anemoi_ckpt.trainer.anemoi.data` and
refused there, with one line, before training. The loss is anemoi-training's default forecast loss
(:mod:`~anemoi_ckpt.trainer.anemoi.objective`): normalised by the model's own pre-processors (the
statistics recorded in the file), weighted by the graph's node area weights and the training
config's variable weights, over ``rollout`` steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...reader import Checkpoint
from ..config import ConfigError, TrainConfig
from .data import train_and_validation
from .info import ModelData
from .objective import ForecastObjective


class AnemoiTask:
    name = "anemoi"

    def __init__(self, cfg: TrainConfig, model: nn.Module, base: Checkpoint) -> None:
        d = cfg.data
        assert d.dataset is not None and d.validation is not None  # the config validator's job
        info = ModelData.from_metadata(base.anemoi_metadata, base.path, base.supporting_arrays)
        self.rollout = cfg.rollout
        self.train, val = train_and_validation(d.dataset, info, start=d.start, end=d.end,
                                               validation=d.validation.model_dump(), rollout=cfg.rollout)
        assert val is not None
        self.val = val
        if len(self.train) < d.batch_size:
            raise ConfigError(None, f"data: the training period holds {len(self.train)} samples, fewer "
                              f"than data.batch_size ({d.batch_size})", "give a longer period or a "
                              "smaller batch")
        self.objective = ForecastObjective.from_checkpoint(base, model)
        self.batch_size = d.batch_size

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return self.objective(model, batch, rollout=self.rollout)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> float:
        """The loss over every validation window (eval mode), each window weighing the same."""
        was = model.training
        model.eval()
        total = 0.0
        for start in range(0, len(self.val), self.batch_size):
            batch = torch.stack([self.val[i] for i in range(start, min(len(self.val), start + self.batch_size))])
            total += self.objective.evaluate(model, batch, rollout=self.rollout) * len(batch)
        model.train(was)
        return total / len(self.val)

    def describe(self) -> dict[str, Any]:
        return {**self.train.describe(), "rollout": self.rollout, "loss": self.objective.describe()}

    def describe_val(self) -> dict[str, Any]:
        return {**self.val.describe(), "rollout": self.rollout}
