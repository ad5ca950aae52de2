"""Registering checkpoints: read each file's manifest and lineage, then one transaction per file.

Reading (:func:`read_entry`) is separate from writing (:func:`register_records`), so a batch is
read and ordered parents-first before the catalogue is touched, and a bulk loader (the benchmark)
can insert entries it built itself through the very same code path.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..lineage.build import utc_now
from ..container.schema import Lineage, LineageRecord, ParentRef
from ..container.urls import is_url
from .db import CatalogueError, Db, db_path, opened, write_txn

def normalize_location(location: str | os.PathLike) -> str:
    """URLs unchanged; local paths absolute (the catalogue is read from any working folder)."""
    text = os.fspath(location)
    return text if is_url(text) else os.path.abspath(text)


@dataclass(frozen=True)
class Entry:
    """What the catalogue stores about one file: its manifest's identity and its lineage block."""

    location: str
    uuid: str
    content_id: str
    kind: str
    size: int | None
    created: str
    format_version: str | None
    lineage: Lineage

    @property
    def record(self) -> LineageRecord:
        return self.lineage.records[0]

    @property
    def parents(self) -> list[ParentRef]:
        return self.record.parents


def read_entry(location: str | os.PathLike) -> Entry:
    """Open a file (path or URL) and read its manifest and lineage block only, never tensors."""
    from ..reader import open_checkpoint
    from ..lineage.view import check_lineage

    loc = normalize_location(location)
    with open_checkpoint(loc) as ck:
        block = ck.lineage
        check_lineage(block, loc, ck.uuid)  # an inconsistent block must not enter the catalogue
        return Entry(location=loc, uuid=ck.uuid, content_id=ck.content_id, kind=ck.kind,
                     size=getattr(ck, "size", None), created=ck.manifest.created,
                     format_version=ck.format_version, lineage=block)


def parents_first(entries: Sequence[Entry]) -> list[Entry]:
    """The batch reordered so that a file comes after its parents that are in the same batch;
    otherwise the command line's order is kept (a stable depth-first post-order)."""
    positions: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        positions.setdefault(e.uuid, []).append(i)
    state = [0] * len(entries)  # 0 unvisited, 1 on the stack, 2 placed
    out: list[Entry] = []
    for start in range(len(entries)):
        if state[start]:
            continue
        # Iterative: a long chain registered in one batch must not hit the recursion limit.
        stack = [(start, iter(entries[start].parents))]
        state[start] = 1
        while stack:
            i, parents = stack[-1]
            ref = next(parents, None)
            if ref is None:
                state[i] = 2
                out.append(entries[i])
                stack.pop()
                continue
            for j in positions.get(ref.uuid, ()):
                if not state[j]:  # state 1 would be a cycle (a hostile batch): just skip it
                    state[j] = 1
                    stack.append((j, iter(entries[j].parents)))
                    break
    return out


def _conflict(entry: Entry, what: str) -> CatalogueError:
    return CatalogueError(entry.location, what, "two files share a uuid but not their content; one "
                          "of them was altered")


def _check_against_catalogue(conn: sqlite3.Connection, entry: Entry, require_parents: bool) -> None:
    uuids = {r.uuid for r in entry.lineage.records} | {p.uuid for r in entry.lineage.records
                                                        for p in r.parents}
    known = dict(conn.execute("SELECT uuid, content_id FROM records WHERE uuid IN "
                              "(SELECT value FROM json_each(?))", (json.dumps(sorted(uuids)),)))
    for rec in entry.lineage.records:
        old = known.get(rec.uuid)
        if old is not None and old != rec.content_id:
            whose = "it" if rec.uuid == entry.uuid else f"its ancestor {rec.uuid}"
            raise _conflict(entry, f"{whose} has content id {rec.content_id}, the catalogue "
                            f"{db_path(conn)} has {old} for uuid {rec.uuid}")
        for ref in rec.parents:
            old = known.get(ref.uuid)
            if old is not None and ref.content_id is not None and ref.content_id != old:
                raise _conflict(entry, f"{rec.uuid} names parent {ref.uuid} with content id "
                                f"{ref.content_id}, the catalogue's record of it has {old}")
    if require_parents:
        for ref in entry.parents:
            if conn.execute("SELECT 1 FROM checkpoints WHERE uuid = ?", (ref.uuid,)).fetchone() is None:
                raise CatalogueError(entry.location, f"parent {ref.uuid} is not registered in "
                                     f"{db_path(conn)}", "register the parent first, or drop "
                                     "--require-parents")


