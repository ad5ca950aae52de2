"""The LightningModule (the task's loss) and the resumable batch loader it trains on.

Exact resume needs three things beyond weights and optimizer state, all handled here:

- the batch order: :class:`BatchLoader` draws each epoch's permutation from its own generator
  seeded by ``(seed, epoch)`` - never from the global RNG - and its position is the number of
  batches *trained on* (advanced by ``training_step``), not the number handed out, because
  Lightning's fetcher reads one batch ahead. It implements ``state_dict``/``load_state_dict``, so
  Lightning saves it with the fit loop and restores it before the first resumed batch;
- the RNG states (torch, numpy, python ``random``): captured in ``on_save_checkpoint`` and put
  back in ``on_train_start``, the last moment before the first resumed step, so nothing Lightning
  does during setup can draw from them in between;
- a learning-rate schedule that depends only on the step (``schedule.total_steps``).
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from .config import TrainConfig
from .methods import trainable_names
from .tasks import next_state_mse

PREFIX = "model."  # the LightningModule's attribute holding the model: its state-dict prefix


class BatchLoader:
    """Batches of ``dataset`` (``default_collate`` of its items: ``(x, y)`` pairs of the synthetic
    data, the windows of an anemoi dataset) in a per-epoch shuffled order; resumable mid-epoch."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        n = len(dataset)  # type: ignore[arg-type]
        if n < batch_size:
            raise ValueError(f"data.n_samples ({n}) is smaller than data.batch_size ({batch_size})")
        self.n_batches = n // batch_size  # drop the last partial batch: every step sees batch_size
        self.epoch, self.pos = 0, 0        # the next batch to train on
        self.rank, self.world_size = 0, 1  # this process's slice of every (global) batch

    def shard(self, rank: int, world_size: int) -> None:
        """Hand this process the ``rank``-th of ``world_size`` equal, disjoint slices of every
        batch: the global batch (``batch_size`` samples, their order) is the single-process one,
        whatever the number of processes, and the position (``state_dict``) is shared by all."""
        if self.batch_size % world_size:
            raise ValueError(f"data.batch_size ({self.batch_size}) is not divisible by the "
                             f"{world_size} processes (devices x num_nodes)")
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.n_batches

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.dataset), generator=g)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if self.pos >= self.n_batches:  # the previous epoch was trained to its end
            self.epoch, self.pos = self.epoch + 1, 0
        order = self._order(self.epoch)
        for b in range(self.pos, self.n_batches):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            part = self.batch_size // self.world_size
            idx = idx[self.rank * part:(self.rank + 1) * part]
            yield default_collate([self.dataset[i] for i in idx])

    def advance(self) -> None:
        """One batch trained (called by the module, not by the iterator: see the module doc)."""
        self.pos += 1

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def rng_states() -> dict[str, Any]:
    """The global RNG states, JSON-friendly apart from torch's (a uint8 tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, state, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "python": {"version": version, "state": list(state), "gauss_next": gauss_next}}


def set_rng_states(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def _lr_lambda(cfg: TrainConfig, total: int):  # noqa: ANN202 - a closure for LambdaLR
    warm, cosine = cfg.schedule.warmup_steps, cfg.schedule.name == "cosine"

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return factor


class WeatherModule(L.LightningModule):
    """Wraps the model (plain or PEFT) as ``self.model``; trains on ``loss(model, batch)`` (the
    task's: next-state MSE for the synthetic data, anemoi's forecast loss for an anemoi base)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, loader: BatchLoader | None = None,
                 total_steps: int = 1,
                 loss: Callable[[nn.Module, Any], torch.Tensor] = next_state_mse) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss
        self.cfg = cfg
        self.loader = loader
        self.total_steps = total_steps
        self.last_loss: float | None = None
        # The RNG states training starts from: those of now (after the seed and the LoRA init),
        # put back in on_train_start - a resume replaces them with the saved ones. Lightning's
        # DDP/FSDP setup re-seeds every process (reset_seed) in between; restoring them keeps
        # a sharded run on the single-process stream.
        self._rng_to_restore: dict[str, Any] | None = rng_states()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def setup(self, stage: str) -> None:
        # in every process, once it knows its rank: its slice of every global batch
        if self.loader is not None and self.trainer.world_size > 1:
            self.loader.shard(self.trainer.global_rank, self.trainer.world_size)

    def configure_model(self) -> None:
        """FSDP2 (``strategy: fsdp``, Lightning's ModelParallelStrategy sets the device mesh):
        shard the model over the data-parallel dimension. A no-op for every other strategy."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None:
            return
        from .sharding import is_sharded, shard_model

        if not is_sharded(self.model):
            shard_model(self.model, mesh["data_parallel"])

    def trainable_names(self) -> list[str]:
        """Trainable parameters named relative to the model (no ``model.`` prefix), in the
        order :meth:`configure_optimizers` hands them to the optimizer."""
        return trainable_names(self.model)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self.model, batch)
        if self.trainer.world_size > 1:  # the global batch's loss (equal slices: mean of means)
            self.last_loss = float(self.trainer.strategy.reduce(loss.detach().clone(), reduce_op="mean"))
        else:
            self.last_loss = float(loss.detach())
        if self.loader is not None:
            self.loader.advance()
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        o = self.cfg.optimizer
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(self.cfg, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- checkpoint hooks: what Lightning itself does not keep ----------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        checkpoint["last_loss"] = self.last_loss
        checkpoint["trainable"] = self.trainable_names()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")
        self.last_loss = checkpoint.get("last_loss")

    def on_train_start(self) -> None:
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
