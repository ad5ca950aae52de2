"""``.anc`` checkpoints from inside anemoi-training: the :class:`AncCheckpoint` callback.

anemoi-training's own ``AnemoiCheckpoint`` decides when to save and what to call the files; every
training checkpoint it writes goes through the strategy's ``CheckpointIO`` (``trainer.save_checkpoint``)
and every removal (its ``num_models_saved`` rotation) through ``strategy.remove_checkpoint``. The
callback wraps that ``CheckpointIO`` in ``setup`` (before Lightning restores a ``ckpt_path``), so:

- each save of ``<name>.ckpt`` is noted; once anemoi-training has finished the save (its metadata
  added to the zip, the ``inference-<name>.ckpt`` pickle beside it), the pair is converted with
  :func:`anemoi_ckpt.convert` - never unpickled, every tensor verified bit for bit, each file one
  atomic rename - to ``<name>.anc`` (kind ``training``: weights, optimizer state by parameter
  name, loop state, the graph, hyper-parameters) and ``inference-<name>.anc`` (kind
  ``inference``: weights, buffers, anemoi metadata, supporting arrays), which
  ``anemoi_ckpt.anemoi.load_model`` and ``anemoi-inference``'s ``runner: anc`` read. For a LoRA
  run (:class:`~anemoi_ckpt.anemoi.training.LoRA`) the adapter, taken from the live model at
  the moment of the save, goes to ``adapter-<name>.anc``;
- with ``replace_pickles: true`` the pickles are deleted once their ``.anc`` twins are verified;
- a removal removes the ``.anc`` twins too, so both follow the same ``num_models_saved``;
- loading a ``*.anc`` path (``system.input.warm_start: .../last.anc``) rebuilds Lightning's
  checkpoint dict from the training file (:mod:`.resume`), so the run continues from it.

Lightning calls ``save_checkpoint`` on global rank 0 only; the conversions also run on rank 0
only. Conversions happen at the next hook after the save (the end of the batch, epoch or fit), when
anemoi-training has written both pickles completely.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ...convert import convert
from .resume import lightning_checkpoint

LOGGER = logging.getLogger(__name__)
SUFFIX = ".anc"


def anc_twin(path: str | os.PathLike) -> Path:
    """``<name>.anc`` beside ``<name>.ckpt`` (any suffix replaced)."""
    p = Path(path)
    return p.with_name(p.stem + SUFFIX) if p.suffix else p.with_name(p.name + SUFFIX)


def inference_pickle(path: str | os.PathLike) -> Path:
    """anemoi-training's name for the inference twin of a training checkpoint."""
    p = Path(path)
    return p.with_name("inference-" + p.name)


def adapter_twin(path: str | os.PathLike) -> Path:
    return anc_twin(Path(path).with_name("adapter-" + Path(path).name))


