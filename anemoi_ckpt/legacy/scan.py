"""``scan``: which globals a pickled checkpoint references and which would have executed code.

Like ``torch.serialization.get_unsafe_globals_in_checkpoint``, but the answer comes from the
restricted unpickler, so nothing is imported or run, and it also says how each global was used:
a class or function the pickle *calls* runs code under ``torch.load(weights_only=False)``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from .standins import TensorRef, walk
from .torchzip import TorchZipCheckpoint


@dataclass
class ScanReport:
    path: str
    globals: list[dict[str, Any]]
    executing: list[str]  # globals torch.load(weights_only=False) would have called
    dangerous: list[str]  # known code-execution primitives (os.system, eval, ...)
    tensors: int

    @property
    def safe_for_weights_only(self) -> bool:
        return not self.executing

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "safe_for_weights_only": self.safe_for_weights_only}


def _count_tensors(root: Any) -> int:
    return sum(1 for node in walk(root) if isinstance(node, TensorRef))


def scan(path: str | os.PathLike) -> ScanReport:
    with TorchZipCheckpoint(path) as ck:
        uses = sorted(ck.globals_list, key=lambda u: u.dotted)
        tensors = _count_tensors(ck.obj)
    rows = [{"global": u.dotted, "allowed": u.allowed, "dangerous": u.dangerous, "calls": u.calls,
             "would_execute": u.would_execute} for u in uses]
    return ScanReport(path=os.fspath(path), globals=rows,
                      executing=[u.dotted for u in uses if u.would_execute],
                      dangerous=[u.dotted for u in uses if u.dangerous], tensors=tensors)
