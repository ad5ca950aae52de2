"""Where an export goes: the output checks made before any work, and ``--max-shard-size``.

Every check here runs before the input is read, so a bad output costs one line, not a whole
export followed by an error about a hidden temporary file.
"""

from __future__ import annotations

import os
import re

from ..errors import AncError, UsageError
from ..output_path import check_output as shared_check

#: Formats written as one file (the rest, ``sharded``, is a folder).
SINGLE_FILE = ("safetensors", "pt", "anemoi-ckpt")
FORMATS = ("safetensors", "pt", "sharded", "anemoi-ckpt")

_SUFFIXES = {".safetensors": "safetensors", ".pt": "pt", ".pth": "pt", ".ckpt": "anemoi-ckpt"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def guess_format(out: str) -> str:
    """The format OUT's name implies: ``.safetensors``, ``.pt``/``.pth``, ``.ckpt`` (anemoi's
    pickled inference checkpoint); an existing folder or a name without a suffix is a sharded folder."""
    suffix = os.path.splitext(out.rstrip("/\\"))[1].lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if os.path.isdir(out) or not suffix or out.endswith(("/", os.sep)):
        return "sharded"
    raise UsageError(out, f"cannot tell the export format from the suffix {suffix!r}",
                     f"pass --format {'|'.join(FORMATS)}")


def check_output(out: str, fmt: str, *, overwrite: bool) -> str:
    """The absolute path to write, or one :class:`AncError` line saying why it cannot be: the
    checks every writing command makes (:func:`anemoi_ckpt.output_path.check_output`), and for a
    sharded folder the same rules applied to a folder (its parent exists, an existing one is kept
    unless ``overwrite``)."""
    if fmt in SINGLE_FILE:
        return os.path.abspath(shared_check(out, overwrite=overwrite, kind="file"))
    shared_check(out, overwrite=overwrite, kind="dir")  # URLs, an existing file
    target = os.path.abspath(out)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise AncError(out, f"its folder {parent} does not exist",
                       "create the folder first, or choose another path")
    if os.path.lexists(target) and not overwrite:
        raise AncError(out, "already exists", "pass --overwrite to replace it, or choose another output path")
    return target


def parse_size(text: str | int) -> int:
    """``--max-shard-size``: bytes as an integer or with a unit, as transformers spells it
    (``5GB`` = 5*10**9, ``500MiB`` = 500*2**20)."""
    if isinstance(text, int):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
        unit = m.group(2).upper() if m else None
        if m is None or unit not in _UNITS:
            raise UsageError(None, f"--max-shard-size {text!r} is not a size",
                             "give bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise UsageError(None, f"--max-shard-size must be positive, not {text!r}")
    return n
