"""Building anemoi models from ``.anc`` files with the installed anemoi-models (extra ``anemoi``).

Importing this package imports nothing from anemoi; :func:`load_model` does, when called.
"""

from __future__ import annotations

from typing import Any


def load_model(path: Any, device: Any = "cpu") -> Any:
    """See :func:`anemoi_ckpt.anemoi.load.load_model`."""
    from .load import load_model as _load_model

    return _load_model(path, device=device)


__all__ = ["load_model"]
