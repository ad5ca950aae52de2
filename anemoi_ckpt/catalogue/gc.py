"""Garbage collection: delete the checkpoints that no kept checkpoint needs.

Kept: every checkpoint carrying a keep tag, and all its ancestors. Candidates: every other
registered checkpoint. A file is deleted only after opening it and finding the same uuid and
content id there: a path may have been overwritten by another checkpoint since it was registered.
The object deleted is the object checked: a local entry is renamed aside and compared (device,
inode, size, mtime) with the file that was opened before it is unlinked; a remote object is
removed through the same filesystem object and path the reader used, if its version is
unchanged. Locations whose form different parsers read differently (``::`` chains,
``file://host/...``, ``%``/``?``/``#`` in ``file://`` URLs, relative paths) are left in place.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

from ..errors import AncError, UsageError, one_line
from .db import CatalogueError, Db, db_path, opened, write_txn
from ..container.urls import ambiguous, local_path

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


def _skip(location: str, note: str, forget: bool = False) -> dict[str, Any]:
    return {"location": location, "action": "skipped", "forget": forget, "note": note}


def _checked(location: str, target: str, uuid: str, cid: str,
             grab: Callable[[Any], Any]) -> tuple[dict[str, Any] | None, Any]:
    """Open ``target`` (the resolved path or URL of ``location``) and check it is the checkpoint
    ``uuid`` with content id ``cid``: (None, ``grab(ck)`` taken while it is open), or (why it
    must be left in place, None)."""
    from ..reader import open_checkpoint

    try:
        with open_checkpoint(target) as ck:
            found = (ck.uuid, ck.content_id)
            got = grab(ck)
    except Exception as e:  # noqa: BLE001 - AncError, or a network error of any fsspec backend
        note = e.line() if isinstance(e, AncError) else f"{type(e).__name__}: {e}"
        return _skip(location, f"cannot check it is this checkpoint, left in place: {note}"), None
    if found != (uuid, cid):
        # Overwritten by another checkpoint: not ours to delete, and our claim on it is stale.
        return _skip(location, f"{location}: now holds another checkpoint ({found[0]}, {found[1]}), "
                     "left in place", forget=True), None
    return None, got


def _ident(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _remove_local(location: str, path: str, uuid: str, cid: str) -> dict[str, Any]:
    """Delete the directory entry ``path`` only if the object it names is the very one that was
    opened and checked: the entry is first renamed aside inside its directory (atomic, through
    one open directory descriptor), then its inode, size and mtime are compared with those of
    the checked file; a mismatch puts it back, never over a newer file."""
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        return _skip(location, f"{location}: not a file name, left in place")
    try:
        dfd = os.open(parent or os.sep, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return {"location": location, "action": "missing", "forget": True}
    except OSError as e:
        return _skip(location, f"cannot check it is this checkpoint, left in place: {location}: {e.strerror}")
    try:
        try:
            entry = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return {"location": location, "action": "missing", "forget": True}
        except OSError as e:
            return _skip(location, f"cannot check it is this checkpoint, left in place: {location}: {e.strerror}")
        skip, checked = _checked(location, path, uuid, cid, lambda ck: _ident(os.fstat(ck._fh.fileno())))
        if skip is not None:
            return skip
        aside = f".{name[:200]}.gc-{os.getpid()}-{secrets.token_hex(6)}"
        try:
            os.rename(name, aside, src_dir_fd=dfd, dst_dir_fd=dfd)
        except OSError as e:
            return _skip(location, f"{location}: cannot delete ({e.strerror})")
        try:
            moved = os.stat(aside, dir_fd=dfd, follow_symlinks=False)
            same = (moved.st_dev, moved.st_ino) == (entry.st_dev, entry.st_ino) \
                and _ident(os.stat(aside, dir_fd=dfd)) == checked
        except OSError:
            same = False
        if same:
            try:
                os.unlink(aside, dir_fd=dfd)
            except OSError as e:
                return _skip(location, f"{location}: cannot delete ({e.strerror}); it is now "
                             f"{os.path.join(parent, aside)}")
            return {"location": location, "action": "deleted", "forget": True}
        try:  # put back what we moved, unless something new took its name meanwhile
            os.link(aside, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            os.unlink(aside, dir_fd=dfd)
            note = f"{location}: changed while it was being checked, left in place"
        except OSError:
            note = (f"{location}: changed while it was being checked, left in place as "
                    f"{os.path.join(parent, aside)}")
        return _skip(location, note)
    finally:
        os.close(dfd)


#: fsspec info() keys that change when an object is rewritten (per backend: s3, gcs, http, local)
_VERSION_KEYS = ("size", "ETag", "etag", "mtime", "LastModified", "updated", "generation", "md5Hash")


def _version(fs: Any, path: str) -> dict[str, Any]:
    info = fs.info(path)
    return {k: str(info[k]) for k in _VERSION_KEYS if k in info}


def _remove_remote(location: str, uuid: str, cid: str) -> dict[str, Any]:
    """Delete through the very filesystem object and path the check read (the reader's
    RangeFile), if the object's version (size, ETag, mtime) is still the one checked."""
    def grab(ck: Any) -> tuple[Any, str, dict[str, Any]] | None:
        if ck.remote is None:
            return None
        fs, path = ck.remote._fs, ck.remote._path
        return fs, path, _version(fs, path)

    skip, got = _checked(location, location, uuid, cid, grab)
    if skip is not None:
        return skip
    fs, path, version = got
    try:
        if _version(fs, path) != version:
            return _skip(location, f"{location}: changed while it was being checked, left in place")
        fs.rm(path)
    except Exception as e:  # noqa: BLE001 - AncError, or any fsspec backend's own errors
        why = e.what if isinstance(e, AncError) else f"{type(e).__name__}: {e}"
        return _skip(location, f"{location}: cannot delete ({why})")
    return {"location": location, "action": "deleted", "forget": True}


def _remove(location: str, uuid: str, cid: str) -> dict[str, Any]:
    """Check, then delete, one location: refused (left in place, kept in the catalogue) when its
    form could name different objects for different parsers (:func:`ambiguous`); a path or a
    ``file://`` URL through :func:`_remove_local`, any other URL through :func:`_remove_remote`."""
    why = ambiguous(location)
    if why is not None:
        return _skip(location, f"{location}: ambiguous location ({why}), left in place",)
    path = local_path(location)  # every form local_path refuses, ambiguous() already refused
    if path is not None:
        return _remove_local(location, path, uuid, cid)
    return _remove_remote(location, uuid, cid)


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
            r = _remove(loc, uuid, cid)
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
