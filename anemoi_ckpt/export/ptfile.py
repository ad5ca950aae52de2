"""A torch state dict file (``.pt``): ``torch.save`` of a plain ``{name: tensor}`` dict.

Each tensor is copied out of the ``.anc`` map into its own storage first: a view would make
``torch.save`` write the whole mapped section behind it. ``materialize`` gives each alias its own
copy; ``metadata`` stores an alias as the same tensor as its target, which is how torch itself
records a tie (one storage, both names; ``torch.load`` gives them back shared).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO


def state_dict(mapping: Mapping, aliases: str) -> dict:
    import torch

    out: dict[str, torch.Tensor] = {name: mapping[name].clone() for name in mapping.entries}
    for alias, target in mapping.aliases.items():
        out[alias] = out[target].clone() if aliases == "materialize" else out[target]
    return out


def write(fh: BinaryIO, mapping: Mapping, aliases: str) -> None:
    import torch

    torch.save(state_dict(mapping, aliases), fh)
