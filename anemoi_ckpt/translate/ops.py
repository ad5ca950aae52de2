"""The registry of operation kinds a translation step may use.

Every operation is a pure function. A *names* operation takes the current tensor names per section
and returns only the names it changes, as ``(section, name) -> (section, name)``; the engine
composes those, checks for collisions and never loses a name. A *metadata* operation takes the
metadata dict and returns a new one (the input is never mutated). Keep this set small: a new
layout change should be expressible as a TOML step over these kinds, not as new Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .load_ops import LOAD_FUNCTIONS, LOAD_SUPPLIES, load_consumed, load_supplied
from .meta_ops import (META_FUNCTIONS, lookup, meta_call, meta_copy, meta_default, meta_delete,
                       meta_move, meta_set, meta_wrap_dataset)

Names = Mapping[str, list[str]]
Move = dict[tuple[str, str], tuple[str, str]]


class OpError(ValueError):
    """A step's operation cannot apply to these names (the engine adds the file/label)."""


@dataclass(frozen=True)
class Context:
    """What an operation may read besides the names: never mutated."""

    anemoi_metadata: Mapping[str, Any] | None
    label: str


@dataclass(frozen=True)
class OpKind:
    target: str  # "names", "metadata" or "load"
    fn: Callable[..., Any] | None
    required: frozenset[str]
    optional: frozenset[str] = frozenset()
    regex_params: frozenset[str] = frozenset()  # compiled at load time so a bad regex names its file


def _sections(names: Names, params: Mapping[str, Any]) -> list[str]:
    # An omitted "sections" means every section: a parameter rename must reach its optimizer state.
    wanted = params.get("sections")
    return [s for s in names if wanted is None or s in wanted]


def op_rename(names: Names, params: Mapping[str, Any], ctx: Context) -> Move:
    """``pattern`` (regex, searched) -> ``replacement`` (``re`` template), within ``sections``."""
    pattern: re.Pattern[str] = params["pattern"]
    out: Move = {}
    for sec in _sections(names, params):
        for name in names[sec]:
            new = pattern.sub(params["replacement"], name, count=1)
            if new != name:
                out[(sec, name)] = (sec, new)
    return out


def op_move(names: Names, params: Mapping[str, Any], ctx: Context) -> Move:
    """Names matching ``pattern`` go from section ``from`` to section ``to``, name unchanged."""
    pattern: re.Pattern[str] = params["pattern"]
    src, dst = params["from"], params["to"]
    return {(src, n): (dst, n) for n in names.get(src, []) if pattern.search(n)}


def op_insert_dataset(names: Names, params: Mapping[str, Any], ctx: Context) -> Move:
    """Insert ``<dataset>.`` after each literal prefix, as anemoi's move_to_multiple_datasets."""
    dataset = params.get("dataset", "data")
    prefixes: list[str] = list(params["prefixes"])
    out: Move = {}
    for sec in _sections(names, params):
        for name in names[sec]:
            prefix = next((p for p in prefixes if name.startswith(p)), None)
            if prefix is not None:
                out[(sec, name)] = (sec, f"{prefix}{dataset}.{name[len(prefix):]}")
    return out


def _config_blocks_per_chunk(md: Mapping[str, Any] | None, layers_at: str | None = None) -> int | None:
    """``num_layers // num_chunks`` from the training config in the metadata, when both are there.

    Older configs kept ``num_chunks`` on ``model`` rather than ``model.processor``. ``layers_at``:
    a dotted path to read the layer count from instead (a processor built with its own
    ``num_layers``, e.g. a hierarchical model's level processors)."""
    model = ((md or {}).get("config") or {}).get("model") or {}
    proc = model.get("processor") or {}
    layers = proc.get("num_layers", model.get("num_layers"))
    if layers_at is not None:
        layers = lookup(md, layers_at)[1]
    chunks = proc.get("num_chunks", model.get("num_chunks"))
    if not isinstance(layers, int) or not isinstance(chunks, int) or chunks <= 0:
        return None
    if layers % chunks:
        raise OpError(f"config says num_layers={layers} in num_chunks={chunks}: uneven chunks "
                      "cannot be flattened")
    return layers // chunks


