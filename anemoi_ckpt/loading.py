"""Loading a checkpoint's tensors into a ``torch.nn.Module`` with one clear error for mismatches."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .errors import FormatError

if TYPE_CHECKING:
    from .reader import Checkpoint


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_into(ck: "Checkpoint", module: torch.nn.Module, *, strict: bool = True,
              section: str = "weights") -> None:
    tensors = ck.tensors(section)
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
        raise FormatError(ck.path, "; ".join(parts), "the file was written for a different model; "
                          "pass strict=False to load the common tensors", section=section)
    wrong = [f"{k} {tensors.shape(k)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in tensors and tensors.shape(k) != tuple(v.shape)]
    if wrong:
        raise FormatError(ck.path, f"shape mismatch for {len(wrong)} tensor(s): {_listing(wrong, 3)}",
                          "the file was written for a different model configuration", section=section)
    if ck.remote is not None:  # a URL: the tensors needed, in a few concurrent requests
        ck.read_ahead(section, names=[k for k in expected if k in tensors])
    common = {k: tensors[k] for k in expected if k in tensors}
    module.load_state_dict(common, strict=False)
