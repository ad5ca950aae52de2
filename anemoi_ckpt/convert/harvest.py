"""Finding tensors in an unpickled object tree (stand-ins and plain containers) by their names.

Names follow torch's own conventions: ``state_dict()`` for modules (parameters and persistent
buffers, dotted by submodule) and ``named_buffers()`` for the non-persistent buffers, which exist
only in the pickled module (anemoi keeps its graph edges there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import FormatError
from ..legacy.standins import StandIn, TensorRef, walk


MAX_MODULES = 1_000_000


def _module_state(obj: StandIn) -> dict[str, Any] | None:
    state = obj.state
    if isinstance(state, dict) and "_parameters" in state and "_modules" in state:
        return state
    return None


def module_tensors(root: StandIn, path: str) -> tuple[dict[str, TensorRef], dict[str, TensorRef]]:
    """(state_dict-style tensors, non-persistent buffers) of a pickled ``nn.Module`` tree."""
    weights: dict[str, TensorRef] = {}
    buffers: dict[str, TensorRef] = {}
    # A module reachable under two names (anemoi's layer_norm_attention_dest is
    # layer_norm_attention) is listed under both, as state_dict() does; only a module that
    # contains itself is cut. ``visits`` bounds what a hostile pickle of shared subtrees costs.
    stack: list[tuple[str, StandIn, frozenset[int]]] = [("", root, frozenset())]
    visits = 0
    while stack:
        prefix, mod, ancestors = stack.pop()
        state = _module_state(mod)
        if state is None or id(mod) in ancestors:
            continue
        visits += 1
        if visits > MAX_MODULES:
            raise FormatError(path, f"the pickled module tree has over {MAX_MODULES} submodules")
        for name, ref in (state.get("_parameters") or {}).items():
            if isinstance(ref, TensorRef):
                weights[prefix + name] = ref
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for name, ref in (state.get("_buffers") or {}).items():
            if isinstance(ref, TensorRef):
                (buffers if name in non_persistent else weights)[prefix + name] = ref
        inner = ancestors | {id(mod)}
        children = [(f"{prefix}{n}.", m, inner) for n, m in (state.get("_modules") or {}).items()
                    if isinstance(m, StandIn)]
        stack.extend(reversed(children))
    if not weights and not buffers:
        raise FormatError(path, f"the pickled {root.dotted} holds no module parameters or buffers")
    return weights, buffers


def flat_state_dict(obj: Mapping[str, Any], path: str) -> dict[str, TensorRef]:
    """A (possibly nested) dict of tensors as dotted names; any other leaf is refused by name."""
    out: dict[str, TensorRef] = {}
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        prefix, value = stack.pop()
        if isinstance(value, TensorRef):
            out[prefix.rstrip(".")] = value
        elif isinstance(value, Mapping):
            # A pickle can BUILD attributes onto an allowed OrderedDict (e.g. a planted
            # __setstate__): they were never run, but such a dict is not a plain state dict.
            for attr, planted in (getattr(value, "__dict__", None) or {}).items():
                # torch's own _metadata (module versions) is plain data; anything the pickle
                # asked to build is not.
                bad = next((o for o in walk(planted) if isinstance(o, StandIn)
                            or (isinstance(o, type) and issubclass(o, StandIn))), None)
                if bad is not None:
                    raise FormatError(path, f"the state dict {prefix.rstrip('.') or '(top level)'} "
                                      f"carries attribute {attr!r} holding {bad.dotted}",
                                      "a plain state dict has none")
            stack.extend((f"{prefix}{k}.", v) for k, v in reversed(list(value.items())))
        else:
            what = value.dotted if isinstance(value, StandIn) else type(value).__name__
            raise FormatError(path, f"entry {prefix.rstrip('.')!r} is a {what}, not a tensor",
                              "only state dicts of tensors convert as torch-state-dict")
    return out
