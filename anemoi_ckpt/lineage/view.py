"""Checking and drawing a file's lineage block: pure functions over a :class:`Lineage`.

Everything printed comes from the file, so every label is passed through :func:`one_line` (no
control character reaches a terminal) and quoted for the target syntax (DOT, Mermaid).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from typing import Any

from ..errors import FormatError, one_line
from ..container.schema import Lineage, LineageRecord, ParentRef

SECTION = "lineage.json"
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
#: Parameters that identify rather than describe (long hashes, versions): left out of summaries.
_HIDDEN = {"source_sha256", "tool_version", "source_versions", "keep_layout"}
_MAX_VALUE = 24
_MAX_PARAMS = 4
_MAX_ITEMS = 3  # items of a list shown before the count
_MAX_ITEM = 16  # characters of one list item
_DIGEST_HEX = 12  # hex digits kept of a digest, as git keeps of a commit
#: Levels of the tree drawn with their own indent; deeper ones keep the last indent, so a chain
#: of n records draws in O(n) characters, not O(n^2).
MAX_INDENT = 32
_DIGEST = re.compile(r"(?:([A-Za-z][A-Za-z0-9_-]{0,15}):([0-9a-fA-F]{13,})|([0-9a-fA-F]{32,}))")


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


def _short(value: Any, limit: int = _MAX_VALUE) -> str:
    text = one_line(str(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."


# The tree is read by people: a parameter line says what was done, not everything recorded
# (``--format json`` keeps every value exactly). The functions below turn one JSON value into its
# text on that line, or None to leave the parameter out.

def format_float(x: float) -> str:
    """``x`` to 4 significant digits, the precision a person compares losses and errors at
    (``0.14319390058517456`` -> ``0.1432``); trailing zeros dropped, so values typed by hand stay
    as typed (``0.5``, ``0.003``, ``1e-4``). Below 1e-3 and from 1e4 it is written with a short
    exponent (``1e-4``, ``2.5e-5``, ``1.235e5``: no ``+`` or leading zero), as learning rates are
    written. The text always parses back (``float``) to within half a unit of the 4th digit."""
    if not math.isfinite(x):
        return str(x)  # 'nan', 'inf', '-inf': float() reads them back
    mantissa, exp_text = f"{x:.3e}".split("e")
    exp = int(exp_text)  # the exponent after rounding to 4 digits (9999.7 -> 1.000e4)
    if x == 0 or -3 <= exp < 4:
        return f"{x:.4g}"  # fixed point for these exponents, trailing zeros dropped
    text = f"{mantissa.rstrip('0').rstrip('.')}e{exp}"
    if math.isinf(float(text)):  # rounding up past the largest float: keep every digit instead
        return repr(x).replace("e+", "e")
    return text


def short_digest(text: str) -> str:
    """A digest cut to ``<algorithm>:`` + 12 hex digits (``sha256:be7b1cdd2849``), or bare hex of
    32 digits or more cut to 12: enough to tell files apart and to grep for in the JSON, which
    keeps the full value. Any other text is returned unchanged."""
    m = _DIGEST.fullmatch(text)
    if m is None:
        return text
    if m.group(3) is not None:
        return m.group(3)[:_DIGEST_HEX]
    return f"{m.group(1)}:{m.group(2)[:_DIGEST_HEX]}"


def format_list(items: list[Any] | tuple[Any, ...]) -> str | None:
    """A list of scalars as ``[a,b,c]``; a longer one as its first three items and how many there
    are (``[q,k,v,...9 items]``), so a list of module names does not fill the line. Empty: None
    (nothing to say). A list holding documents, lists or nulls says only ``<n> items``."""
    if not items:
        return None
    shown = [format_value(v) for v in items[:_MAX_ITEMS]]
    if any(isinstance(v, (dict, list, tuple)) or v is None for v in items) or None in shown:
        return f"{len(items)} item" + ("" if len(items) == 1 else "s")
    body = ",".join(_short(v, _MAX_ITEM) for v in shown if v is not None)
    return f"[{body}]" if len(items) <= _MAX_ITEMS else f"[{body},...{len(items)} items]"


def format_value(value: Any) -> str | None:
    """One parameter value as the tree shows it, or None to leave the parameter out: a null, an
    empty string, list or document says nothing a person needs (``density=None rank=None`` was
    noise). Booleans and integers as written, floats by :func:`format_float`, digests by
    :func:`short_digest`, lists by :func:`format_list`; other strings escaped to one line and cut
    at 24 characters. A nested document (a training config) is left out: it belongs to
    ``--format json``."""
    if value is None or isinstance(value, dict) or value == "":
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, (list, tuple)):
        return format_list(value)
    return _short(short_digest(str(value)))


def summarize_parameters(rec: LineageRecord) -> str:
    """A few key parameters, e.g. ``source=last.ckpt source_format=lightning steps=2``: the ones
    an operation is known by first, then the others in order, each by :func:`format_value` (those
    it leaves out do not count towards the four shown)."""
    params = rec.parameters
    first: list[str] = []
    if rec.operation == "convert":
        first = ["source", "source_format", "dtype", "steps"]
    elif rec.operation == "merge":
        first = ["method"]
    items: list[tuple[str, str]] = []
    for k in [*(k for k in first if k in params), *(k for k in params if k not in first)]:
        v = params[k]
        if k in _HIDDEN:
            continue
        if rec.operation == "convert" and k == "steps" and isinstance(v, list):
            text: str | None = str(len(v))  # how many translation steps ran, 0 included
        else:
            text = format_value(v)
        if text is not None:
            items.append((k, text))
    return " ".join(f"{_short(k)}={v}" for k, v in items[:_MAX_PARAMS])


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


def signed_note(ref: ParentRef) -> str:
    """``  signed by <signer> (<form>)`` for a parent whose signature the writer verified
    (``merge --require-signed``), else nothing."""
    sig = ref.signature
    if sig is None:
        return ""
    return f"  signed by {_short(short_digest(sig.signer), 64)} ({one_line(sig.form)})"


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
    # Depth first with an explicit stack (a chain of 100,000 records must not hit the recursion
    # limit): each entry is (a record, the indent of its children, their level, the next parent).
    stack: list[tuple[LineageRecord, str, int, int]] = [(root, "", 0, 0)]
    flattened = False
    while stack:
        rec, indent, level, i = stack.pop()
        if i >= len(rec.parents):
            continue
        stack.append((rec, indent, level, i + 1))
        ref = rec.parents[i]
        last = i == len(rec.parents) - 1
        branch, below = ("└── ", "    ") if last else ("├── ", "│   ")
        role = f"({_role(ref)}) " if ref.role else ""
        parent = records.get(ref.uuid)
        if parent is None:
            lines.append(indent + branch + _recordless(ref) + signed_note(ref))
        elif parent.uuid in drawn:
            lines.append(f"{indent}{branch}{role}{short_uuid(parent.uuid)} (see above){signed_note(ref)}")
        else:
            drawn.add(parent.uuid)
            lines.append(indent + branch + role + describe(parent) + signed_note(ref))
            if level + 1 < MAX_INDENT:
                stack.append((parent, indent + below, level + 1, 0))
            else:
                if not flattened and parent.parents:
                    lines.append(f"{indent}{below}(deeper than {MAX_INDENT} levels: drawn without "
                                 "further indent)")
                    flattened = True
                stack.append((parent, indent, level + 1, 0))
    return "\n".join(lines)


def render_json(lineage: Lineage) -> str:
    return json.dumps(lineage.model_dump(mode="json"), indent=2, ensure_ascii=False)


def _nodes_and_edges(lineage: Lineage) -> tuple[list[tuple[str, list[str], bool]],
                                                   list[tuple[str, str, str | None]]]:
    """Nodes (uuid, label lines, has a record) and edges (parent, child, role), each once."""
    records = by_uuid(lineage)
    nodes: dict[str, tuple[str, list[str], bool]] = {}
    edges: dict[tuple[str, str, str | None], None] = {}  # ordered, and a set: each edge once
    for rec in records.values():
        nodes[rec.uuid] = (rec.uuid, [short_uuid(rec.uuid), f"{rec.kind} {one_line(rec.operation)}",
                                      short_cid(rec.content_id), short_date(rec.created)], True)
    for rec in records.values():
        for ref in rec.parents:
            if ref.uuid not in nodes:
                label = [short_uuid(ref.uuid), f"{_role(ref)}, no record"]
                nodes[ref.uuid] = (ref.uuid, label + ([short_cid(ref.content_id)] if ref.content_id else []),
                                   False)
            edges.setdefault((ref.uuid, rec.uuid, one_line(ref.role) if ref.role else None), None)
    return list(nodes.values()), list(edges)


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
