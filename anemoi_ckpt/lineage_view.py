"""Checking and drawing a file's lineage block: pure functions over a :class:`Lineage`.

Everything printed comes from the file, so every label is passed through :func:`one_line` (no
control character reaches a terminal) and quoted for the target syntax (DOT, Mermaid).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from .errors import FormatError, one_line
from .schema import Lineage, LineageRecord, ParentRef

SECTION = "lineage.json"
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
#: Parameters that identify rather than describe (long hashes, versions): left out of summaries.
_HIDDEN = {"source_sha256", "tool_version", "source_versions", "keep_layout"}
_MAX_VALUE = 24
_MAX_PARAMS = 4


# --- checks ------------------------------------------------------------------------------------

def check_lineage(lineage: Lineage, path: str | os.PathLike, own_uuid: str | None = None) -> None:
    """Raise one-line :class:`FormatError` if the block is inconsistent: records[0] is not the
    file (``own_uuid``, the manifest's), one uuid carries two different contents, or the parent
    links form a cycle. Renderers and ``verify_lineage`` assume a checked block."""
    def fail(what: str) -> None:
        raise FormatError(path, what, section=SECTION)

    if not lineage.records:
        fail("no records (records[0] must describe the file)")
    if own_uuid is not None and lineage.records[0].uuid != own_uuid:
        fail(f"records[0] has uuid {lineage.records[0].uuid}, the file's uuid is {own_uuid}")
    seen: dict[str, tuple[str, str]] = {}
    for rec in lineage.records:
        prev = seen.setdefault(rec.uuid, (rec.content_id, rec.kind))
        if prev != (rec.content_id, rec.kind):
            fail(f"uuid {rec.uuid} appears twice with different content ({prev[1]} {prev[0]} and "
                 f"{rec.kind} {rec.content_id})")
    for rec in lineage.records:
        for ref in rec.parents:
            known = seen.get(ref.uuid)
            if known and ref.content_id is not None and ref.content_id != known[0]:
                fail(f"{rec.uuid} names parent {ref.uuid} with content id {ref.content_id}, "
                     f"its record has {known[0]}")
    on_cycle = _find_cycle(by_uuid(lineage))
    if on_cycle is not None:
        fail(f"the parent links form a cycle through uuid {on_cycle}")


def by_uuid(lineage: Lineage) -> dict[str, LineageRecord]:
    """uuid -> its first record (a checked block has no conflicting second one)."""
    out: dict[str, LineageRecord] = {}
    for rec in lineage.records:
        out.setdefault(rec.uuid, rec)
    return out


def _find_cycle(records: dict[str, LineageRecord]) -> str | None:
    # Iterative depth-first search (a long chain must not hit the recursion limit): a parent that
    # is still on the stack closes a cycle.
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in records:
        if state.get(start):
            continue
        stack: list[tuple[str, Iterator[ParentRef]]] = [(start, iter(records[start].parents))]
        state[start] = 1
        while stack:
            uuid, parents = stack[-1]
            ref = next(parents, None)
            if ref is None:
                state[uuid] = 2
                stack.pop()
            elif state.get(ref.uuid) == 1:
                return ref.uuid
            elif ref.uuid in records and not state.get(ref.uuid):
                state[ref.uuid] = 1
                stack.append((ref.uuid, iter(records[ref.uuid].parents)))
    return None


# --- pieces of a line --------------------------------------------------------------------------

def short_uuid(uuid: str) -> str:
    return one_line(uuid[:8])


def short_cid(content_id: str | None) -> str:
    if not content_id:
        return "?"
    hexpart = content_id.split(":", 1)[1] if ":" in content_id else content_id
    return one_line(hexpart[:12])


def short_date(created: str) -> str:
    try:
        return dt.datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return one_line(created[:16])


def _short(value: Any) -> str:
    text = one_line(str(value))
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."


def summarize_parameters(rec: LineageRecord) -> str:
    """A few key parameters, e.g. ``source=last.ckpt source_format=lightning steps=2``."""
    params = rec.parameters
    items: list[tuple[str, Any]] = []
    if rec.operation == "convert":
        items = [(k, params[k]) for k in ("source", "source_format", "dtype") if k in params]
        if isinstance(params.get("steps"), list):
            items.append(("steps", len(params["steps"])))
    elif rec.operation == "merge" and "method" in params:
        items = [("method", params["method"])]
    shown = {k for k, _ in items}
    for k, v in params.items():
        if k not in shown and k not in _HIDDEN and (v is None or isinstance(v, (str, int, float, bool))):
            items.append((k, v))
    return " ".join(f"{_short(k)}={_short(v)}" for k, v in items[:_MAX_PARAMS])


def describe(rec: LineageRecord) -> str:
    """``<uuid8>  <kind>  <operation>  [<params>  ]<cid12>  <YYYY-MM-DD HH:MM>``."""
    fields = [short_uuid(rec.uuid), rec.kind, one_line(rec.operation)]
    params = summarize_parameters(rec)
    if params:
        fields.append(params)
    fields += [short_cid(rec.content_id), short_date(rec.created)]
    return "  ".join(fields)


def _role(ref: ParentRef) -> str:
    return one_line(ref.role) if ref.role else "parent"


def _recordless(ref: ParentRef) -> str:
    text = f"{short_uuid(ref.uuid)} ({_role(ref)}, not an .anc: no record)"
    return text + (f"  {short_cid(ref.content_id)}" if ref.content_id else "")


# --- renderers ---------------------------------------------------------------------------------

def render_tree(lineage: Lineage) -> str:
    """The file first, its parents indented below it; a node reached twice is drawn in full once,
    then as ``<uuid8> (see above)``."""
    records = by_uuid(lineage)
    root = lineage.records[0]
    lines = [describe(root)]
    drawn = {root.uuid}

    def walk(rec: LineageRecord, indent: str) -> None:
        for i, ref in enumerate(rec.parents):
            last = i == len(rec.parents) - 1
            branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
            role = f"({_role(ref)}) " if ref.role else ""
            parent = records.get(ref.uuid)
            if parent is None:
                lines.append(indent + branch + _recordless(ref))
            elif parent.uuid in drawn:
                lines.append(f"{indent}{branch}{role}{short_uuid(parent.uuid)} (see above)")
            else:
                drawn.add(parent.uuid)
                lines.append(indent + branch + role + describe(parent))
                walk(parent, indent + below)

    walk(root, "")  # depth is bounded: check_lineage refused cycles, and each node expands once
    return "\n".join(lines)


def render_json(lineage: Lineage) -> str:
    return json.dumps(lineage.model_dump(mode="json"), indent=2, ensure_ascii=False)


def _nodes_and_edges(lineage: Lineage) -> tuple[list[tuple[str, list[str], bool]],
                                                   list[tuple[str, str, str | None]]]:
    """Nodes (uuid, label lines, has a record) and edges (parent, child, role), each once."""
    records = by_uuid(lineage)
    nodes: dict[str, tuple[str, list[str], bool]] = {}
    edges: list[tuple[str, str, str | None]] = []
    for rec in records.values():
        nodes[rec.uuid] = (rec.uuid, [short_uuid(rec.uuid), f"{rec.kind} {one_line(rec.operation)}",
                                      short_cid(rec.content_id), short_date(rec.created)], True)
    for rec in records.values():
        for ref in rec.parents:
            if ref.uuid not in nodes:
                label = [short_uuid(ref.uuid), f"{_role(ref)}, no record"]
                nodes[ref.uuid] = (ref.uuid, label + ([short_cid(ref.content_id)] if ref.content_id else []),
                                   False)
            edge = (ref.uuid, rec.uuid, one_line(ref.role) if ref.role else None)
            if edge not in edges:
                edges.append(edge)
    return list(nodes.values()), edges


def _dot_quote(text: str) -> str:
    return '"' + one_line(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(lineage: Lineage) -> str:
    """Graphviz DOT: one node per uuid, edges parent -> child labelled with the parent's role."""
    nodes, edges = _nodes_and_edges(lineage)
    out = ["digraph lineage {", "  node [shape=box, fontname=monospace];"]
    for uuid, label, has_record in nodes:
        # Each line is escaped on its own, then joined with DOT's own line-break escape.
        text = "\\n".join(_dot_quote(line)[1:-1] for line in label)
        style = "" if has_record else ", style=dashed"
        out.append(f"  {_dot_quote(uuid)} [label=\"{text}\"{style}];")
    for parent, child, role in edges:
        attr = f" [label={_dot_quote(role)}]" if role else ""
        out.append(f"  {_dot_quote(parent)} -> {_dot_quote(child)}{attr};")
    out.append("}")
    return "\n".join(out)


def mermaid_id(uuid: str) -> str:
    """A Mermaid-safe node id: ``n_<hex>`` for a uuid, a hash for anything else."""
    if _UUID.fullmatch(uuid):
        return "n_" + uuid.replace("-", "").lower()
    return "n_x" + hashlib.sha256(uuid.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _mermaid_text(text: str) -> str:
    # Inside "..." Mermaid reads entity codes; '#' first so the codes added here stay intact.
    text = one_line(text).replace("#", "#35;")
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def render_mermaid(lineage: Lineage) -> str:
    """Mermaid ``flowchart TD``: parents above their children."""
    nodes, edges = _nodes_and_edges(lineage)
    out = ["flowchart TD"]
    for uuid, label, has_record in nodes:
        text = "<br/>".join(_mermaid_text(line) for line in label)
        out.append(f'  {mermaid_id(uuid)}["{text}"]' if has_record else f'  {mermaid_id(uuid)}(["{text}"])')
    for parent, child, role in edges:
        arrow = f'-->|"{_mermaid_text(role)}"|' if role else "-->"
        out.append(f"  {mermaid_id(parent)} {arrow} {mermaid_id(child)}")
    return "\n".join(out)


RENDERERS = {"tree": render_tree, "json": render_json, "dot": render_dot, "mermaid": render_mermaid}
