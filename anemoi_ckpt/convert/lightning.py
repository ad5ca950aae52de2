"""Reading a Lightning training checkpoint (anemoi-training's ``last.ckpt``) as data.

What goes where in the ``.anc``:

- ``weights``: the LightningModule's ``model.`` entries under the interface-level names (prefix
  removed), so a training file and its ``inference-`` twin have the same ``content_id``;
  ``module``: any other LightningModule state (loss scalers, ...), under its full name;
- ``optimizer`` (``optimizer-<k>`` for further optimizers): the state tensors named
  ``<parameter name>.<state key>``; their param groups and scalar state in the document;
- ``graph``: the tensors of the pickled PyG graph in ``hyper_parameters``; ``hparams``: its other
  tensors and numpy arrays (statistics); ``state``: tensors anywhere else (callbacks, loops);
- documents ``hyper-parameters`` and ``training-state``: everything else as plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import FormatError
from ..legacy.plain import MAX_DEPTH, Budget, TensorSink, _key_text, to_plain
from ..writer import DocumentError, document_bytes
from ..legacy.standins import TensorRef
from ..legacy.unpickler import resolve_numpy
from .harvest import flat_state_dict
from .optimizer_map import MappingError, candidates, embed

LIGHTNING_KEY = "pytorch-lightning_version"
PREFIX = "model."
_FLOAT = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2",
          "float8_e4m3fnuz", "float8_e5m2fnuz", "complex64", "complex128"}


def is_lightning(obj: Any) -> bool:
    return isinstance(obj, dict) and LIGHTNING_KEY in obj


def _storage_key(ref: TensorRef) -> tuple[Any, ...]:
    return ref.storage.key, ref.offset, tuple(ref.size), tuple(ref.stride)


def split_state_dict(obj: dict[str, Any], path: str, key: str = "state_dict"
                     ) -> tuple[dict[str, TensorRef], dict[str, TensorRef], bool, dict[str, TensorRef]]:
    """(interface weights, other LightningModule state, whether the prefix was removed, the
    whole state dict in its original order)."""
    sd = obj.get(key)
    if not isinstance(sd, Mapping):
        raise FormatError(path, "the Lightning checkpoint has no state_dict",
                          "it may be a weights-free callback file")
    flat = flat_state_dict(sd, path)
    if not any(n.startswith(PREFIX) for n in flat):
        return flat, {}, False, flat
    weights = {n[len(PREFIX):]: r for n, r in flat.items() if n.startswith(PREFIX)}
    module = {n: r for n, r in flat.items() if not n.startswith(PREFIX)}
    return weights, module, True, flat


def _frozen_prefixes(hparams: Any, lightning_prefix: str) -> list[str]:
    """anemoi's ``training.submodules_to_freeze`` (names relative to the interface's ``model``),
    as state-dict name prefixes."""
    try:
        names = hparams["config"]["training"]["submodules_to_freeze"]
    except (KeyError, TypeError):
        return []
    if not isinstance(names, list):
        return []
    return [f"{lightning_prefix}model.{n}" for n in names if isinstance(n, str)]


def _param_shape(state: Any) -> tuple[int, ...] | None:
    """The parameter's shape, read off its optimizer state (exp_avg, momentum_buffer, ...)."""
    if not isinstance(state, Mapping):
        return None
    for key, value in state.items():
        if key != "step" and isinstance(value, TensorRef):
            return tuple(value.size)
    return None


