"""One check for every command that writes: is this output path one we may write, before any work?

Outputs are written atomically (a hidden temp file beside the target, then a rename), so a bad
target - a folder, a path in a missing folder, a URL - would otherwise surface only at the end of
the work, as an error naming the hidden temp file. And a finished file is never replaced unless the
user said so (``--overwrite``): a conversion or a merge is cheap to redo, a lost checkpoint is not.
"""

from __future__ import annotations

import os
from typing import Literal

from .errors import AncError

__all__ = ["check_output"]

_HINT_OVERWRITE = "pass --overwrite to replace it, or choose another output path"


def check_output(path: str | os.PathLike, *, overwrite: bool,
                 kind: Literal["file", "dir"] = "file") -> str:
    """``path`` as a string when it can be written; otherwise one :class:`AncError` line (exit 1)
    naming it. ``kind="dir"``: an output folder (it may exist; files in it are checked by their
    own writers); ``kind="file"``: an output file, kept unless ``overwrite``."""
    text = os.fspath(path)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "file":
            raise AncError(text, "outputs are local paths, not file:// URLs",
                           f"give the path itself, e.g. {text[len('file://'):] or '/path/out.anc'}")
        raise AncError(text, "cannot write to a URL",
                       "write a local file, then upload it (or 'catalogue register' its URL)")
    if not text:
        raise AncError(None, "the output path is empty", "give a file name")
    target = os.path.abspath(text)
    if kind == "dir":
        if os.path.exists(target) and not os.path.isdir(target):
            raise AncError(text, "exists and is not a folder", "give a folder for the outputs")
        return text
    if os.path.isdir(target):
        raise AncError(text, "is a folder, not a file",
                       f"name the output file, e.g. {os.path.join(text, 'out.anc')}")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise AncError(text, f"its folder {folder} {what}", "create the folder first, or choose another path")
    if os.path.lexists(target) and not overwrite:
        raise AncError(text, "already exists", _HINT_OVERWRITE)
    return text
