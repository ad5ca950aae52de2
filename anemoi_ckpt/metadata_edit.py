"""Editing the anemoi metadata of an ``.anc``: ``anemoi-ckpt metadata``.

The pure part (``--set a.b.c=VALUE`` parsing, applying, ``--load`` reading, which keys changed) is
separate from :func:`rewrite`, which writes the edited file: every section is copied unchanged
(tensor sections byte for byte, without re-encoding), the anemoi metadata is replaced, and the new
file gets a new uuid and a lineage record of the edit (operation ``metadata-edit``).

A file whose ``anemoi.json`` was rewritten by anemoi-utils (``anemoi-utils metadata --inplace``)
is *resealed* the same way: the edited dict becomes the recorded metadata, and the record keeps
the digest the manifest had and the digest of the edited member.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .container.hashing import sha256_hex, tagged
from .errors import FormatError, UsageError
from .reader import Checkpoint

OPERATION = "metadata-edit"
#: Keys the writer owns: it sets the file's uuid and the paths of the supporting arrays itself.
WRITER_KEYS = ("uuid", "supporting_arrays_paths")


# --- pure functions ------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A ``--set`` value read as YAML (``3`` is an int, ``[a, b]`` a list, ``null`` None), as
    ``anemoi-utils`` users write them; JSON (a YAML subset) when PyYAML is not installed."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml ships with every anemoi install
        try:
            return json.loads(text)
        except ValueError:
            return text
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise UsageError(None, f"--set value {text[:80]!r} is not valid YAML ({str(e).splitlines()[0]})",
                         "quote it, e.g. --set 'key=\"text\"'") from None


def parse_assignment(text: str) -> tuple[tuple[str, ...], Any]:
    """``"a.b.c=VALUE"`` -> (("a", "b", "c"), parsed VALUE); one clear line for a malformed one."""
    key, sep, value = text.partition("=")
    keys = tuple(key.strip().split("."))
    if not sep or not key.strip() or any(not k for k in keys):
        raise UsageError(None, f"--set {text[:80]!r} is not KEY=VALUE",
                         "e.g. --set config.training.max_epochs=10 (dots separate nested keys)")
    if keys[0] in WRITER_KEYS:
        raise UsageError(None, f"--set {keys[0]}: this key is written by anemoi-ckpt itself",
                         "the new file gets a new uuid and its own supporting_arrays_paths")
    return keys, parse_value(value)


def set_path(md: Mapping[str, Any], keys: Sequence[str], value: Any) -> dict[str, Any]:
    """A copy of ``md`` with ``md[k0][k1]...[kn] = value``; missing levels are created, a level
    that exists but is not an object is refused (it would silently replace a value)."""
    out = copy.deepcopy(dict(md))
    node: dict[str, Any] = out
    for i, k in enumerate(keys[:-1]):
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            where = ".".join(keys[: i + 1])
            raise UsageError(None, f"--set {'.'.join(keys)}: {where} is a {type(nxt).__name__}, "
                             "not an object", f"set {where} itself instead")
        node = nxt
    node[keys[-1]] = value
    return out


def apply_sets(md: Mapping[str, Any], assignments: Sequence[str]) -> dict[str, Any]:
    """``md`` with each ``KEY=VALUE`` applied in order. A key that holds a string keeps a string
    when VALUE reads as a number or boolean (``version=2.0`` stays ``"2.0"``, not the float 2.0
    YAML would make of it); a list, object or null still replaces it."""
    out = dict(md)
    for text in assignments:
        keys, value = parse_assignment(text)
        if isinstance(value, (bool, int, float)) and isinstance(_get(out, keys), str):
            value = text.partition("=")[2].strip()
        out = set_path(out, keys, value)
    return out


def _get(md: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = md
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def _same(a: Any, b: Any) -> bool:
    # NaN is in anemoi metadata (statistics); NaN != NaN would report it as changed every time
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


_MISSING = object()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value differs (added, removed or changed), deepest differing object
    level (an added or removed object: its leaves); the writer's own keys are left out. Sorted."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return [] if _same(old, new) else [prefix or "(top level)"]
    out: list[str] = []
    for k in sorted(set(old) | set(new), key=str):
        if not prefix and k in WRITER_KEYS:
            continue
        where = f"{prefix}.{k}" if prefix else str(k)
        a, b = old.get(k, _MISSING), new.get(k, _MISSING)
        if a is _MISSING and isinstance(b, Mapping) and b:  # a new object: its leaves are new
            a = {}
        elif b is _MISSING and isinstance(a, Mapping) and a:
            b = {}
        if a is _MISSING or b is _MISSING:
            out.append(where)
        else:
            out.extend(changed_keys(a, b, where))
    return sorted(out)


def load_json(path: str) -> dict[str, Any]:
    """``--load``: the whole anemoi metadata from a JSON file (NaN allowed, as anemoi writes it)."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise UsageError(path, "no such file", "give the JSON file written by 'metadata FILE --json'") from None
    except (OSError, ValueError) as e:
        raise UsageError(path, f"not a JSON file ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise UsageError(path, f"holds a JSON {type(obj).__name__}, not an object",
                         "the anemoi metadata is one JSON object")
    return obj


