"""Turning an unpickled object tree into plain JSON plus named tensors.

Lightning checkpoints keep live objects next to the weights (OmegaConf configs, pydantic schemas,
``IndexCollection``s, numpy statistics, a PyG ``HeteroData`` graph). After the restricted
unpickler they are inert stand-ins; this module writes them out as data a reader can use without
the code that made them: containers become JSON, tensors and numpy arrays are pulled out into a
tensor section and referenced from the JSON as ``{"__tensor__": "<section>/<name>"}``, and every
other object becomes ``{"__class__": dotted name, ...its recorded state...}``.

Hostile trees are bounded: an object reached twice is written once and referenced afterwards
(``{"__ref__": path}``), which also breaks cycles and the exponential blow-up of a pickle that
nests one list in itself many times, and nesting deeper than ``MAX_DEPTH`` is refused.
"""

from __future__ import annotations

import base64
import math
import posixpath
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FormatError
from .standins import StandIn, TensorRef
from .unpickler import _NumpyArray, resolve_numpy

MAX_DEPTH = 400
#: What memo references may repeat: a string, bytes or numpy array written again (the same object
#: reached through another reference) and a container expanded again (by a second flattening of
#: the same source) may add at most as much again as the distinct ones, plus these slacks.
MAX_REPEAT_BYTES = 16 << 20
MAX_REPEAT_NODES = 100_000
#: Integers longer than this are written as ``{"__int__": "0x..."}``: JSON readers (Python's
#: included, past 4300 digits) refuse or round longer numbers.
MAX_INT_BITS = 4096


class TensorSink:
    """Tensors met while flattening, by name; the same object always gets the same name."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.items: dict[str, TensorRef | np.ndarray] = {}
        self._names: dict[int, str] = {}
        self._keep: list[Any] = []  # ids are only stable while the objects live
        self._arrays: dict[int, Any] = {}

    def array_of(self, obj: _NumpyArray) -> Any:
        """``obj`` as a numpy array (or unchanged), the same array each time the same recorded
        object is met: a memo reference is one tensor, never another copy."""
        known = self._arrays.get(id(obj))
        if known is None:
            known = self._arrays[id(obj)] = resolve_numpy(obj)
            self._keep.append(obj)
        return known

    def put(self, name: str, value: TensorRef | np.ndarray) -> dict[str, str]:
        known = self._names.get(id(value))
        if known is None:
            known = _unique(name or "tensor", self.items)
            self.items[known] = value
            self._names[id(value)] = known
            self._keep.append(value)
        return {"__tensor__": f"{self.section}/{known}"}


def _unique(name: str, taken: dict[str, Any]) -> str:
    if name not in taken:
        return name
    n = 1
    while f"{name}~{n}" in taken:
        n += 1
    return f"{name}~{n}"


#: dotted-name prefix -> handler(standin, flatten) for classes whose state has a known meaning.
Handler = Callable[[StandIn, "Flattener", str, int], Any]
HANDLERS: dict[str, Handler] = {}


def handler(*prefixes: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for p in prefixes:
            HANDLERS[p] = fn
        return fn
    return register


class Budget:
    """What the flattenings of one source may write: the strings, bytes, arrays and containers the
    pickle holds, each once, and at most as much again (plus ``MAX_REPEAT_*``) for the ones memo
    references make it meet again. Shared by every :func:`to_plain` call over one source."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._leaves: set[int] = set()
        self._nodes: set[int] = set()
        self._keep: list[Any] = []
        self.distinct_bytes = self.repeat_bytes = 0
        self.repeat_nodes = 0

    def leaf(self, key: Any, n: int) -> None:
        if id(key) not in self._leaves:
            self._leaves.add(id(key))
            self._keep.append(key)
            self.distinct_bytes += n
            return
        self.repeat_bytes += n
        if self.repeat_bytes > self.distinct_bytes + MAX_REPEAT_BYTES:
            raise FormatError(self.label, "the pickle references the same strings, bytes or arrays "
                              f"so often that writing them out would take over "
                              f"{self.distinct_bytes + MAX_REPEAT_BYTES} bytes more than they hold",
                              "a checkpoint torch saved has no such repeats")

    def node(self, obj: Any) -> None:
        if id(obj) not in self._nodes:
            self._nodes.add(id(obj))
            self._keep.append(obj)
            return
        self.repeat_nodes += 1
        if self.repeat_nodes > len(self._nodes) + MAX_REPEAT_NODES:
            raise FormatError(self.label, "the pickle shares the same objects under so many entries "
                              f"that writing them out would expand over {len(self._nodes) + MAX_REPEAT_NODES} "
                              "objects again", "a checkpoint torch saved has no such repeats")


