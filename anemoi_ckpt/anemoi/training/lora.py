"""LoRA inside anemoi-training: a Lightning callback (:class:`LoRA`) and a checkpoint-pipeline stage
(:class:`LoRAModifier`) that put PEFT LoRA adapters into the task's ``AnemoiModelInterface``.

Both inject the adapters *in place* (PEFT's ``inject_adapter_in_model``), not through a
``PeftModel`` wrapper: ``pl_module.model`` stays the ``AnemoiModelInterface`` and
``pl_module.model.model`` its inner model, which anemoi-training's plot callbacks, training methods
and checkpoint callback reach for by those names. Only the chosen linears change (into PEFT's
``lora.Linear``, base weight under ``<name>.base_layer``) and every other parameter is frozen, so
``configure_optimizers`` (which takes the parameters with ``requires_grad``) gives the optimizer
the adapters alone. The callback injects in ``setup``, which Lightning runs before it restores a
``ckpt_path`` and before it builds the optimizer: resuming from a LoRA run's ``last.ckpt`` (PEFT
names) works, and a warm start with ``load_weights_only`` loads the base into the plain model first.

anemoi-training's ``AnemoiCheckpoint`` pickles ``pl_module.model`` as the inference checkpoint.
The callback makes it pickle :func:`merged_model` instead - the same interface with every adapter
folded into a plain ``nn.Linear`` - so ``inference-*.ckpt`` of a LoRA run is an ordinary anemoi
model (no PEFT needed to load it, the base's tensor names) that predicts as the trained model;
the Lightning ``*.ckpt`` keeps the PEFT names and optimizer state, to resume from.

Default targets are the bundled trainer's (the attention and MLP linears of the processor, by
processor type); ``targets`` are its globs, over the interface's module names (``processor``
matches ``model.processor``). Nothing here is anemoi-training's code; this module needs
anemoi-training (0.17.1 checked), PyTorch Lightning and PEFT.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch
from anemoi.training.checkpoint.modifiers.base import ModelModifier
from pydantic import ValidationError
from torch import nn

from ...adapters.peft_keys import PREFIX
from ...adapters.write import peft_config_json
from ...trainer.config import ConfigError, LoraConfig, error_line
from ...trainer.methods import peft_lora_config

LOGGER = logging.getLogger(__name__)

#: PEFT's adapter name: the one adapter a run trains
ADAPTER = "default"


# --- the pieces, shared by the callback and the pipeline stage ---------------------------------
def lora_config(r: int = 8, alpha: float = 16, dropout: float = 0.0, targets: Any = None,
                use_rslora: bool = False, use_dora: bool = False, *, where: str = "LoRA") -> LoraConfig:
    """The bundled trainer's validated ``LoraConfig``; a bad value is one ConfigError line.
    ``targets`` may be an OmegaConf list (Hydra passes config nodes through)."""
    if targets is not None and not isinstance(targets, str):
        targets = [str(t) for t in targets]
    try:
        return LoraConfig(r=r, alpha=alpha, dropout=dropout, targets=targets,
                          use_rslora=use_rslora, use_dora=use_dora)
    except ValidationError as e:
        raise ConfigError(None, f"{where}: {error_line(e)}",
                          "r >= 1, alpha > 0, 0 <= dropout < 1, targets a non-empty list of globs") from None


def find_interface(model: Any) -> nn.Module:
    """The ``AnemoiModelInterface`` of ``model``: itself, or the ``.model`` of a task / Lightning
    module (what anemoi-training's pipeline may hand a modifier)."""
    for candidate in (model, getattr(model, "model", None)):
        if type(candidate).__name__ == "AnemoiModelInterface":
            return candidate
    raise ConfigError(None, f"LoRA: {type(model).__name__} is not an AnemoiModelInterface nor holds one "
                      "as .model", "LoRA adapts the task's model (pl_module.model)")


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds PEFT LoRA layers."""
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())


def inject(interface: nn.Module, cfg: LoraConfig) -> dict[str, Any]:
    """Put LoRA adapters into ``interface`` in place (every other parameter frozen) and return
    what was done, as a ``modifiers_applied`` record. An interface that already has adapters
    (a second fit, or the pipeline stage ran first) is left alone."""
    from peft import inject_adapter_in_model

    if has_lora(interface):
        LOGGER.info("LoRA: the model already holds LoRA adapters; not adding another set")
        return _record(interface, cfg, getattr(interface, "_anemoi_ckpt_lora_targets", []), skipped=True)
    peft_cfg = peft_lora_config(interface, cfg)  # resolves the globs; ConfigError on a bad one
    targets = sorted(peft_cfg.target_modules)
    inject_adapter_in_model(peft_cfg, interface, adapter_name=ADAPTER)
    interface._anemoi_ckpt_lora_targets = targets  # for the record of a later, skipped call
    record = _record(interface, cfg, targets)
    LOGGER.info("LoRA: r=%d alpha=%g on %d linears; %d adapter parameters train, %d frozen",
                cfg.r, cfg.alpha, len(targets), record["adapter_params"], record["frozen_params"])
    return record


def _record(interface: nn.Module, cfg: LoraConfig, targets: list[str], skipped: bool = False) -> dict[str, Any]:
    trained = sum(p.numel() for p in interface.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in interface.parameters() if not p.requires_grad)
    out = {"type": "lora", "r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout,
           "use_rslora": cfg.use_rslora, "use_dora": cfg.use_dora, "targets": list(targets),
           "adapter_params": trained, "frozen_params": frozen}
    if skipped:
        out["skipped"] = "the model already held LoRA adapters"
    return out


def adapter_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The adapter of a LoRA-injected ``model`` (an interface, or what holds one) as
    ``PeftModel.save_pretrained`` would write it: tensors under ``base_model.model.<module>`` keys
    and adapter_config.json - what :func:`anemoi_ckpt.adapters.write.write_finetune` takes."""
    from peft import get_peft_model_state_dict

    interface = find_interface(model)
    if not has_lora(interface):
        raise ConfigError(None, "LoRA: the model holds no LoRA adapter", "add the LoRA callback to the run")
    sd = get_peft_model_state_dict(interface, adapter_name=ADAPTER)
    tensors = {PREFIX + k: v.detach().cpu().contiguous() for k, v in sd.items()}
    return tensors, peft_config_json(interface, ADAPTER)


def merged_model(model: nn.Module) -> nn.Module:
    """``model`` itself when it holds no LoRA layer; else a copy in which every LoRA layer is its
    base layer with the adapter merged in (PEFT's own merge: LoRA, rsLoRA and DoRA alike). The
    copy shares every other tensor with ``model`` (no second copy of the frozen weights); only the
    adapted linears are new. ``model`` is not changed."""
    from peft.tuners.lora import LoraLayer

    names = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not names:
        return model
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    out = copy.deepcopy(model, memo)
    with torch.no_grad():
        for name in names:
            # an independent copy of the layer: merge() writes into its base weight, which in
            # ``out`` is still the training model's own parameter
            layer = copy.deepcopy(out.get_submodule(name))
            layer.merge(adapter_names=[ADAPTER])
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, layer.get_base_layer())
    for attr in ("peft_config", "_anemoi_ckpt_lora_targets"):
        out.__dict__.pop(attr, None)
    return out


