"""LoRA adapters and freeze deltas: reading them from ``.anc`` files (:mod:`.model`), their
maths, merging them into a base and splitting fine-tunes into adapters."""

from .model import ATTACHED_PREFIX, Adapter, open_adapters, read_adapters

__all__ = ["ATTACHED_PREFIX", "Adapter", "open_adapters", "read_adapters"]