class AncCheckpointIO:
    """The strategy's ``CheckpointIO``, with ``.anc`` twins: saves are passed on and noted for
    the callback, ``.anc`` paths are loaded without unpickling, removals remove the twins."""

    def __init__(self, inner: Any, owner: AncCheckpoint) -> None:
        self.inner = inner
        self.owner = owner

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self.owner.saved(os.fspath(path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if os.fspath(path).endswith(SUFFIX):
            if self.owner.module is None:
                raise RuntimeError("AncCheckpoint: a .anc resume before setup")
            return lightning_checkpoint(path, self.owner.module)
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)
        for twin in (anc_twin(path), adapter_twin(path)):
            twin.unlink(missing_ok=True)

    def teardown(self) -> None:
        self.inner.teardown()

    def __getattr__(self, name: str) -> Any:  # anything else the strategy asks of its plugin
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class AncCheckpoint(pl.Callback):
    """Write an anemoi-training run's checkpoints as ``.anc`` too (or instead), on the schedule
    of its own checkpoint callback (``diagnostics.checkpoint``)::

        diagnostics:
          callbacks:
            - _target_: anemoi_ckpt.anemoi.training.AncCheckpoint
              replace_pickles: false   # true: keep only the .anc files

    ``inference``/``adapter``: whether to write those files (both by default).
    """

    def __init__(self, replace_pickles: bool = False, inference: bool = True, adapter: bool = True,
                 durable: bool = True) -> None:
        super().__init__()
        self.replace_pickles = bool(replace_pickles)
        self.inference = bool(inference)
        self.adapter = bool(adapter)
        self.durable = bool(durable)
        self.module: pl.LightningModule | None = None
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, dict[str, Any]] = {}
        #: every file written, in order: (pickle it twins, .anc path)
        self.written: list[tuple[str, str]] = []

    # --- hooks -----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.module, self._trainer = pl_module, trainer
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, AncCheckpointIO):
            trainer.strategy.checkpoint_io = AncCheckpointIO(io, self)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.flush()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.flush()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.flush()

    # --- saving ----------------------------------------------------------------------------
    def saved(self, path: str) -> None:
        """A training checkpoint was written at ``path`` (rank 0): note it, with the adapter of a
        LoRA run as it is now (training goes on before the conversion)."""
        entry: dict[str, Any] = {}
        if self.adapter and self.module is not None:
            entry["adapter"] = _adapter_now(self.module)
        self._pending[path] = entry  # saved again before a flush: the last save is what counts

    def flush(self) -> None:
        """Convert every noted checkpoint and its inference twin (rank 0)."""
        if self._trainer is not None and not self._trainer.is_global_zero:
            self._pending.clear()
            return
        while self._pending:
            path, entry = next(iter(self._pending.items()))
            del self._pending[path]
            self._write(Path(path), entry)

    def _write(self, ckpt: Path, entry: dict[str, Any]) -> None:
        done: list[Path] = []
        pairs = [(ckpt, anc_twin(ckpt))]
        if self.inference:
            pairs.append((inference_pickle(ckpt), anc_twin(inference_pickle(ckpt))))
        for src, dst in pairs:
            if not src.exists():
                LOGGER.warning("AncCheckpoint: %s is gone before its .anc was written", src)
                continue
            convert(src, dst, durable=self.durable, progress=False)
            self.written.append((str(src), str(dst)))
            done.append(src)
            LOGGER.info("AncCheckpoint: wrote %s", dst)
        if entry.get("adapter") is not None:
            tensors, peft_config = entry["adapter"]
            dst = adapter_twin(ckpt)
            _write_adapter(dst, tensors, peft_config, getattr(self.module, "_anemoi_ckpt_base", None),
                           self.durable)
            self.written.append((str(ckpt), str(dst)))
        if self.replace_pickles:  # only once the twins are written and verified
            for src in done:
                src.unlink(missing_ok=True)


def _adapter_now(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The LoRA adapter of ``module``'s model (copied), or None when it has none."""
    try:
        from .lora import adapter_state, find_interface, has_lora
    except ImportError:  # no PEFT: no LoRA run
        return None
    try:
        interface = find_interface(module)
    except Exception:  # noqa: BLE001 - not an anemoi task: nothing to split off
        return None
    if not has_lora(interface):
        return None
    tensors, peft_config = adapter_state(interface)
    return {k: v.clone() for k, v in tensors.items()}, peft_config


def _write_adapter(dst: Path, tensors: dict[str, torch.Tensor], peft_config: dict[str, Any],
                   base: str | None, durable: bool) -> None:
    """``adapter-<name>.anc``: the adapter and, when the run warm started from an ``.anc``
    (:class:`~anemoi_ckpt.anemoi.training.WarmStart`), that file as its base."""
    from ...adapters.write import write_finetune
    from ...reader import open_checkpoint

    with (open_checkpoint(base) if base else nullcontext()) as base_ck:
        write_finetune(dst, "adapter", tensors, base_ck, peft_config=peft_config,
                       operation="finetune", parameters={"trainer": "anemoi-training"}, durable=durable)
    LOGGER.info("AncCheckpoint: wrote %s", dst)


__all__ = ["AncCheckpoint", "AncCheckpointIO", "anc_twin", "adapter_twin", "inference_pickle"]
