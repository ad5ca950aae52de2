"""Naming Lightning's positional optimizer state after the parameters it belongs to.

``optimizer.state_dict()`` keys its state by position among the parameters handed to the
optimizer: anemoi passes ``filter(lambda p: p.requires_grad, self.parameters())``. The checkpoint
does not say which parameters those were, but it holds the module's state dict in
``parameters()`` order (buffers interleaved) and each state entry has its parameter's shape. The
mapping is therefore the embedding of the state's shape sequence into the ordered candidates.
It is accepted only when exactly one embedding exists; otherwise the caller gets a clear error or
asks for the explicit positional fallback. Pure functions: names and shapes in, names out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: Float buffers anemoi registers (never parameters): excluding them removes most ambiguity.
KNOWN_BUFFERS = re.compile(
    r"(^|\.)(_norm_mul|_norm_add|_input_idx|_output_idx|_model_output_idx|norm_min_val|"
    r"latlons_[A-Za-z0-9_]+|trainable_layout_version|edge_inc|edge_attr|edge_index_base|perm|"
    r"running_mean|running_var|num_batches_tracked)$")

Shape = tuple[int, ...]


class MappingError(ValueError):
    """No unique mapping: ``reason`` says why, in words for the user."""


def candidates(entries: Sequence[tuple[str, Shape, bool]],
               frozen_prefixes: Sequence[str] = ()) -> list[tuple[str, Shape]]:
    """(name, shape) of state-dict entries that can be trainable parameters, in order.

    ``entries`` are (name, shape, is_float) in state-dict order, aliases already removed
    (``parameters()`` yields a shared parameter once, under its first name).
    """
    out = []
    for name, shape, is_float in entries:
        if not is_float or KNOWN_BUFFERS.search(name):
            continue
        if any(name == p or name.startswith(p + ".") for p in frozen_prefixes):
            continue
        out.append((name, shape))
    return out


def embed(wanted: Sequence[Shape | None], cands: Sequence[tuple[str, Shape]]) -> list[str]:
    """The candidate names matched to ``wanted`` (one shape per optimizer index, None when the
    state holds no tensor of the parameter's shape), or MappingError if not exactly one."""
    n, m = len(wanted), len(cands)
    if n > m:
        raise MappingError(f"the optimizer has state for {n} parameters, the model has only "
                           f"{m} candidate parameters")

    def fits(i: int, j: int) -> bool:
        return wanted[i] is None or wanted[i] == cands[j][1]

    # ways[i][j]: number of embeddings of wanted[i:] into cands[j:], capped at 2.
    ways = [[0] * (m + 1) for _ in range(n + 1)]
    ways[n] = [1] * (m + 1)
    for i in range(n - 1, -1, -1):
        row, nxt = ways[i], ways[i + 1]
        for j in range(m - 1, -1, -1):
            row[j] = min(2, row[j + 1] + (nxt[j + 1] if fits(i, j) else 0))
    if ways[0][0] == 0:
        first_bad = _first_mismatch(wanted, cands)
        raise MappingError("the optimizer state does not match the trainable parameters by order "
                           f"and shape{first_bad}")
    if ways[0][0] > 1:
        raise MappingError(f"{n} optimizer entries fit the {m} candidate parameters in more than "
                           "one way (frozen parameters of repeated shapes)")
    names, j = [], 0
    for i in range(n):
        while not (fits(i, j) and ways[i + 1][j + 1]):
            j += 1
        names.append(cands[j][0])
        j += 1
    return names


def _first_mismatch(wanted: Sequence[Shape | None], cands: Sequence[tuple[str, Shape]]) -> str:
    """Where a greedy walk gets stuck: the most useful hint for a layout mismatch."""
    j = 0
    for i, shape in enumerate(wanted):
        while j < len(cands) and shape is not None and cands[j][1] != shape:
            j += 1
        if j == len(cands):
            return f" (no parameter left for optimizer index {i} of shape {list(shape or ())})"
        j += 1
    return ""