def _merge_in_inference_checkpoints(trainer: pl.Trainer) -> None:
    """Make each ``AnemoiCheckpoint`` of ``trainer`` pickle the merged model as its inference
    checkpoint. It reaches the model through its ``_torch_drop_down(trainer)`` (anemoi-training
    0.17.1), which this wraps on the callback instance; nothing else of it changes."""
    try:
        from anemoi.training.diagnostics.callbacks.checkpoint import AnemoiCheckpoint
    except ImportError:  # another layout of anemoi-training: keep its own behaviour
        return
    for cb in trainer.callbacks:
        if not isinstance(cb, AnemoiCheckpoint) or getattr(cb, "_anemoi_ckpt_lora_merged", False):
            continue
        drop_down = getattr(cb, "_torch_drop_down", None)
        if drop_down is None:
            LOGGER.warning("LoRA: %s has no _torch_drop_down; its inference checkpoints will hold "
                           "the unmerged LoRA layers (PEFT needed to load them)", type(cb).__name__)
            continue
        cb._torch_drop_down = lambda tr, _orig=drop_down: merged_model(_orig(tr))
        cb._anemoi_ckpt_lora_merged = True


def _check_order(trainer: Any, lora: pl.Callback) -> None:
    """A ``WarmStart`` listed after the LoRA callback would load plain weight names into the
    adapted model (Lightning runs ``setup`` in list order): refuse it in one line."""
    callbacks = list(getattr(trainer, "callbacks", None) or [])
    if lora not in callbacks:
        return
    later = callbacks[callbacks.index(lora) + 1:]
    if any(type(cb).__name__ == "WarmStart" for cb in later):
        raise ConfigError(None, "LoRA: diagnostics.callbacks lists WarmStart after LoRA; the base "
                          "weights must be loaded before the adapters wrap them", "list WarmStart first")