def op_flatten_chunks(names: Names, params: Mapping[str, Any], ctx: Context) -> Move:
    """``<prefix><chunk>.blocks.<j>.`` -> ``<prefix><chunk*blocks_per_chunk+j>.``.

    ``pattern`` must capture ``prefix``, ``chunk`` and ``block`` (named groups) and match up to the
    dot after the block index. blocks_per_chunk is ``num_layers // num_chunks`` from the metadata
    config when it has them (the names must fit, and agree when they hold whole chunks), else it
    is read from the names, which must then show every chunk with the same blocks 0..n-1."""
    pattern: re.Pattern[str] = params["pattern"]
    hits: dict[tuple[str, str], re.Match[str]] = {}
    blocks: dict[int, set[int]] = {}
    for sec in _sections(names, params):
        for name in names[sec]:
            m = pattern.match(name)
            if m:
                hits[(sec, name)] = m
                blocks.setdefault(int(m["chunk"]), set()).add(int(m["block"]))
    if not hits:
        return {}
    counts = {c: len(b) for c, b in blocks.items()}
    complete = len(set(counts.values())) == 1 and all(b == set(range(len(b))) for b in blocks.values())
    configured = _config_blocks_per_chunk(ctx.anemoi_metadata, params.get("num_layers"))
    if configured is None:
        if not complete:
            raise OpError(f"processor chunks are uneven (blocks per chunk: {dict(sorted(counts.items()))}) "
                          "and the metadata has no num_layers/num_chunks; cannot tell which flat "
                          "layer each block is")
        per_chunk = next(iter(counts.values()))
    else:
        # The config decides; the names must fit it. A name set that holds whole chunks must
        # show exactly that many blocks (an optimizer section may hold only some of them).
        if complete and next(iter(counts.values())) != configured:
            raise OpError(f"tensor names show {next(iter(counts.values()))} blocks per processor "
                          f"chunk but the config says num_layers/num_chunks = {configured}")
        if max(max(b) for b in blocks.values()) >= configured:
            raise OpError(f"a processor block index exceeds num_layers/num_chunks = {configured}")
        per_chunk = configured
    out: Move = {}
    for (sec, name), m in hits.items():
        flat = int(m["chunk"]) * per_chunk + int(m["block"])
        out[(sec, name)] = (sec, f"{m['prefix']}{flat}.{name[m.end():]}")
    return out


def op_level_rename(names: Names, params: Mapping[str, Any], ctx: Context) -> Move:
    """``pattern`` (regex with a named group ``level``, searched) -> ``replacement`` (``re``
    template in which ``{level}`` stands for the level ``shift`` places further along the ordered
    level names, e.g. the hidden node sets of a hierarchical model, finest first). The level names
    are the first of the dotted metadata paths ``levels`` that is present (a string: one level).
    ``at`` (optional, a list index: -1 is the last level) renames only the names of that level.
    A matched level that is not listed, or a shift past either end, is refused."""
    pattern: re.Pattern[str] = params["pattern"]
    shift = params.get("shift", 0)
    levels: list[str] | None = None
    for dotted in params["levels"]:
        found, value = lookup(ctx.anemoi_metadata, dotted)
        if found:
            levels = [value] if isinstance(value, str) else [str(v) for v in value]
            break
    out: Move = {}
    for sec in _sections(names, params):
        for name in names[sec]:
            m = pattern.search(name)
            if not m:
                continue
            if levels is None:
                raise OpError(f"{name}: no level names in the metadata at {', '.join(params['levels'])}")
            if "at" in params and m["level"] in levels and levels.index(m["level"]) != params["at"] % len(levels):
                continue
            index = levels.index(m["level"]) + shift if m["level"] in levels else -1
            if not 0 <= index < len(levels):
                raise OpError(f"{name}: level {m['level']!r} shifted by {shift} is not one of {levels}")
            template = params["replacement"].replace("{level}", levels[index].replace("\\", "\\\\"))
            out[(sec, name)] = (sec, name[:m.start()] + m.expand(template) + name[m.end():])
    return out


