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
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import FormatError
from .standins import StandIn, TensorRef
from .unpickler import _NumpyArray, resolve_numpy

MAX_DEPTH = 400


class TensorSink:
    """Tensors met while flattening, by name; the same object always gets the same name."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.items: dict[str, TensorRef | np.ndarray] = {}
        self._names: dict[int, str] = {}
        self._keep: list[Any] = []  # ids are only stable while the objects live

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


class Flattener:
    """One pass over one tree; ``sink`` receives its tensors."""

    def __init__(self, sink: TensorSink, label: str) -> None:
        self.sink = sink
        self.label = label  # the file, for error messages
        self.graph_sink: TensorSink | None = None  # where PyG graph tensors go, if apart
        self._seen: dict[int, str] = {}
        self._keep: list[Any] = []

    def __call__(self, obj: Any, path: str = "", depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise FormatError(self.label, f"objects nested deeper than {MAX_DEPTH} levels at "
                              f"{path[:120]!r}")
        if obj is None or isinstance(obj, (bool, int, str)):
            return str(obj) if type(obj).__name__ == "_DtypeName" else obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, (bytes, bytearray)):
            return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
        if isinstance(obj, np.generic):
            return self(obj.item(), path, depth + 1)
        if isinstance(obj, complex):
            return {"__complex__": [obj.real, obj.imag]}
        if isinstance(obj, TensorRef):
            return self.sink.put(path, obj)
        if isinstance(obj, _NumpyArray):
            arr = resolve_numpy(obj)
            if isinstance(arr, np.ndarray):
                return self.sink.put(path, arr)
        # Containers and objects: written once, referenced after (cycles, shared subtrees).
        if id(obj) in self._seen:
            return {"__ref__": self._seen[id(obj)]}
        self._seen[id(obj)] = path or "."
        self._keep.append(obj)
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
        return "__".join(str(k) for k in key)  # PyG's own spelling of an edge type
    return str(key)


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
        return {str(k): _node(v, flat, f"{path}.{k}" if path else str(k), depth + 1)
                for k, v in content.items()}
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
        out[label] = {_key_text(k): _store(v, flat, sink, _key_text(k), depth) for k, v in stores.items()}
    glob = state.get("_global_store") or state.get("_store")
    if glob is not None:
        out["global"] = _store(glob, flat, sink, "global", depth)
    return out


def _store(store: Any, flat: Flattener, sink: TensorSink, prefix: str, depth: int) -> Any:
    state = state_dict_of(store) if isinstance(store, StandIn) else None
    mapping = state.get("_mapping") if state else None
    if not isinstance(mapping, dict):
        return flat(store, prefix, depth + 1)
    out = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, TensorRef):
            out[str(key)] = sink.put(name, value)
        else:
            out[str(key)] = flat(value, name, depth + 1)
    return out


def to_plain(obj: Any, sink: TensorSink, label: str, path: str = "",
             graph_sink: TensorSink | None = None) -> Any:
    """``obj`` as JSON-ready data; its tensors and arrays go to ``sink`` (graph tensors to
    ``graph_sink`` when given)."""
    flat = Flattener(sink, label)
    flat.graph_sink = graph_sink
    return flat(obj, path)