def optimizer_names(obj: dict[str, Any], sd: dict[str, TensorRef], prefix_removed: bool,
                    hparams_plain: Any, path: str, positional: bool) -> list[list[str] | None]:
    """Per optimizer, the parameter name of each index (None: keep positional names)."""
    opts = obj.get("optimizer_states") or []
    if positional or not isinstance(opts, list):
        return [None] * (len(opts) if isinstance(opts, list) else 0)
    if len(opts) > 1:
        raise FormatError(path, f"{len(opts)} optimizers: their parameters cannot be told apart "
                          "by order", "convert with --optimizer-positional")
    seen: set[tuple[Any, ...]] = set()
    entries = []
    for name, ref in sd.items():
        if _storage_key(ref) in seen:
            continue  # a shared parameter appears once in parameters()
        seen.add(_storage_key(ref))
        entries.append((name, tuple(ref.size), ref.storage.dtype_name in _FLOAT))
    # Each tier assumes a little more; the first with exactly one fit wins: (1) any float
    # entry may be trainable, (2) the config's frozen submodules are not, (3) only the model's
    # own entries are (LightningModule-level float state, e.g. loss scalers, are buffers).
    frozen = _frozen_prefixes(hparams_plain, PREFIX if prefix_removed else "")
    model_only = [e for e in entries if e[0].startswith(PREFIX)] if prefix_removed else entries
    tiers = [("any", entries, []), ("config-frozen", entries, frozen),
             ("model-only", model_only, frozen)]
    out: list[list[str] | None] = []
    for osd in opts:
        indices, shapes = _indices(osd, path)
        wanted = [shapes.get(i) for i in indices]
        first_error: MappingError | None = None
        for _, tier_entries, tier_frozen in tiers:
            try:
                names = embed(wanted, candidates(tier_entries, tier_frozen))
                break
            except MappingError as e:
                first_error = first_error or e
        else:
            assert first_error is not None
            raise FormatError(path, f"cannot name the optimizer state: {first_error}",
                              "convert with --optimizer-positional to keep index-based names")
        out.append(names)
    return out


def _indices(osd: Any, path: str) -> tuple[list[Any], dict[Any, tuple[int, ...] | None]]:
    if not isinstance(osd, Mapping) or not isinstance(osd.get("param_groups"), list):
        raise FormatError(path, "optimizer_states holds something other than an optimizer "
                          "state_dict", "convert with --optimizer-positional")
    indices = [i for g in osd["param_groups"] if isinstance(g, Mapping)
               for i in (g.get("params") or [])]
    state = osd.get("state") or {}
    return indices, {i: _param_shape(state.get(i)) for i in indices}


