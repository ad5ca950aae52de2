"""A catalogue of checkpoints: one SQLite file (WAL mode) recording which ``.anc`` files exist,
where they are, how they descend from each other, and how they are tagged.

Public API (``db`` is a catalogue path or an open connection from :func:`connect`)::

    register(db, locations, *, require_parents=False) -> list[dict]
    tag(db, uuid, tag) / untag(db, uuid, tag)            # uuid: full, or a unique prefix >= 8 hex
    list_entries(db, tag=None, kind=None) -> list[dict]
    show(db, uuid) -> dict
    locate(db, uuid) -> list[str]
    resolve_lineage(db, uuid_or_lineage) -> Lineage
    lineage_through_catalogue(db, file_or_uuid) -> (Lineage, dict)
    gc_plan(db, keep_tags) -> list[dict];  gc(db, keep_tags, *, delete=False) -> dict

Only the manifest and lineage of a file are ever read, never its tensors.
"""

from __future__ import annotations

from .db import CatalogueError, connect, default_path
from .gc import gc, gc_plan
from .lineage import lineage_through_catalogue, resolve_lineage
from .query import list_entries, locate, locate_detail, resolve_uuid, show, tag, untag
from .register import Entry, normalize_location, read_entry, register, register_records

__all__ = [
    "CatalogueError", "Entry", "connect", "default_path", "gc", "gc_plan", "lineage_through_catalogue",
    "list_entries", "locate", "locate_detail", "normalize_location", "read_entry", "register",
    "register_records", "resolve_lineage", "resolve_uuid", "show", "tag", "untag",
]
