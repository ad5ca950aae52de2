"""Looking things up: uuid prefixes, tags, listings, one entry in full, where a file lives."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Any

from ..errors import UsageError
from ..lineage.build import utc_now
from .db import CatalogueError, Db, db_path, opened, write_txn
from ..container.urls import is_url

#: A uuid or a prefix of one, with or without its dashes.
_PREFIX = re.compile(r"[0-9a-f-]+")
_MIN_PREFIX = 8
#: Tags are typed on command lines and printed in columns: no spaces, no control characters.
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,127}")


def _canonical_prefix(text: str) -> str:
    """``3f2a1b4c5d6e...`` (dashes left out, as some tools print uuids) -> ``3f2a1b4c-5d6e-...``."""
    if "-" in text:
        return text
    cuts = [c for c in (8, 12, 16, 20) if c < len(text)]
    parts, start = [], 0
    for c in cuts:
        parts.append(text[start:c])
        start = c
    parts.append(text[start:])
    return "-".join(parts)


def resolve_uuid(conn: sqlite3.Connection, text: str, *, records: bool = False) -> str:
    """The one registered uuid equal to ``text`` or starting with it (>= 8 hex digits, like git).
    ``records=True`` also searches the lineage records (ancestors known but not registered)."""
    tables = ["checkpoints", "records"] if records else ["checkpoints"]
    for table in tables:  # an exact match wins, whatever the uuid looks like
        if conn.execute(f"SELECT 1 FROM {table} WHERE uuid = ?", (text,)).fetchone():
            return text
    prefix = text.strip().lower()
    if not _PREFIX.fullmatch(prefix) or len(prefix.replace("-", "")) < _MIN_PREFIX:
        raise UsageError(None, f"{text!r} is not a uuid or a uuid prefix",
                         f"give at least {_MIN_PREFIX} hex digits")
    prefix = _canonical_prefix(prefix)
    upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    for table in tables:
        # A range on the primary key: an index seek, where LIKE would scan every row.
        found = [u for (u,) in conn.execute(f"SELECT uuid FROM {table} WHERE uuid >= ? AND uuid < ? "
                                            "ORDER BY uuid LIMIT 6", (prefix, upper))]
        if len(found) == 1:
            return found[0]
        if found:
            more = ", ..." if len(found) > 5 else ""
            raise CatalogueError(db_path(conn), f"uuid prefix {prefix} is ambiguous: "
                                 f"{', '.join(found[:5])}{more}", "give more digits")
    what = "checkpoint or lineage record" if records else "registered checkpoint"
    raise CatalogueError(db_path(conn), f"no {what} with uuid {text}")


def _check_tag(tag: str) -> None:
    if not _TAG.fullmatch(tag):
        raise UsageError(None, f"invalid tag {tag!r}", "letters, digits and ._:/@+=- , at most "
                         "128, starting with a letter or digit")


def tag(db: Db, uuid: str, tag: str) -> dict[str, Any]:
    """Tag a registered checkpoint (idempotent). Returns uuid, tag and whether it was added."""
    _check_tag(tag)
    with opened(db) as conn, write_txn(conn):
        full = resolve_uuid(conn, uuid)
        added = conn.execute("INSERT OR IGNORE INTO tags (uuid, tag, added) VALUES (?, ?, ?)",
                             (full, tag, utc_now())).rowcount == 1
    return {"uuid": full, "tag": tag, "added": added}


def untag(db: Db, uuid: str, tag: str) -> dict[str, Any]:
    """Remove a tag; a checkpoint without that tag is an error (a typo should not pass silently)."""
    with opened(db) as conn, write_txn(conn):
        full = resolve_uuid(conn, uuid)
        if conn.execute("DELETE FROM tags WHERE uuid = ? AND tag = ?", (full, tag)).rowcount == 0:
            raise CatalogueError(db_path(conn), f"checkpoint {full} has no tag {tag!r}")
    return {"uuid": full, "tag": tag, "removed": True}


# Tags and locations per row as JSON arrays (correlated lookups on the primary keys), so a
# listing is one query whatever its length.
_ROW = """
SELECT c.uuid, c.kind, c.content_id, c.size, c.created,
       (SELECT json_group_array(tag) FROM (SELECT tag FROM tags t WHERE t.uuid = c.uuid ORDER BY tag)),
       (SELECT json_group_array(location) FROM
           (SELECT location FROM locations l WHERE l.uuid = c.uuid ORDER BY added, location))
