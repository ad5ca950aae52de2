"""Who signed a catalogued checkpoint and each of its ancestors (``catalogue show --signatures``).

Signers are judged from the files the catalogue locates, at the time of asking, not stored at
registration: a signature may be added beside a file (``FILE.sig``) or re-made after it was
registered, and a stored verdict would go stale without anything noticing. The catalogue only
tells where each file is; :mod:`anemoi_ckpt.lineage.signers` gives the verdict.
"""

from __future__ import annotations

from typing import Any

from ..errors import AncError, UsageError
from ..lineage.signers import SignerStatus, TrustPolicy, assess
from .db import Db, opened
from .lineage import resolve_lineage
from .query import _ordered_locations, resolve_uuid


def signers(db: Db, uuid: str, policy: TrustPolicy | None = None) -> list[dict[str, Any]]:
    """For the checkpoint ``uuid`` (``relation`` ``self``) and every ancestor the catalogue has a
    record of (``ancestor``), nearest first: ``{"uuid", "relation", "kind", "location",
    "signature"}``, where ``signature`` is a :class:`SignerStatus` dict for the first located
    file that still is that checkpoint, or None (``location`` None: no copy found)."""
    with opened(db) as conn:
        full = resolve_uuid(conn, uuid, records=True)
        block = resolve_lineage(conn, full)
        wanted = []
        for i, rec in enumerate(block.records):
            rows = conn.execute("SELECT location, added FROM locations WHERE uuid = ? ORDER BY added, "
                                "location", (rec.uuid,)).fetchall()
            where = [d["location"] for d in _ordered_locations(rows) if d["status"] != "missing"]
            wanted.append((rec.uuid, "self" if i == 0 else "ancestor", rec.kind, where))
    # The catalogue is closed before any file is read: checking a signature hashes the whole file.
    out = []
    for uid, relation, kind, where in wanted:
        found, st = _first_copy(uid, where, policy)
        out.append({"uuid": uid, "relation": relation, "kind": kind, "location": found,
                    "signature": st.to_dict() if st is not None else None})
    return out


def _first_copy(uuid: str, locations: list[str], policy: TrustPolicy | None) -> tuple[str | None, SignerStatus | None]:
    """The first location holding checkpoint ``uuid`` (a path may since hold another file) and
    the verdict on its signature; an unreadable copy is an ``invalid`` verdict on that copy."""
    from ..reader import open_checkpoint

    for loc in locations:
        try:
            with open_checkpoint(loc) as ck:
                if ck.uuid != uuid:
                    continue
                return loc, assess(ck, policy)
        except UsageError:
            raise  # the caller's trust material, not this copy
        except AncError as e:
            return loc, SignerStatus("invalid", why=e.line(), path=loc, error=e)
    return None, None
