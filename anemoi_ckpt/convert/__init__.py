"""Conversion of foreign checkpoint formats into ``.anc`` (source readers behind a registry).

``anemoi_ckpt.convert(src, dst, ...)`` works as a call on this package as well as
``from anemoi_ckpt.convert import convert``: the public API names the operation, the package
holds its parts.
"""

import sys
import types
from typing import Any

from .engine import ConvertReport, convert
from .sources import SOURCES, detect

__all__ = ["ConvertReport", "SOURCES", "convert", "detect"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> ConvertReport:
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
