"""Lineage through the catalogue: a file's own block, completed with the ancestor records the
catalogue knows, so the existing checks and renderers (``anemoi_ckpt.lineage.view``) draw the whole history.

A file normally carries its ancestors' records, but not when a parent was named by reference
only (a ``ParentRef`` dict: a run that knew the parent's uuid but did not have the file). The
catalogue holds every record seen in any registered file, and fills those gaps.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from typing import Any

from ..container.schema import Lineage, LineageRecord
from .db import CatalogueError, Db, db_path, opened
from .query import resolve_uuid
from ..container.urls import is_url

# Every ancestor of the start uuids, by the parent edges of all known records. UNION (not UNION
# ALL) keeps each uuid once, which also ends the walk on a cycle that hostile files could form.
_ANCESTORS = """
WITH RECURSIVE anc(uuid) AS (
    SELECT value FROM json_each(?)
    UNION
    SELECT e.parent FROM edges e JOIN anc a ON e.child = a.uuid
)
SELECT r.uuid, r.record_json FROM anc JOIN records r ON r.uuid = anc.uuid
"""
_HEXISH = re.compile(r"[0-9a-fA-F-]{8,}")


def _extend(conn: sqlite3.Connection, block: Lineage) -> Lineage:
    have = {r.uuid for r in block.records}
    wanted = sorted({p.uuid for r in block.records for p in r.parents} - have)
    if not wanted:
        return block
    fetched = {u: LineageRecord.model_validate_json(j)
               for u, j in conn.execute(_ANCESTORS, (json.dumps(wanted),)) if u not in have}
    # Nearest first (breadth-first from the gaps), like the records a writer copies in.
    added: list[LineageRecord] = []
    queue = [u for u in wanted if u in fetched]
    seen = set(queue)
    while queue:
        rec = fetched[queue.pop(0)]
        added.append(rec)
        for ref in rec.parents:
            if ref.uuid in fetched and ref.uuid not in seen and ref.uuid not in have:
                seen.add(ref.uuid)
                queue.append(ref.uuid)
    return block.model_copy(update={"records": [*block.records, *added]})


def resolve_lineage(db: Db, uuid_or_lineage: str | Lineage) -> Lineage:
    """A lineage block extended with the ancestor records the catalogue knows and it lacks,
    recursively. Given a uuid (or unique prefix) instead of a block, the block is built from the
    catalogue alone, starting at that checkpoint's (or lineage record's) own record.

    The result is not checked: pass it to :func:`anemoi_ckpt.lineage.view.check_lineage` before
    rendering (a catalogue record may contradict the file's reference to it)."""
    with opened(db) as conn:
        if isinstance(uuid_or_lineage, Lineage):
            block = uuid_or_lineage
        else:
            full = resolve_uuid(conn, uuid_or_lineage, records=True)
            (record_json,) = conn.execute("SELECT record_json FROM records WHERE uuid = ?",
                                          (full,)).fetchone()
            block = Lineage(records=[LineageRecord.model_validate_json(record_json)])
        return _extend(conn, block)


def lineage_through_catalogue(db: Db, file_or_uuid: str | os.PathLike) -> tuple[Lineage, dict[str, Any]]:
    """For ``anemoi-ckpt lineage FILE --catalogue DB``: the checked, completed lineage of a file
    (path or URL) or of a uuid in the catalogue, and what the catalogue added::

        {"catalogue": path, "source": "file" | "catalogue", "file": location or None,
         "uuid": the root's uuid, "from_catalogue": [uuids of the records added],
         "without_record": [parent uuids that no file nor the catalogue has a record of]}
    """
    from ..reader import open_checkpoint
    from ..lineage.view import check_lineage

    target = os.fspath(file_or_uuid)
    as_file = is_url(target) or os.path.exists(target) or not _HEXISH.fullmatch(target)
    with opened(db) as conn:
        if as_file:  # a missing path that is no uuid either: the reader's "no such file"
            with open_checkpoint(target) as ck:
                block, own = ck.lineage, ck.uuid
            check_lineage(block, target, own)  # the file's own problems are reported as its own
            label = target
        else:
            try:
                block = resolve_lineage(conn, target)
            except CatalogueError as e:
                if not e.what.startswith("no "):
                    raise
                raise CatalogueError(target, f"no such file, and no uuid {target} in the catalogue "
                                     f"{db_path(conn)}") from None
            own = block.records[0].uuid
            label = f"{db_path(conn)}: uuid {own}"
        full = _extend(conn, block)
        path = db_path(conn)
    check_lineage(full, label, own)
    known = {r.uuid for r in full.records}
    info = {"catalogue": path, "source": "file" if as_file else "catalogue",
            "file": target if as_file else None, "uuid": own,
            # from a uuid, every record came from the catalogue, the root's included
            "from_catalogue": [r.uuid for r in full.records[len(block.records) if as_file else 0:]],
            "without_record": sorted({p.uuid for r in full.records for p in r.parents} - known)}
    return full, info