_S = frozenset({"sections"})
OPS: dict[str, OpKind] = {
    "rename": OpKind("names", op_rename, frozenset({"pattern", "replacement"}), _S,
                     frozenset({"pattern"})),
    "move": OpKind("names", op_move, frozenset({"pattern", "from", "to"}), frozenset(),
                   frozenset({"pattern"})),
    "insert_dataset": OpKind("names", op_insert_dataset, frozenset({"prefixes"}),
                             _S | {"dataset"}),
    "flatten_chunks": OpKind("names", op_flatten_chunks, frozenset({"pattern"}), _S | {"num_layers"},
                             frozenset({"pattern"})),
    "level_rename": OpKind("names", op_level_rename, frozenset({"pattern", "replacement", "levels"}),
                           _S | {"shift", "at"}, frozenset({"pattern"})),
    "meta_set": OpKind("metadata", meta_set, frozenset({"key", "value"})),
    "meta_move": OpKind("metadata", meta_move, frozenset({"from", "to"})),
    "meta_wrap_dataset": OpKind("metadata", meta_wrap_dataset, frozenset({"keys"}),
                                frozenset({"dataset"})),
    "meta_call": OpKind("metadata", meta_call, frozenset({"function"})),
    "meta_default": OpKind("metadata", meta_default, frozenset({"key", "value"})),
    "meta_delete": OpKind("metadata", meta_delete, frozenset({"key"})),
    "meta_copy": OpKind("metadata", meta_copy, frozenset({"from", "to"})),
    # At load, with the module tree the installed anemoi-models built (anemoi_ckpt.anemoi.fixups):
    # for the files this step translated, run a registered function over the tensors, e.g. a
    # persistent buffer the newer code computes itself, or a re-ordering that needs the graph.
    "load_call": OpKind("load", None, frozenset({"function"}), frozenset({"pattern"}),
                        frozenset({"pattern"})),
}

def check_params(kind: str, params: Mapping[str, Any]) -> list[str]:
    """Problems with one op table (empty when it is valid); pure, used by the step loader."""
    spec = OPS.get(kind)
    if spec is None:
        return [f"unknown op kind {kind!r} (known: {', '.join(sorted(OPS))})"]
    problems = [f"op {kind!r} needs {p!r}" for p in sorted(spec.required - params.keys())]
    extra = params.keys() - spec.required - spec.optional
    problems += [f"op {kind!r} does not take {p!r}" for p in sorted(extra)]
    if kind == "flatten_chunks" and isinstance(params.get("pattern"), re.Pattern):
        missing = {"prefix", "chunk", "block"} - params["pattern"].groupindex.keys()
        if missing:
            problems.append(f"flatten_chunks pattern lacks named groups {sorted(missing)}")
    if kind == "level_rename":
        if isinstance(params.get("pattern"), re.Pattern) and "level" not in params["pattern"].groupindex:
            problems.append("level_rename pattern lacks the named group 'level'")
        levels = params.get("levels")
        if not isinstance(levels, list) or not levels or not all(isinstance(v, str) and v for v in levels):
            problems.append("level_rename levels must be a list of dotted metadata paths")
        for key in ("shift", "at"):
            value = params.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"level_rename {key} must be an integer")
    if kind == "load_call" and params.get("function") not in LOAD_FUNCTIONS:
        problems.append(f"load_call function {params.get('function')!r} is not registered "
                        f"(known: {', '.join(sorted(LOAD_FUNCTIONS))})")
    if kind == "meta_call" and params.get("function") not in META_FUNCTIONS:
        problems.append(f"meta_call function {params.get('function')!r} is not registered "
                        f"(known: {', '.join(sorted(META_FUNCTIONS))})")
    return problems


__all__ = ["Context", "LOAD_FUNCTIONS", "LOAD_SUPPLIES", "META_FUNCTIONS", "OPS", "OpError", "OpKind",
           "check_params", "load_consumed", "load_supplied", "lookup"]
