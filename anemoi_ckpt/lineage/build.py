"""Building the lineage block of a new file from its parents.

A parent may be an open :class:`~anemoi_ckpt.reader.Checkpoint`, a path to an ``.anc``, a
:class:`ParentRef` or a dict with ``uuid`` (and ``content_id``), or a :class:`SignedParent` (one of
those with the signature verified for it, recorded in its ``ParentRef``). Ancestor records of
``.anc`` parents are copied in, so lineage needs no other file; each uuid appears once.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..errors import FormatError
from ..container.schema import Kind, Lineage, LineageRecord, ParentRef, SignatureRef, Tool


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SignedParent:
    """A parent and the signature a caller verified for it (``merge --require-signed``)."""

    parent: Any
    signature: SignatureRef

    @property
    def path(self) -> str:  # named in errors about this parent, as a Checkpoint's path is
        p = self.parent
        return os.fspath(p) if isinstance(p, (str, os.PathLike)) else getattr(p, "path", "parent")


def _resolve(parent: Any) -> tuple[ParentRef, list[LineageRecord]]:
    from ..reader import Checkpoint, open_checkpoint

    if isinstance(parent, SignedParent):
        ref, records = _resolve(parent.parent)
        return ref.model_copy(update={"signature": parent.signature}), records
    if isinstance(parent, ParentRef):
        return parent, []
    if isinstance(parent, Mapping):
        return ParentRef.model_validate(parent), []
    if isinstance(parent, (str, os.PathLike)):
        with open_checkpoint(parent) as ck:
            return _resolve(ck)
    if isinstance(parent, Checkpoint):
        return ParentRef(uuid=parent.uuid, content_id=parent.content_id), list(parent.lineage.records)
    raise TypeError(f"cannot use {type(parent).__name__} as a parent (Checkpoint, path, ParentRef or dict)")


def resolve_parents(parents: Iterable[Any]) -> tuple[list[ParentRef], list[LineageRecord]]:
    """Parent references and their ancestors' records (each uuid once, nearest first).

    Writers call this before writing anything, so a bad parent fails fast."""
    refs: list[ParentRef] = []
    ancestors: dict[str, LineageRecord] = {}
    origin: dict[str, str] = {}  # uuid -> the parent that first carried its record
    for p in parents:
        ref, records = _resolve(p)
        refs.append(ref)
        here = os.fspath(p) if isinstance(p, (str, os.PathLike)) else getattr(p, "path", f"parent {ref.uuid}")
        for rec in records:
            first = ancestors.setdefault(rec.uuid, rec)
            origin.setdefault(rec.uuid, here)
            # Two histories disagreeing on one uuid: a copy would make a block no reader accepts.
            if first.content_id != rec.content_id:
                raise FormatError(here, f"ancestor {rec.uuid} has content id {rec.content_id} here "
                                  f"but {first.content_id} in {origin[rec.uuid]}",
                                  "the parents' lineages disagree; one file was altered")
    for ref in refs:  # a parent given by reference must agree with a carried record of it
        rec = ancestors.get(ref.uuid)
        if rec is not None and ref.content_id is not None and ref.content_id != rec.content_id:
            raise FormatError(origin[ref.uuid], f"ancestor {ref.uuid} has content id {rec.content_id} "
                              f"here but a parent reference gives {ref.content_id}",
                              "the parents' lineages disagree")
    return refs, list(ancestors.values())


def build_lineage(*, uuid: str, kind: Kind, content_id: str, operation: str,
                  parameters: Mapping[str, Any], parents: tuple[list[ParentRef], list[LineageRecord]],
                  created: str, code_versions: Mapping[str, str] | None = None,
                  dataset: str | None = None, run_id: str | None = None,
                  config_digest: str | None = None) -> Lineage:
    refs, records = parents
    ancestors = {r.uuid: r for r in records}
    own = LineageRecord(uuid=uuid, kind=kind, content_id=content_id, operation=operation,
                        parameters=dict(parameters), parents=refs, created=created,
                        tool=Tool(name="anemoi-ckpt", version=__version__),
                        code_versions=dict(code_versions or {}), dataset=dataset, run_id=run_id,
                        config_digest=config_digest)
    ancestors.pop(uuid, None)
    return Lineage(records=[own, *ancestors.values()])
