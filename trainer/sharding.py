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

A tensor registered under two names (anemoi's GraphTransformer mappers tie a layer norm) is saved
as a single process saves it - one tensor and an alias (:func:`tie_shared`) - and loaded once.
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


def shared_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for every parameter or buffer registered under more than one name (the
    first name in ``named_parameters``/``named_buffers`` order is the one kept). anemoi's
    GraphTransformer mappers register their ``layer_norm_attention`` again as
    ``layer_norm_attention_dest``: one tensor, two state-dict names."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, t in (*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)):
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def tie_shared(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Point every alias at its target's tensor, as ``model.state_dict()`` does. The full-state
    gather copies each name to CPU apart, so a tied weight would come back as two equal tensors
    and be written twice instead of as one tensor and an alias: not the file a single process
    writes. In place; returns ``state``."""
    for alias, name in shared_aliases(model).items():
        if alias in state and name in state:
            state[alias] = state[name]
    return state


def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of a (possibly FSDP2-sharded) model: a collective (every rank calls it);
    rank 0 gets every tensor on CPU, the other ranks an empty dict. Unsharded: the state dict."""
    if not is_sharded(model):
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return tie_shared(get_model_state_dict(model, options=full_state_options()), model)


class Fsdp2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism whose checkpoints are full states written through the CheckpointIO."""

    strategy_name = "anc_fsdp2"

    def __init__(self, world_size: int, **kw: Any) -> None:
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1,
                         save_distributed_checkpoint=False, **kw)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The full model state on rank 0 (empty elsewhere), shared tensors tied (:func:`tie_shared`)."""
        assert self.model is not None
        return gather_full_state(self.model)

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
        # torch distributes the full state over the shards by the model's deduplicated names, so a
        # tied tensor's other name would reach load_state_dict as a plain tensor (a "mixed Tensor
        # and DTensor" error): load each tensor once, by its first name, and check strictness here
        aliases = shared_aliases(self.model)
        state = {k: v for k, v in checkpoint.pop("state_dict").items() if k not in aliases}
        keys = set_model_state_dict(self.model, state, options=full_state_options(strict=False))
        missing = [k for k in keys.missing_keys if k not in aliases]
        if self.lightning_module.strict_loading and (missing or keys.unexpected_keys):
            raise RuntimeError(f"{path}: the training file does not fit the model: missing {missing}, "
                               f"unexpected {list(keys.unexpected_keys)}")
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