def _insert(conn: sqlite3.Connection, entry: Entry, require_parents: bool, now: str) -> dict[str, Any]:
    _check_against_catalogue(conn, entry, require_parents)
    known = conn.execute("SELECT 1 FROM checkpoints WHERE uuid = ?", (entry.uuid,)).fetchone()
    if known is None:
        conn.execute("INSERT INTO checkpoints (uuid, content_id, kind, size, created, registered, "
                     "format_version, operation, record_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (entry.uuid, entry.content_id, entry.kind, entry.size, entry.created, now,
                      entry.format_version, entry.record.operation, entry.record.model_dump_json()))
    # Every record and edge the file carries, ancestors included: the catalogue can then resolve
    # the lineage of a later file that names one of them only by reference.
    conn.executemany("INSERT OR IGNORE INTO records (uuid, content_id, record_json) VALUES (?, ?, ?)",
                     [(r.uuid, r.content_id, r.model_dump_json()) for r in entry.lineage.records])
    conn.executemany("INSERT OR IGNORE INTO edges (child, parent, role, parent_content_id) "
                     "VALUES (?, ?, ?, ?)",
                     [(r.uuid, p.uuid, p.role, p.content_id) for r in entry.lineage.records
                      for p in r.parents])
    # One path holds one file: another checkpoint's claim on this location is stale now.
    replaced = [u for (u,) in conn.execute("SELECT uuid FROM locations WHERE location = ? AND uuid != ?",
                                           (entry.location, entry.uuid))]
    conn.execute("DELETE FROM locations WHERE location = ? AND uuid != ?", (entry.location, entry.uuid))
    added = conn.execute("INSERT OR IGNORE INTO locations (uuid, location, added) VALUES (?, ?, ?)",
                         (entry.uuid, entry.location, now)).rowcount == 1
    status = "new" if known is None else "added-location" if added else "known"
    return {"uuid": entry.uuid, "content_id": entry.content_id, "kind": entry.kind,
            "location": entry.location, "status": status, "replaced": replaced}


def register_records(conn: sqlite3.Connection, entries: Iterable[Entry], *,
                     require_parents: bool = False,
                     on_entry: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Insert already-read entries, in the order given, ONE transaction each: a process killed
    midway leaves every entry either complete (row, location, edges, records) or absent.

    Raises :class:`CatalogueError` at the first refused entry; those before it stay registered."""
    out = []
    for entry in entries:
        with write_txn(conn):
            result = _insert(conn, entry, require_parents, utc_now())
        out.append(result)
        if on_entry is not None:
            on_entry(result)
    return out


def register(db: Db, locations: Iterable[str | os.PathLike], *, require_parents: bool = False,
             on_entry: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Register files (paths or URLs) in the catalogue ``db``, created if missing.

    Every file is read first (a bad one fails before anything is written), then the batch is
    registered parents first. Re-registering a file adds its location; the same uuid with another
    content id is refused. ``require_parents``: refuse a file whose parents are not registered
    (earlier in this batch counts). Returns per file: uuid, content_id, kind, location, status
    ("new", "added-location" or "known") and the uuids whose claim on that location it replaced."""
    entries = parents_first([read_entry(loc) for loc in locations])
    with opened(db, create=True) as conn:
        return register_records(conn, entries, require_parents=require_parents, on_entry=on_entry)
