"""Warm start and transfer learning from an ``.anc`` inside anemoi-training, without unpickling.

anemoi-training 0.17.1 ships a checkpoint pipeline (``anemoi.training.checkpoint``: source stages
that fetch a checkpoint, loading strategies that apply it, modifiers) but its trainer does not run
it yet (its loading docs call the wiring "Phase 3"); its own warm start (``system.input.warm_start``
with ``load_weights_only``) is ``torch.load``. So there are two pieces:

- :class:`AncSource`, a pipeline source stage: reads an ``.anc`` - a path, a URL (s3, http(s),
  file) or ``uuid:<uuid>`` through the catalogue - and gives the loading stage what it expects:
  ``checkpoint_data["state_dict"]`` (the file's ``weights``, under the names of the
  ``AnemoiModelInterface``) plus ``hyper_parameters`` with each dataset's ``name_to_index`` and
  the anemoi metadata, which the loaders' ``_preserve_anemoi_metadata`` reads;
- :class:`WarmStart`, a Lightning callback that runs a pipeline on the task's model in ``setup``
  - before Lightning restores a ``ckpt_path`` and before ``configure_optimizers`` - with
  ``context.model`` the ``AnemoiModelInterface`` (``pl_module.model``). By default the pipeline
  is ``AncSource(source)`` then anemoi-training's ``WeightsOnlyLoader(strict=True)`` (or its
  ``TransferLearningLoader`` with ``transfer_learning: true``) then ``stages`` (modifiers, e.g.
  ``FreezingModifierStage`` or :class:`~anemoi_ckpt.anemoi.training.LoRAModifier`); a
  ``stages`` list that has its own loading strategy is run as given after the source.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from anemoi.training.checkpoint.sources.base import CheckpointSource

from ...errors import AncError
from ...reader import open_checkpoint
from ...remote.fetch import is_uuid_ref, resolve_ref
from ...trainer.config import ConfigError
from .resume import _name_to_index

LOGGER = logging.getLogger(__name__)


def read_anc(location: str) -> dict[str, Any]:
    """``checkpoint_data`` for the pipeline's loading stage, from the ``.anc`` at ``location``."""
    try:
        with open_checkpoint(location) as ck:
            if ck.kind not in ("training", "inference"):
                raise ConfigError(location, f"is a {ck.kind} file: a warm start needs a complete model",
                                  "merge an adapter or delta into its base first (anemoi-ckpt merge)")
            weights = {k: t.clone() for k, t in ck.tensors("weights").items()}  # own memory
            hparams = ck.document("hyper-parameters") if "hyper-parameters" in ck.documents() else {}
            return {"state_dict": weights,
                    "hyper_parameters": {"data_indices": _name_to_index(hparams),
                                         "metadata": dict(ck.anemoi_metadata or {})},
                    "anc": {"uuid": ck.uuid, "content_id": ck.content_id, "kind": ck.kind}}
    except AncError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(location, str(e).split(": ", 1)[-1], "a warm start needs a readable .anc") from None


def resolve(source: str | os.PathLike, catalogue: str | os.PathLike | None = None) -> str:
    """A path, URL or ``uuid:<uuid>`` (through the catalogue) as the location to read."""
    ref = os.fspath(source)
    if is_uuid_ref(ref):
        return resolve_ref(ref, catalogue)
    if "://" not in ref and not Path(ref).expanduser().is_file():
        raise ConfigError(ref, "no such .anc file", "give a path, a URL or uuid:<uuid>")
    return ref if "://" in ref else str(Path(ref).expanduser().resolve())


class AncSource(CheckpointSource):
    """A checkpoint-pipeline source stage reading an ``.anc`` (``source``, else the context's
    ``checkpoint_path``); never ``torch.load``."""

    def __init__(self, source: str | None = None, catalogue: str | None = None) -> None:
        self.source = source
        self.catalogue = catalogue

    async def process(self, context: Any) -> Any:
        ref = self.source if self.source is not None else context.checkpoint_path
        if ref is None:
            raise ConfigError(None, "AncSource: no source", "set source: <path, URL or uuid:...>")
        location = resolve(ref, self.catalogue)
        data = await asyncio.to_thread(read_anc, location)
        self._load_and_populate(context, data)
        if "://" not in location:
            context.checkpoint_path = Path(location)
        context.update_metadata(source_type="anc", source_path=location, source_uuid=data["anc"]["uuid"],
                                source_content_id=data["anc"]["content_id"])
        return context

    def __repr__(self) -> str:
        return f"AncSource({self.source!r})"


