"""anemoi-ckpt inside anemoi-training: callbacks and checkpoint-pipeline stages a run adds through
its own configuration (``_target_: anemoi_ckpt.anemoi.training.<Name>``), no fork.

- :class:`AncCheckpoint` writes the run's checkpoints as ``.anc`` (training, inference and, for a
  LoRA run, adapter files) on anemoi-training's own checkpoint schedule, and resumes from them;
- :class:`WarmStart` / :class:`AncSource` start a run from an ``.anc`` (path, URL, ``uuid:``)
  through anemoi-training's checkpoint pipeline, never unpickling;
- :class:`LoRA` / :class:`LoRAModifier` train PEFT LoRA adapters of the run's model.

Needs anemoi-training (0.17.1 checked) with PyTorch Lightning; names load on first use, so
importing this package costs nothing until one is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AncCheckpoint": ".checkpoint",
    "AncCheckpointIO": ".checkpoint",
    "AncSource": ".source",
    "WarmStart": ".source",
    "lightning_checkpoint": ".resume",
    # LoRA (anemoi_ckpt/anemoi/training/lora.py)
    "LoRA": ".lora",
    "LoRAModifier": ".lora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