FROM checkpoints c
"""


def _entry(row: tuple) -> dict[str, Any]:
    uuid, kind, cid, size, created, tags, locations = row
    return {"uuid": uuid, "kind": kind, "content_id": cid, "size": size, "created": created,
            "tags": json.loads(tags), "locations": json.loads(locations)}


def list_entries(db: Db, tag: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """Registered checkpoints (uuid, kind, content_id, size, created, tags, locations), oldest
    first, optionally only those with ``tag`` and/or of ``kind``."""
    sql, where, args = _ROW, [], []
    if tag is not None:
        sql += " JOIN tags f ON f.uuid = c.uuid AND f.tag = ?"  # index seek on tags_tag
        args.append(tag)
    if kind is not None:
        where.append("c.kind = ?")
        args.append(kind)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY c.created, c.rowid"  # rowid: registration order among equal timestamps
    with opened(db) as conn:
        return [_entry(r) for r in conn.execute(sql, args)]


def location_status(location: str) -> str:
    """``exists`` / ``missing`` for a local path; ``remote`` for a URL (not checked: no network)."""
    if is_url(location):
        return "remote"
    return "exists" if os.path.exists(location) else "missing"


def _ordered_locations(rows: list[tuple[str, str]]) -> list[dict[str, str]]:
    rank = {"exists": 0, "remote": 1, "missing": 2}
    out = [{"location": loc, "added": added, "status": location_status(loc)} for loc, added in rows]
    return sorted(out, key=lambda d: rank[d["status"]])  # stable: oldest first within a rank


def locate(db: Db, uuid: str) -> list[str]:
    """Where a checkpoint is: local files that exist first, then URLs, then local paths that
    no longer exist."""
    return [d["location"] for d in locate_detail(db, uuid)]


def locate_detail(db: Db, uuid: str) -> list[dict[str, str]]:
    """:func:`locate` with each location's status (exists, remote, missing) and when it was added."""
    with opened(db) as conn:
        full = resolve_uuid(conn, uuid)
        rows = conn.execute("SELECT location, added FROM locations WHERE uuid = ? ORDER BY added, "
                            "location", (full,)).fetchall()
    return _ordered_locations(rows)


def show(db: Db, uuid: str) -> dict[str, Any]:
    """Everything about one checkpoint: its row, tags, locations, parents, children and lineage
    record. A uuid known only as an ancestor (a lineage record) is shown with registered false."""
    with opened(db) as conn:
        if conn.in_transaction:
            return _show(conn, resolve_uuid(conn, uuid, records=True))
        conn.execute("BEGIN")  # one snapshot for the several queries below
        try:
            return _show(conn, resolve_uuid(conn, uuid, records=True))
        finally:
            conn.execute("COMMIT")


def _show(conn: sqlite3.Connection, full: str) -> dict[str, Any]:
    row = conn.execute("SELECT content_id, kind, size, created, registered, format_version, operation, "
                       "record_json FROM checkpoints WHERE uuid = ?", (full,)).fetchone()
    if row is None:
        cid, record_json = conn.execute("SELECT content_id, record_json FROM records WHERE uuid = ?",
                                        (full,)).fetchone()
        record = json.loads(record_json)
        out: dict[str, Any] = {"uuid": full, "registered": False, "content_id": cid,
                               "kind": record.get("kind"), "size": None, "created": record.get("created"),
                               "registered_at": None, "format_version": None,
                               "operation": record.get("operation")}
    else:
        cid, kind, size, created, registered, fv, operation, record_json = row
        out = {"uuid": full, "registered": True, "content_id": cid, "kind": kind, "size": size,
               "created": created, "registered_at": registered, "format_version": fv,
               "operation": operation}
    out["tags"] = [t for (t,) in conn.execute("SELECT tag FROM tags WHERE uuid = ? ORDER BY tag", (full,))]
    out["locations"] = _ordered_locations(conn.execute(
        "SELECT location, added FROM locations WHERE uuid = ? ORDER BY added, location", (full,)).fetchall())
    link = ("SELECT e.{other}, e.role, e.parent_content_id, c.uuid IS NOT NULL, "
            "coalesce(c.kind, json_extract(r.record_json, '$.kind')) FROM edges e "
            "LEFT JOIN checkpoints c ON c.uuid = e.{other} LEFT JOIN records r ON r.uuid = e.{other} "
            "WHERE e.{this} = ? ORDER BY e.{other}")
    out["parents"] = [{"uuid": u, "role": role, "content_id": pcid, "registered": bool(reg), "kind": k}
                      for u, role, pcid, reg, k in conn.execute(link.format(other="parent", this="child"),
                                                                (full,))]
    out["children"] = [{"uuid": u, "role": role, "registered": bool(reg), "kind": k}
                       for u, role, _, reg, k in conn.execute(link.format(other="child", this="parent"),
                                                              (full,))]
    out["record"] = json.loads(record_json)
    return out
