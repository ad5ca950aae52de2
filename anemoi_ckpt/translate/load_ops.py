"""What the load-time operations of the translation steps (``kind = "load_call"``) may call, and
which tensor names each one supplies or consumes. The functions themselves need anemoi-models and
live in :mod:`anemoi_ckpt.anemoi.fixups`; the names are listed here so a step file is checked, and
a layout compared over names alone (tests/test_anemoi_layout_chain.py), without importing it.
"""

from __future__ import annotations

import re
from typing import Any

#: the functions a ``load_call`` op may name (implemented in anemoi_ckpt.anemoi.fixups, which
#: needs anemoi-models; listed here so a step file is checked without importing it)
LOAD_FUNCTIONS = frozenset({"keep_built", "permute_trainable_edges", "tie_shared", "split_fused_qkv"})
#: what each supplies that older files lack (a regex over names), beside an op's own ``pattern``:
#: a layout check over names alone (tests/test_anemoi_layout_chain.py) counts them as present
#: (hierarchical models keep their level providers in ModuleDicts named ``..._graph_providers``)
LOAD_SUPPLIES = {
    "permute_trainable_edges": re.compile(r"_graph_providers?\.(\S+\.)?(trainable_layout_version|perm)$"),
    "split_fused_qkv": re.compile(r"\.attention\.lin_[qkv]\.(weight|bias)$"),
}
#: what each takes out of the file's tensors (a regex over names): a layout check over names
#: alone counts them as gone (split_fused_qkv replaces lin_qkv by lin_q, lin_k, lin_v)
LOAD_CONSUMES = {"split_fused_qkv": re.compile(r"\.attention\.lin_qkv\.(weight|bias)$")}


def load_consumed(ops: "Any", name: str) -> bool:
    """Whether a load op of ``ops`` takes tensor ``name`` out of a file that has it."""
    return any((p := LOAD_CONSUMES.get(op.params["function"])) is not None and p.search(name)
               for op in ops)


def load_supplied(ops: "Any", name: str) -> bool:
    """Whether a load op of ``ops`` supplies tensor ``name`` when a file lacks it."""
    for op in ops:
        pattern = op.params.get("pattern") or LOAD_SUPPLIES.get(op.params["function"])
        if pattern is not None and pattern.search(name):
            return True
    return False