def read_lightning(obj: dict[str, Any], path: str, *, positional: bool = False
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """(tensor groups by section, documents, details) of a Lightning checkpoint's object tree."""
    # Lightning's WeightAveraging callback (EMA/SWA; anemoi's weight_averaging) saves the
    # averaged weights as state_dict and the live ones as current_model_state. ``weights`` is
    # always the live model (what the optimizer state belongs to); the average goes beside it.
    averaged = isinstance(obj.get("current_model_state"), Mapping)
    weights, module, prefix_removed, full_sd = split_state_dict(
        obj, path, "current_model_state" if averaged else "state_dict")
    ema = split_state_dict(obj, path)[0] if averaged else {}
    hp_sink, graph_sink = TensorSink("hparams"), TensorSink("graph")
    budget = Budget(path)  # one for the whole file: repeats across documents count together
    hparams = to_plain(obj.get("hyper_parameters", {}), hp_sink, path, graph_sink=graph_sink, budget=budget)
    mapping = optimizer_names(obj, full_sd, prefix_removed, hparams, path, positional)

    groups: dict[str, dict[str, Any]] = {"weights": weights}
    if ema:
        groups["weights-ema"] = ema
    if module:
        groups["module"] = module
    state_sink = TensorSink("state")
    optimizers = []
    for k, (osd, names) in enumerate(zip(obj.get("optimizer_states") or [], mapping)):
        section = "optimizer" if k == 0 else f"optimizer-{k}"
        tensors, doc = _optimizer(osd, names, prefix_removed, section, state_sink, path, budget)
        groups[section] = tensors
        optimizers.append(doc)
    skip = {"state_dict", "optimizer_states", "hyper_parameters", "current_model_state"}
    state = to_plain({k: v for k, v in obj.items() if k not in skip}, state_sink, path, budget=budget)
    state["optimizers"] = optimizers
    groups.update({"graph": graph_sink.items, "hparams": hp_sink.items, "state": state_sink.items})
    groups = {k: v for k, v in groups.items() if v or k == "weights"}
    details = {"lightning_version": obj.get(LIGHTNING_KEY), "epoch": obj.get("epoch"),
               "global_step": obj.get("global_step"), "prefix_removed": PREFIX if prefix_removed else "",
               "optimizer_names": "positional" if any(m is None for m in mapping) else "by-parameter",
               "averaged_weights": bool(ema)}
    documents = {"hyper-parameters": hparams, "training-state": state}
    for name, doc in documents.items():  # refused here, naming the source, before anything is written
        try:
            document_bytes(doc)
        except DocumentError as e:
            raise FormatError(path, f"{name}: {e}", "the .anc reader could not read it back") from None
    return groups, documents, details


def _optimizer(osd: Any, names: list[str] | None, prefix_removed: bool, section: str,
               sink: TensorSink, path: str, budget: Budget | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(osd, Mapping):
        return {}, to_plain(osd, sink, path, path=section, budget=budget)
    indices, _ = _indices(osd, path) if names is not None else ([], {})
    label = {}
    if names is not None:
        label = {i: (n[len(PREFIX):] if prefix_removed and n.startswith(PREFIX) else n)
                 for i, n in zip(indices, names)}
    tensors: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    state = osd.get("state") or {}
    taken: dict[tuple[str, ...], Any] = {}  # name as written -> its key: a collision is refused

    def claim(kind: str, key: Any, *name: str) -> str:
        if (kind, *name) in taken:
            raise FormatError(path, f"{section}: state keys {_short(taken[(kind, *name)])} and "
                              f"{_short(key)} are both written as {'.'.join(name)[:80]!r}",
                              "keys that differ only in type; nothing was written")
        taken[(kind, *name)] = key
        return ".".join(name)

    for index, entry in (state.items() if isinstance(state, Mapping) else ()):
        pname = claim("param", index, label[index] if index in label else _key_text(index))
        if not isinstance(entry, Mapping):
            scalars[pname] = to_plain(entry, sink, path, path=f"{section}.{pname}", budget=budget)
            continue
        for key, value in entry.items():
            if isinstance(value, TensorRef):
                tensors[claim("tensor", key, f"{pname}.{key}")] = value
            else:
                claim("scalar", key, pname, str(key))
                scalars.setdefault(pname, {})[str(key)] = to_plain(value, sink, path, budget=budget)
    groups = []
    for g in osd.get("param_groups") or []:
        g = dict(g) if isinstance(g, Mapping) else {"value": g}
        if isinstance(g.get("params"), list):
            g["params"] = [label.get(i, i) for i in g["params"]]
        groups.append(to_plain(g, sink, path, budget=budget))
    rest = {k: v for k, v in osd.items() if k not in ("state", "param_groups")}
    doc = {"section": section, "names": "by-parameter" if names is not None else "positional",
           "param_groups": groups, "scalar_state": scalars, **to_plain(rest, sink, path, budget=budget)}
    return tensors, doc


def _short(key: Any) -> str:
    """A key for a message: its repr when it is a plain scalar, else its type."""
    if isinstance(key, int) and key.bit_length() > 64:
        return f"an int of {key.bit_length()} bits"
    if key is None or isinstance(key, (str, int, float, bool)):
        return repr(key)[:60]
    return f"a {type(key).__name__}"


def fallback_metadata(obj: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """anemoi metadata from ``hyper_parameters`` when the zip has no ``anemoi.json`` member
    (files written with torch < 2.6 carry it only there)."""
    hp = obj.get("hyper_parameters")
    if not isinstance(hp, Mapping) or not isinstance(hp.get("metadata"), Mapping):
        return None, None
    md = to_plain(hp["metadata"], TensorSink("metadata"), path)
    arrays = _numpy_tree(hp.get("supporting_arrays"), path)
    return md, arrays or None


def _numpy_tree(obj: Any, path: str = "") -> dict[str, Any]:
    """The numpy arrays of a nested mapping (anemoi's supporting arrays), nested alike. Iterative;
    a mapping met again (shared, or a cycle) is taken once, an array met again is the same array,
    and nesting deeper than ``MAX_DEPTH`` is refused."""
    if not isinstance(obj, Mapping):
        return {}
    root: dict[str, Any] = {}
    seen: set[int] = {id(obj)}
    arrays: dict[int, Any] = {}
    stack: list[tuple[Mapping[Any, Any], dict[str, Any], int]] = [(obj, root, 0)]
    while stack:
        mapping, out, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(path, f"supporting_arrays nested deeper than {MAX_DEPTH} levels")
        for k, v in mapping.items():
            if id(v) not in arrays:
                arrays[id(v)] = (v, resolve_numpy(v))
            v = arrays[id(v)][1]
            if isinstance(v, np.ndarray):
                out[str(k)] = v
            elif isinstance(v, Mapping) and id(v) not in seen:
                seen.add(id(v))
                out[str(k)] = sub = {}
                stack.append((v, sub, depth + 1))
    return _prune(root)


def _prune(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` without its empty sub-mappings (iteratively, deepest first)."""
    order, stack = [], [tree]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(v for v in node.values() if isinstance(v, dict))
    for node in reversed(order):
        for k in [k for k, v in node.items() if isinstance(v, dict) and not v]:
            del node[k]
    return tree
