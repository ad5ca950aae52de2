"""``strategy: ddp | fsdp``: the Lightning strategies the trainer runs sharded, and the full-state helpers.

- ``ddp``: Lightning's :class:`DDPStrategy` (gloo on CPU, NCCL on CUDA: Lightning's default for the
  device). Every rank holds the whole model; :class:`AncCheckpointIO` is called on global rank 0 only.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) through Lightning's
  :class:`ModelParallelStrategy` (pure data parallel: ``data_parallel_size`` = world size, no tensor
  parallelism). Lightning's ``FSDPStrategy`` wraps the model in FSDP1, whose full-checkpoint loading
  bypasses the ``CheckpointIO`` (it reads a torch pickle), so it cannot resume from an ``.anc``; FSDP2
  runs on CPU with gloo. :class:`Fsdp2Strategy` gathers the FULL state to rank 0 for every save -
  weights by name, optimizer state keyed by parameter name (``get_optimizer_state_dict``, never by
  position) - so the training ``.anc`` is the one a single process writes, and loads an ``.anc``
  (written by any strategy) on every rank with ``set_model_state_dict``/``set_optimizer_state_dict``.

The modules sharded (:func:`shard_model`): every child of an ``nn.ModuleList`` (the processor
blocks), then the model itself (everything else).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn

from .module import PREFIX


def full_state_options(**kw: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def shard_model(model: nn.Module, mesh: Any) -> None:
    """FSDP2 ``fully_shard`` each block of every ``ModuleList``, then the root (in place)."""
    from torch.distributed.fsdp import fully_shard

    for sub in model.modules():
        if isinstance(sub, nn.ModuleList):
            for block in sub:
                if any(True for _ in block.parameters()):
                    fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a (possibly FSDP2-sharded) model: a collective (every rank calls it);
    rank 0 gets every tensor on CPU, the other ranks an empty dict. Unsharded: the state dict."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=full_state_options())


class Fsdp2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism whose checkpoints are full states written through the CheckpointIO."""

    strategy_name = "anc_fsdp2"

    def __init__(self, world_size: int, **kw: Any) -> None:
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1,
                         save_distributed_checkpoint=False, **kw)

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        assert self.model is not None
        # keyed by fully qualified parameter name (``model.<name>``); empty except on rank 0
        return get_optimizer_state_dict(self.model, optimizer, options=full_state_options())

    def load_checkpoint(self, checkpoint_path: str | os.PathLike, weights_only: bool | None = None) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        path = self.broadcast(os.fspath(checkpoint_path))
        checkpoint = self.checkpoint_io.load_checkpoint(path)  # every rank reads the full state
        assert self.model is not None and self.lightning_module is not None
        set_model_state_dict(self.model, checkpoint.pop("state_dict"),
                             options=full_state_options(strict=self.lightning_module.strict_loading))
        names = self.lightning_module.trainable_names()  # the IO re-keyed the state by this order
        for optimizer, osd in zip(self.optimizers, checkpoint.get("optimizer_states") or []):
            fqn = {i: PREFIX + n for i, n in enumerate(names)}
            named = {"state": {fqn[i]: s for i, s in osd["state"].items()},
                     "param_groups": [{**g, "params": [fqn[i] for i in g["params"]]} for g in osd["param_groups"]]}
            set_optimizer_state_dict(self.model, optimizer, named, options=full_state_options())
        return checkpoint


def make_strategy(name: str, world_size: int) -> Any:
    """The Lightning strategy for ``strategy:`` (``auto`` with one process stays ``auto``)."""
    if name == "fsdp":
        return Fsdp2Strategy(world_size)
    if name == "ddp" or world_size > 1:
        return DDPStrategy()
    return "auto"
