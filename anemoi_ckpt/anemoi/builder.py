"""The ``anemoi`` model builder: an anemoi ``.anc`` built by the installed anemoi-models.

Registered through the builders entry point group (``anemoi_ckpt.model_builders``, see
``pyproject.toml``), so :func:`anemoi_ckpt.builders.model_from_checkpoint` and the bundled trainer's
``base:`` accept any anemoi file - converted from anemoi-training (training or inference file), a
merge result, a URL or ``uuid:`` - with no anemoi import in the core library. An anemoi model's module
tree is not a function of a config alone (it depends on the file's graph, buffers and metadata), so
this builder is called with the open file and returns the model with its weights loaded
(:func:`anemoi_ckpt.anemoi.load.load_from_checkpoint`); nothing is unpickled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..builders import BuilderError

if TYPE_CHECKING:
    import torch

    from ..reader import Checkpoint


def build(config: dict[str, Any], checkpoint: "Checkpoint") -> "torch.nn.Module":
    """The ``AnemoiModelInterface`` of ``checkpoint`` in train mode (the file holds every tensor)."""
    if config:
        raise BuilderError(checkpoint.path, f"the anemoi builder takes no config (got keys "
                           f"{', '.join(sorted(map(str, config)))[:120]})",
                           "the model is described by the file's own anemoi metadata")
    if not checkpoint.anemoi_metadata:
        raise BuilderError(checkpoint.path, "is not an anemoi checkpoint (no anemoi metadata)",
                           "convert an anemoi-training checkpoint with `anemoi-ckpt convert`, or use "
                           "a file with metadata.model")
    from .load import load_from_checkpoint

    model = load_from_checkpoint(checkpoint)
    model.train()
    # what outputs record as metadata.model: built from the file it came from, nothing else
    model.anemoi_ckpt_spec = {"builder": "anemoi", "config": {}}
    return model


build.builds_from_checkpoint = True  # type: ignore[attr-defined]