# --- writing -------------------------------------------------------------------------------------
def edited_arrays(ck: Checkpoint, md: dict[str, Any]) -> dict[str, Any]:
    """The supporting arrays the edited metadata ``md`` lists, read from the file's own members
    with the reader's checks; refuses an edit that would silently drop the file's arrays."""
    has_arrays = any(s.role == "supporting-array" for s in ck.sections())
    if has_arrays and not md.get("supporting_arrays_paths"):
        raise FormatError(ck.path, "the edited anemoi metadata has no supporting_arrays_paths, so "
                          "the file's supporting arrays would be lost",
                          "put supporting_arrays_paths back (as 'anemoi-utils metadata --dump' "
                          "shows it) and edit again")
    # The reader's own parsing and checks of supporting_arrays_paths, on the edited dict.
    ck.__dict__["anemoi_metadata"] = md
    ck.__dict__.pop("supporting_arrays", None)
    return ck.supporting_arrays


def rewrite(ck: Checkpoint, dst: str, md: dict[str, Any], parameters: Mapping[str, Any],
            *, durable: bool = True) -> tuple[str, str]:
    """Write ``ck`` to ``dst`` with anemoi metadata ``md``: every other section copied unchanged,
    a new uuid, a lineage record (``metadata-edit`` with ``parameters``). Returns (uuid, content id).
    ``dst`` may be ``ck.path``: the output is a temp file renamed over it at the end."""
    from .writer import Writer

    arrays = edited_arrays(ck, md)
    meta = ck.metadata.model_dump(mode="json")
    with Writer(dst, kind=ck.kind, metadata=meta, anemoi_metadata=md, supporting_arrays=arrays,
                parents=[ck], operation=OPERATION, parameters=parameters, durable=durable,
                compress=ck.compression) as w:
        for name in ck.tensor_sections():
            w.copy_section(name, ck)  # the member's bytes, CRC and digests: nothing re-encoded
        for doc in ck.documents():
            w.add_document(doc, ck.document(doc))
        for member in ck.carried():
            w.add_carried(member, ck.carried_bytes(member))
    assert w.content_id is not None
    return w.uuid, w.content_id


def reseal_parameters(ck: Checkpoint) -> dict[str, Any]:
    """The lineage parameters of a reseal: the digest the manifest recorded and the digest of
    the member as edited outside anemoi-ckpt."""
    rel = ck._anemoi_rel
    if rel not in ck.edited_members():
        if rel in ck._sections:
            member = ck._members[rel]
            raw = ck.read_bytes(member.data_offset, member.size)
            if tagged(sha256_hex(raw)) != ck.section(rel).digest:  # and the zip CRC disagrees too
                raise FormatError(ck.path, f"{rel} is damaged, not edited (its bytes match neither "
                                  "the manifest's digest nor the zip's CRC-32)",
                                  "run 'anemoi-ckpt verify'; restore the file from a copy")
        raise UsageError(ck.path, "nothing to reseal: the anemoi metadata is as anemoi-ckpt wrote it",
                         "--reseal records an edit made by another tool (anemoi-utils metadata --inplace)")
    member = ck._members[rel]
    raw = ck.read_bytes(member.data_offset, member.size)
    return {"resealed": True, "member": rel, "old_digest": ck.section(rel).digest,
            "new_digest": tagged(sha256_hex(raw))}


def same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


__all__ = ["OPERATION", "apply_sets", "changed_keys", "load_json", "parse_assignment",
           "parse_value", "reseal_parameters", "rewrite", "set_path"]
