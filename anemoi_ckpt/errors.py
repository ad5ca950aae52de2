"""Error types. Every problem with an input file becomes one :class:`AncError`.

The CLI prints ``anemoi-ckpt: error: <file>: <what> (<hint>)`` from these fields, so each raise site
must say which file, what is wrong and, where there is one, what the user can do about it.
"""

from __future__ import annotations

import os
import re

#: Messages quote names and values taken from the file; keep such quotes to a readable length.
MAX_WHAT = 2000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """``text`` with control characters escaped: one line, and nothing from a hostile file (a name
    holding a newline or a terminal escape sequence) reaches the terminal raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class AncError(Exception):
    """A problem with an input or output file, reported as one line."""

    exit_code = 1

    def __init__(self, file: str | os.PathLike | None, what: str, hint: str | None = None,
                 *, section: str | None = None) -> None:
        self.file = os.fspath(file) if file is not None else None
        self.what = what
        self.hint = hint
        self.section = section
        super().__init__(self.line())

    def line(self) -> str:
        parts = []
        if self.file:
            parts.append(f"{self.file}:")
        if self.section:
            parts.append(f"section {self.section}:")
        what = self.what if len(self.what) <= MAX_WHAT else self.what[:MAX_WHAT] + "..."
        parts.append(what)
        text = " ".join(parts)
        if self.hint:
            text += f" ({self.hint})"
        return one_line(text)


class FormatError(AncError):
    """The file is not a well-formed ``.anc`` (or not the kind of file expected)."""


class IntegrityError(AncError):
    """A digest or size does not match what the manifest records."""


class VersionError(AncError):
    """The file needs a newer anemoi-ckpt, or uses a required feature this version lacks."""


class UsageError(AncError):
    """The caller asked for something impossible (wrong argument, unknown section...)."""

    exit_code = 2
