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
#: Shared subtrees are listed under each of their names, as torch's ``state_dict()`` does, but a
#: pickle whose children are the same object at every level would list 2^depth names: visits of
#: modules (of nested mappings) and names listed may exceed ``SHARING_FACTOR`` times the distinct
#: ones by at most ``SHARING_SLACK``.
SHARING_FACTOR = 4
SHARING_SLACK = 10_000
MAX_DEPTH = 400


def _check_sharing(path: str, what: str, visits: int, distinct: int, names: int, refs: int) -> None:
    if visits > SHARING_FACTOR * distinct + SHARING_SLACK or names > SHARING_FACTOR * refs + SHARING_SLACK:
        raise FormatError(path, f"the pickled {what} shares subtrees so widely that listing them would "
                          f"take over {max(visits, names)} entries for {distinct} distinct objects and "
                          f"{refs} tensors", "a checkpoint torch saved has no such sharing")


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
    modules: set[int] = set()
    refs: set[int] = set()
    while stack:
        prefix, mod, ancestors = stack.pop()
        state = _module_state(mod)
        if state is None or id(mod) in ancestors:
            continue
        visits += 1
        modules.add(id(mod))
        if visits > MAX_MODULES:
            raise FormatError(path, f"the pickled module tree has over {MAX_MODULES} submodules")
        if len(ancestors) > MAX_DEPTH:
            raise FormatError(path, f"the pickled modules nest deeper than {MAX_DEPTH} levels")
        for name, ref in (state.get("_parameters") or {}).items():
            if isinstance(ref, TensorRef):
                weights[prefix + name] = ref
                refs.add(id(ref))
        non_persistent = state.get("_non_persistent_buffers_set") or set()
        for name, ref in (state.get("_buffers") or {}).items():
            if isinstance(ref, TensorRef):
                (buffers if name in non_persistent else weights)[prefix + name] = ref
                refs.add(id(ref))
        _check_sharing(path, "module tree", visits, len(modules), len(weights) + len(buffers), len(refs))
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
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    visits, mappings, refs = 0, set(), set()
    while stack:
        prefix, value, depth = stack.pop()
        if isinstance(value, TensorRef):
            name = prefix[:-1]  # the one dot each level adds ("a." and "a" are two names)
            if name in out:
                raise FormatError(path, f"two entries of the state dict are both named {name[:120]!r}",
                                  "nested keys that join to the same dotted name")
            out[name] = value
            refs.add(id(value))
            _check_sharing(path, "state dict", visits, len(mappings), len(out), len(refs))
        elif isinstance(value, Mapping):
            visits += 1
            mappings.add(id(value))
            if depth > MAX_DEPTH:
                raise FormatError(path, f"the state dict nests deeper than {MAX_DEPTH} levels")
            _check_sharing(path, "state dict", visits, len(mappings), len(out), len(refs))
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
            stack.extend((f"{prefix}{k}.", v, depth + 1) for k, v in reversed(list(value.items())))
        else:
            what = value.dotted if isinstance(value, StandIn) else type(value).__name__
            raise FormatError(path, f"entry {prefix.rstrip('.')!r} is a {what}, not a tensor",
                              "only state dicts of tensors convert as torch-state-dict")
    return out
