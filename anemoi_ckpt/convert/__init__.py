"""Conversion of foreign checkpoint formats into ``.anc`` (source readers behind a registry)."""

from .engine import ConvertReport, convert
from .sources import SOURCES, detect

__all__ = ["ConvertReport", "SOURCES", "convert", "detect"]
