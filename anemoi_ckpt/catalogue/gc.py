"""Garbage collection: delete the checkpoints that no kept checkpoint needs.

Kept: every checkpoint carrying a keep tag, and all its ancestors. Candidates: every other
registered checkpoint. A file is deleted only after opening it and finding the same uuid and
content id there: a path may have been overwritten by another checkpoint since it was registered.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from ..errors import AncError, UsageError, one_line
from .db import CatalogueError, Db, db_path, opened, write_txn
from ..container.urls import filesystem, is_url

_KEEP = """
WITH RECURSIVE keep(uuid) AS (
    SELECT uuid FROM tags WHERE tag IN (SELECT value FROM json_each(:tags))
    UNION
    SELECT e.parent FROM edges e JOIN keep k ON e.child = k.uuid
)
"""
_CANDIDATES = _KEEP + """
SELECT c.uuid, c.kind, c.content_id, c.size, c.created,
       (SELECT json_group_array(tag) FROM tags t WHERE t.uuid = c.uuid),
       (SELECT json_group_array(location) FROM locations l WHERE l.uuid = c.uuid)
FROM checkpoints c WHERE c.uuid NOT IN (SELECT uuid FROM keep) ORDER BY c.created, c.rowid
"""
# Re-checked inside each deletion's transaction: has the checkpoint, or any descendant, been
# given a keep tag since the plan was made (by another process)?
_NOW_KEPT = """
WITH RECURSIVE down(uuid) AS (
    SELECT :uuid
    UNION
    SELECT e.child FROM edges e JOIN down d ON e.parent = d.uuid
)
SELECT 1 FROM tags WHERE uuid IN (SELECT uuid FROM down)
    AND tag IN (SELECT value FROM json_each(:tags)) LIMIT 1