# --- the Lightning callback ---------------------------------------------------------------------
class LoRA(pl.Callback):
    """Train PEFT LoRA adapters of an anemoi-training run's model, everything else frozen.

    Added through anemoi-training's callback list::

        diagnostics:
          callbacks:
            - _target_: anemoi_ckpt.anemoi.training.LoRA
              r: 8
              alpha: 16

    ``targets`` (globs over the ``AnemoiModelInterface``'s module names, Linear layers only)
    default to the attention and MLP linears of the model's processor type.
    """

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0, targets: Any = None,
                 use_rslora: bool = False, use_dora: bool = False) -> None:
        super().__init__()
        self.config = lora_config(r, alpha, dropout, targets, use_rslora, use_dora)
        self.record: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the ckpt_path restore and configure_optimizers: the restored state dict has PEFT
        # names and the optimizer must see only the adapters. Every stage, so that a validate or
        # test from a LoRA run's checkpoint finds the names it saved.
        _check_order(trainer, self)
        self.record = inject(find_interface(pl_module), self.config)
        _merge_in_inference_checkpoints(trainer)

    def state_dict(self) -> dict[str, Any]:
        # saved in the Lightning checkpoint beside the weights: what the adapters are
        return {"lora": dict(self.record) if self.record else self.config.model_dump()}


# --- the checkpoint-pipeline stage ---------------------------------------------------------------
class LoRAModifier(ModelModifier):
    """The same injection as a ``ModelModifier`` of anemoi-training's checkpoint pipeline, for
    releases that run the pipeline (after the loading stage, so the adapters wrap loaded weights).
    ``context.model`` may be the interface or the task holding it; the interface is changed in
    place and ``context.metadata["modifiers_applied"]`` gets ``{"type": "lora", ...}``.
    """

    def __init__(self, r: int = 8, alpha: float = 16, dropout: float = 0.0, targets: Any = None,
                 use_rslora: bool = False, use_dora: bool = False) -> None:
        self.config = lora_config(r, alpha, dropout, targets, use_rslora, use_dora, where="LoRAModifier")

    async def process(self, context: Any) -> Any:
        model = context.model if context.model is not None else context.pl_module
        if model is None:
            raise ConfigError(None, "LoRAModifier: the pipeline context has no model",
                              "put the stage after the stage that provides the model")
        record = inject(find_interface(model), self.config)
        context.metadata.setdefault("modifiers_applied", []).append(record)
        return context


__all__ = ["LoRA", "LoRAModifier", "adapter_state", "find_interface", "has_lora", "inject",
           "lora_config", "merged_model"]