def _check_variables(pl_module: Any, data: Mapping[str, Any], location: str) -> None:
    """The base's variables and their order must be the run's (unless transfer learning)."""
    run = getattr(pl_module, "data_indices", None) or {}
    for name, saved in (data.get("hyper_parameters", {}).get("data_indices") or {}).items():
        if name in run and dict(run[name].name_to_index) != dict(saved.name_to_index):
            raise ConfigError(location, f"dataset {name!r}: the base's variables {sorted(saved.name_to_index)} "
                              f"(in its order) are not the run's {sorted(run[name].name_to_index)}",
                              "use the base's variables, or set transfer_learning: true")


class WarmStart(pl.Callback):
    """Start an anemoi-training run from an ``.anc`` (its weights only: a new run, fresh
    optimizer), through anemoi-training's checkpoint pipeline::

        diagnostics:
          callbacks:
            - _target_: anemoi_ckpt.anemoi.training.WarmStart
              source: base.anc            # a path, s3://..., https://... or uuid:<uuid>
              # transfer_learning: true   # load what matches by name and shape, skip the rest
              # stages: [...]             # pipeline modifiers, after the loader

    List it before :class:`~anemoi_ckpt.anemoi.training.LoRA`, which adapts the loaded weights.
    """

    def __init__(self, source: str | None = None, stages: Sequence[Any] | None = None,
                 strict: bool = True, transfer_learning: bool = False,
                 catalogue: str | None = None) -> None:
        super().__init__()
        self.source, self.catalogue = source, catalogue
        self.strict, self.transfer_learning = bool(strict), bool(transfer_learning)
        self.stages = list(stages or [])
        self.record: dict[str, Any] | None = None

    def _pipeline(self) -> Any:
        from anemoi.training.checkpoint import CheckpointPipeline
        from anemoi.training.checkpoint.loading import (LoadingStrategy, TransferLearningLoader,
                                                        WeightsOnlyLoader)

        stages = [s for s in self.stages]
        if self.source is not None:
            has_loader = any(isinstance(s, LoadingStrategy) or "Loader" in str(_target(s)) for s in stages)
            loader = [] if has_loader else [TransferLearningLoader() if self.transfer_learning
                                            else WeightsOnlyLoader(strict=self.strict)]
            stages = [AncSource(self.source, self.catalogue), *loader, *stages]
        if not stages:
            raise ConfigError(None, "WarmStart: neither source nor stages", "set source: <.anc>")
        return CheckpointPipeline(stages)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.record is not None:
            return
        from anemoi.training.checkpoint import CheckpointContext

        interface = pl_module.model
        context = CheckpointContext(model=interface, config=getattr(pl_module, "config", None))
        result = self._pipeline().execute_sync(context)
        data = result.checkpoint_data or {}
        location = result.metadata.get("source_path")
        if not self.transfer_learning and location:
            _check_variables(pl_module, data, location)
        if result.model is not interface:  # a stage replaced the model (a wrapper)
            pl_module.model = result.model
        saved = getattr(result.model, "_ckpt_model_name_to_index", None)
        if saved is not None:  # where anemoi-training's own checks look for it
            pl_module._ckpt_model_name_to_index = saved
        pl_module._anemoi_ckpt_base = location  # AncCheckpoint records it as an adapter's base
        self.record = {k: v for k, v in result.metadata.items() if isinstance(v, (str, int, float, bool, list))}
        LOGGER.info("WarmStart: %s loaded (%s)", location, self.record.get("loading_strategy"))
        result.checkpoint_data = None  # the tensors are in the model now
        del data

    def state_dict(self) -> dict[str, Any]:
        return {"warm_start": dict(self.record or {})}


def _target(stage: Any) -> Any:
    return stage.get("_target_") if isinstance(stage, Mapping) else type(stage).__name__


__all__ = ["AncSource", "WarmStart", "read_anc", "resolve"]