"""


def _check_keep_tags(conn: sqlite3.Connection, keep_tags: list[str]) -> None:
    if not keep_tags:
        raise UsageError(None, "gc needs at least one keep tag: without one it would delete every "
                         "registered checkpoint")
    for t in keep_tags:  # a misspelt tag keeps nothing: refuse rather than delete its checkpoints
        if conn.execute("SELECT 1 FROM tags WHERE tag = ? LIMIT 1", (t,)).fetchone() is None:
            raise CatalogueError(db_path(conn), f"no checkpoint has the tag {t!r}",
                                 "a misspelt keep tag would delete what it should keep")


def _plan(conn: sqlite3.Connection, keep_tags: list[str]) -> list[dict[str, Any]]:
    _check_keep_tags(conn, keep_tags)
    rows = conn.execute(_CANDIDATES, {"tags": json.dumps(keep_tags)}).fetchall()
    return [{"uuid": u, "kind": k, "content_id": cid, "size": size, "created": created,
             "tags": json.loads(tags), "locations": json.loads(locs)}
            for u, k, cid, size, created, tags, locs in rows]


def gc_plan(db: Db, keep_tags: list[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """The checkpoints :func:`gc` would delete (uuid, kind, content_id, size, created, tags,
    locations), oldest first. Refuses no keep tag, or a keep tag that no checkpoint carries."""
    with opened(db) as conn:
        return _plan(conn, list(keep_tags))


def _not_ours(location: str, uuid: str, cid: str) -> dict[str, Any] | None:
    """Why ``location`` must be left in place (a result to report), or None: it opens as the
    checkpoint ``uuid`` with content id ``cid``."""
    from ..reader import open_checkpoint

    try:
        with open_checkpoint(location) as ck:
            found = (ck.uuid, ck.content_id)
    except Exception as e:  # noqa: BLE001 - AncError, or a network error of any fsspec backend
        note = e.line() if isinstance(e, AncError) else f"{type(e).__name__}: {e}"
        return {"location": location, "action": "skipped", "forget": False,
                "note": f"cannot check it is this checkpoint, left in place: {note}"}
    if found != (uuid, cid):
        # Overwritten by another checkpoint: not ours to delete, and our claim on it is stale.
        return {"location": location, "action": "skipped", "forget": True,
                "note": f"{location}: now holds another checkpoint ({found[0]}, {found[1]}), left in place"}
    return None


def _remove_local(location: str, uuid: str, cid: str) -> dict[str, Any]:
    if not os.path.lexists(location):
        return {"location": location, "action": "missing", "forget": True}
    try:
        before = os.stat(location)
    except OSError as e:
        return {"location": location, "action": "skipped", "forget": False,
                "note": f"cannot check it is this checkpoint, left in place: {location}: {e.strerror}"}
    skip = _not_ours(location, uuid, cid)
    if skip is not None:
        return skip
    try:
        after = os.stat(location)
    except OSError:
        after = None
    ident = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    if after is None or ident != (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns):
        return {"location": location, "action": "skipped", "forget": False,
                "note": f"{location}: changed while it was being checked, left in place"}
    try:
        os.remove(location)
    except OSError as e:
        return {"location": location, "action": "skipped", "forget": False,
                "note": f"{location}: cannot delete ({e.strerror})"}
    return {"location": location, "action": "deleted", "forget": True}


def _remove_remote(location: str, uuid: str, cid: str) -> dict[str, Any]:
    skip = _not_ours(location, uuid, cid)
    if skip is not None:
        return skip
    try:
        fs, path = filesystem(location)
        fs.rm(path)
    except Exception as e:  # noqa: BLE001 - AncError, or any fsspec backend's own errors
        why = e.what if isinstance(e, AncError) else f"{type(e).__name__}: {e}"
        return {"location": location, "action": "skipped", "forget": False,
                "note": f"{location}: cannot delete ({why})"}
    return {"location": location, "action": "deleted", "forget": True}


def _collect_one(conn: sqlite3.Connection, cand: dict[str, Any], keep_json: str) -> dict[str, Any]:
    uuid, cid = cand["uuid"], cand["content_id"]
    with write_txn(conn):
        if conn.execute(_NOW_KEPT, {"uuid": uuid, "tags": keep_json}).fetchone():
            return {"uuid": uuid, "removed": False, "note": "now kept (tagged since the plan)",
                    "locations": []}
        locs = [loc for (loc,) in conn.execute("SELECT location FROM locations WHERE uuid = ? "
                                               "ORDER BY added, location", (uuid,))]
        results = []
        for loc in locs:
            r = (_remove_remote if is_url(loc) else _remove_local)(loc, uuid, cid)
            if r.pop("forget"):
                conn.execute("DELETE FROM locations WHERE uuid = ? AND location = ?", (uuid, loc))
            results.append(r)
        left = conn.execute("SELECT count(*) FROM locations WHERE uuid = ?", (uuid,)).fetchone()[0]
        if left == 0:  # tags and locations cascade; edges and records stay as history
            conn.execute("DELETE FROM checkpoints WHERE uuid = ?", (uuid,))
    out = {"uuid": uuid, "removed": left == 0, "locations": results}
    if left:
        out["note"] = f"{left} location(s) left in place: kept in the catalogue"
    return out


def gc(db: Db, keep_tags: list[str] | tuple[str, ...], *, delete: bool = False) -> dict[str, Any]:
    """Plan (``delete=False``) or carry out the collection. Returns ``{"keep_tags", "candidates":
    gc_plan(...), "bytes", "deleted": bool, "results": [...]}``; each result lists its locations
    with ``action`` deleted / missing / skipped (and a ``note`` saying why), and whether the
    catalogue entry was ``removed`` (only once no location of it is left)."""
    keep = list(keep_tags)
    with opened(db) as conn:
        plan = _plan(conn, keep)
        report: dict[str, Any] = {"catalogue": db_path(conn), "keep_tags": keep, "candidates": plan,
                                  "bytes": sum(c["size"] or 0 for c in plan), "deleted": delete,
                                  "results": []}
        if delete:
            keep_json = json.dumps(keep)
            for cand in plan:
                report["results"].append(_collect_one(conn, cand, keep_json))
    return report


def warnings_of(report: dict[str, Any]) -> list[str]:
    """The skipped locations' notes, one line each, for the CLI to print on stderr."""
    out = []
    for r in report.get("results", []):
        for loc in r["locations"]:
            if loc["action"] == "skipped":
                out.append(one_line(loc["note"]))
        if r.get("note") and not r["removed"]:
            out.append(one_line(f"{r['uuid']}: {r['note']}"))
    return out
