"""Progress bars on stderr, only where they help: long operations on an interactive terminal."""

from __future__ import annotations

import sys
from typing import Any

#: Below this many bytes an operation takes well under a few seconds: no bar.
THRESHOLD = 512 << 20


class Progress:
    """A byte counter that draws a tqdm bar on stderr when enabled, and does nothing otherwise."""

    def __init__(self, bar: Any | None) -> None:
        self._bar = bar

    @classmethod
    def for_bytes(cls, total: int, desc: str, enabled: bool | None = None) -> "Progress":
        if enabled is None:
            enabled = total >= THRESHOLD and sys.stderr.isatty()
        if not enabled:
            return cls(None)
        from tqdm import tqdm  # imported lazily: the core must not pay for it when silent

        return cls(tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        file=sys.stderr, leave=False))

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