class Flattener:
    """One pass over one tree; ``sink`` receives its tensors."""

    def __init__(self, sink: TensorSink, label: str, budget: Budget | None = None) -> None:
        self.sink = sink
        self.label = label  # the file, for error messages
        self.graph_sink: TensorSink | None = None  # where PyG graph tensors go, if apart
        self.budget = budget or Budget(label)
        self._seen: dict[int, str] = {}
        self._keep: list[Any] = []

    def __call__(self, obj: Any, path: str = "", depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise FormatError(self.label, f"objects nested deeper than {MAX_DEPTH} levels at "
                              f"{path[:120]!r}")
        if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > MAX_INT_BITS:
            return {"__int__": hex(obj)}  # longer than JSON readers take as a number
        if isinstance(obj, str):
            self.budget.leaf(obj, len(obj))
            return str(obj) if type(obj).__name__ == "_DtypeName" else obj
        if obj is None or isinstance(obj, (bool, int)):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, (bytes, bytearray)):
            # charged at the size written (base64: 4 characters per 3 bytes), so the bound on the
            # output holds for bytes as it does for strings
            self.budget.leaf(obj, 4 * ((len(obj) + 2) // 3))
            return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, np.generic):
            return self(obj.item(), path, depth + 1)
        if isinstance(obj, complex):
            return {"__complex__": [self(obj.real, path, depth + 1), self(obj.imag, path, depth + 1)]}
        if isinstance(obj, TensorRef):
            return self.sink.put(path, obj)
        if isinstance(obj, _NumpyArray):
            new = id(obj) not in self.sink._arrays  # the same object again is the same tensor
            arr = self.sink.array_of(obj)
            if isinstance(arr, np.ndarray):
                if new:  # another array over the same bytes is another copy of them
                    raw = obj.state[4]  # the bytes the array was rebuilt from (resolve_numpy)
                    self.budget.leaf(raw, len(raw))
                return self.sink.put(path, arr)
        # Containers and objects: written once, referenced after (cycles, shared subtrees).
        if id(obj) in self._seen:
            return {"__ref__": self._seen[id(obj)]}
        self._seen[id(obj)] = path or "."
        self._keep.append(obj)
        self.budget.node(obj)
        if isinstance(obj, dict):
            return self._mapping(obj, path, depth)
        if isinstance(obj, (list, tuple)):
            return [self(v, f"{path}.{i}" if path else str(i), depth + 1) for i, v in enumerate(obj)]
        if isinstance(obj, (set, frozenset)):
            items = [self(v, path, depth + 1) for v in obj]
            try:
                return {"__set__": sorted(items)}
            except TypeError:
                return {"__set__": items}
        if isinstance(obj, StandIn):
            for prefix, fn in HANDLERS.items():
                if obj.dotted.startswith(prefix):
                    return fn(obj, self, path, depth)
            return self.generic(obj, path, depth)
        if isinstance(obj, slice):
            return {"__class__": "builtins.slice", "args": [obj.start, obj.stop, obj.step]}
        return {"__class__": f"{type(obj).__module__}.{type(obj).__qualname__}"}

    def _mapping(self, obj: dict[Any, Any], path: str, depth: int) -> Any:
        def sub(key: Any) -> str:
            return f"{path}.{key}" if path else str(key)
        if all(isinstance(k, str) for k in obj):
            return {k: self(v, sub(k), depth + 1) for k, v in obj.items()}
        # Non-string keys (ints of optimizer states, tuples of PyG edge types): keep them as data.
        return {"__items__": [[self(k, path, depth + 1), self(v, sub(_key_text(k)), depth + 1)]
                              for k, v in obj.items()]}

    def generic(self, obj: StandIn, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {"__class__": obj.dotted}
        state = obj.state
        if isinstance(state, dict) and "__pydantic_fields_set__" in state \
                and isinstance(state.get("__dict__"), dict):
            # A pydantic model (anemoi's config schemas before 2026): its fields are the data.
            fields = self(state["__dict__"], path, depth + 1)
            extra = state.get("__pydantic_extra__")
            if isinstance(extra, dict):
                fields.update(self(extra, path, depth + 1))
            out.update({k: v for k, v in fields.items() if k != "__class__"})
            return out
        for attr in ("args", "kwargs", "state", "items", "listitems"):
            value = getattr(obj, attr)
            if value not in (None, (), {}, []):
                out[attr] = self(value, path, depth + 1)
        return out


def _key_text(key: Any) -> str:
    if isinstance(key, tuple):
        return "__".join(_key_text(k) if not isinstance(k, tuple) else "(...)" for k in key)  # PyG's edge type
    if isinstance(key, int) and key.bit_length() > MAX_INT_BITS:
        return hex(key)
    return key if isinstance(key, str) else str(key)


def _keyed(flat: "Flattener", entries: list[tuple[Any, Any]], path: str, depth: int) -> Any:
    """``(key, already flattened value)`` pairs as a JSON object under the keys' text, or, when
    two keys have the same text (``1`` and ``"1"``), as ``{"__items__": [[key, value], ...]}``:
    nothing is dropped and no key is written twice."""
    texts = [_key_text(k) for k, _ in entries]
    if len(set(texts)) == len(texts):
        return dict(zip(texts, (v for _, v in entries)))
    return {"__items__": [[flat(k, path, depth + 1), v] for k, v in entries]}


def state_dict_of(obj: StandIn) -> dict[str, Any] | None:
    """The instance ``__dict__`` a pickle restored with BUILD, whatever form it took."""
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = {**(state[0] or {}), **state[1]} if isinstance(state[0], dict) else state[1]
    return state if isinstance(state, dict) else None


@handler("omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig")
def _omegaconf(obj: StandIn, flat: Flattener, path: str, depth: int) -> Any:
    """An OmegaConf container as the plain dict/list it holds (``OmegaConf.to_container``)."""
    state = state_dict_of(obj) or {}
    content = state.get("_content")
    if isinstance(content, dict):
        return _keyed(flat, [(k, _node(v, flat, f"{path}.{_key_text(k)}" if path else _key_text(k), depth + 1))
                             for k, v in content.items()], path, depth)
    if isinstance(content, list):
        return [_node(v, flat, f"{path}.{i}", depth + 1) for i, v in enumerate(content)]
    return None if content is None else flat(content, path, depth + 1)  # "???" or an interpolation


def _node(value: Any, flat: Flattener, path: str, depth: int) -> Any:
    if isinstance(value, StandIn) and value.dotted.startswith("omegaconf.nodes."):
        state = state_dict_of(value) or {}
        return flat(state.get("_val"), path, depth + 1)
    return flat(value, path, depth)


@handler("pathlib.")
def _path(obj: StandIn, flat: Flattener, path: str, depth: int) -> Any:
    parts = [a for a in obj.args if isinstance(a, str)]
    return posixpath.join(*parts) if parts else flat.generic(obj, path, depth)


@handler("torch_geometric.data.hetero_data.HeteroData", "torch_geometric.data.data.Data")
def _graph(obj: StandIn, flat: Flattener, path: str, depth: int) -> Any:
    """A PyG graph: its node and edge stores, with tensors named ``<node type>.<attr>`` and
    ``<src>__<rel>__<dst>.<attr>`` in the graph section (when the flattener has one)."""
    state = state_dict_of(obj)
    if state is None:
        return flat.generic(obj, path, depth)
    sink = flat.graph_sink or flat.sink
    out: dict[str, Any] = {"__class__": obj.dotted}
    for field, label in (("_node_store_dict", "nodes"), ("_edge_store_dict", "edges")):
        stores = state.get(field)
        if not isinstance(stores, dict):
            continue
        out[label] = _keyed(flat, [(k, _store(v, flat, sink, _key_text(k), depth)) for k, v in stores.items()],
                            path, depth)
    glob = state.get("_global_store") or state.get("_store")
    if glob is not None:
        out["global"] = _store(glob, flat, sink, "global", depth)
    return out


def _store(store: Any, flat: Flattener, sink: TensorSink, prefix: str, depth: int) -> Any:
    state = state_dict_of(store) if isinstance(store, StandIn) else None
    mapping = state.get("_mapping") if state else None
    if not isinstance(mapping, dict):
        return flat(store, prefix, depth + 1)
    entries = []
    for key, value in mapping.items():
        name = f"{prefix}.{_key_text(key)}"
        entries.append((key, sink.put(name, value) if isinstance(value, TensorRef) else flat(value, name, depth + 1)))
    return _keyed(flat, entries, prefix, depth)


#: Python frames one nesting level may take while flattening (__call__, a comprehension, a handler).
_FRAMES_PER_LEVEL = 6


def _stack_depth() -> int:
    frame, n = sys._getframe(), 0
    while frame is not None:
        frame, n = frame.f_back, n + 1
    return n


def to_plain(obj: Any, sink: TensorSink, label: str, path: str = "",
             graph_sink: TensorSink | None = None, budget: Budget | None = None) -> Any:
    """``obj`` as JSON-ready data; its tensors and arrays go to ``sink`` (graph tensors to
    ``graph_sink`` when given). ``budget`` bounds what repeated references write when several
    calls flatten parts of one source (one per call otherwise).

    Nesting up to ``MAX_DEPTH`` is flattened whatever the interpreter's recursion limit (it is
    raised for the call, and put back); deeper nesting is refused in one line naming ``label``."""
    flat = Flattener(sink, label, budget)
    flat.graph_sink = graph_sink
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _stack_depth() + _FRAMES_PER_LEVEL * (MAX_DEPTH + 10)))
    try:
        return flat(obj, path)
    except RecursionError:  # a handler path deeper than _FRAMES_PER_LEVEL allows for
        raise FormatError(label, f"objects nested too deeply to flatten (limit {MAX_DEPTH} levels)") from None
    finally:
        sys.setrecursionlimit(old)
