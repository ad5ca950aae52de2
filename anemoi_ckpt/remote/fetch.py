"""Checkpoints named by uuid: ``uuid:<uuid>`` references and ``anemoi-ckpt fetch``.

A run on another HPC system names its base or its resume point by uuid; the catalogue says where
copies of it live (local paths, ``s3://``, ``https://``). :func:`resolve_ref` picks the first copy
that can be opened and is still that checkpoint; :func:`fetch` downloads one, resumably, and
checks it is the checkpoint the catalogue records before it is put in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .download import DownloadReport, TransferInterrupted, download
from ..errors import AncError, FormatError, UsageError, one_line
from ..container.urls import is_url

UUID_REF = "uuid:"


def is_uuid_ref(ref: str | os.PathLike | None) -> bool:
    return isinstance(ref, str) and ref.startswith(UUID_REF)


@dataclass
class Copy:
    uuid: str
    content_id: str
    locations: list[str]  # in the catalogue's order: local files that exist first


def copies(catalogue: str | os.PathLike, uuid: str) -> Copy:
    """The registered checkpoint ``uuid`` (a unique prefix is enough) and its locations."""
    from ..catalogue.query import locate, show

    info = show(catalogue, uuid)
    if not info.get("registered", True):
        raise FormatError(os.fspath(catalogue), f"uuid {info['uuid']} is only known as an ancestor "
                          "(a lineage record), with no registered copy",
                          "register a copy with 'anemoi-ckpt catalogue register'")
    return Copy(info["uuid"], info["content_id"], locate(catalogue, info["uuid"]))


def resolve_ref(ref: str, catalogue: str | os.PathLike | None) -> str:
    """``ref`` itself, or for ``uuid:<uuid>`` the first registered location that opens as that
    checkpoint (same uuid and content id)."""
    if not is_uuid_ref(ref):
        return ref
    from ..catalogue.db import default_path
    from ..reader import open_checkpoint

    db = os.fspath(catalogue) if catalogue is not None else default_path()
    found = copies(db, ref[len(UUID_REF):])
    tried: list[str] = []
    for loc in found.locations:
        try:
            with open_checkpoint(loc) as ck:
                if (ck.uuid, ck.content_id) == (found.uuid, found.content_id):
                    return loc
                tried.append(f"{loc}: holds {ck.uuid[:8]} {ck.content_id[:19]}")
        except AncError as e:
            tried.append(e.line())
    detail = "; ".join(tried) if tried else "no locations registered"
    raise FormatError(db, one_line(f"no copy of {found.uuid} can be opened ({detail})"),
                      "register a reachable copy, or fetch one")


def fetch(what: str, out: str | os.PathLike, *, catalogue: str | os.PathLike | None = None,
          register: bool = False, progress: bool | None = None) -> DownloadReport:
    """Download ``what`` into ``out`` (a folder, or a file path): a URL or path as is, or a uuid
    (or ``uuid:<uuid>``, or a unique prefix) through the catalogue, trying its locations in
    order. ``register`` adds the downloaded file to the catalogue as another location."""
    from ..catalogue.db import default_path

    db = os.fspath(catalogue) if catalogue is not None else default_path()
    ref = what[len(UUID_REF):] if is_uuid_ref(what) else what
    if is_url(ref) or os.path.exists(ref):
        report = download(ref, out, progress=progress)
    else:
        found = copies(db, ref)
        errors: list[str] = []
        report = None
        for loc in found.locations:
            if not is_url(loc) and not os.path.exists(loc):
                errors.append(f"{loc}: missing")
                continue
            try:
                report = download(loc, out, uuid=found.uuid, content_id=found.content_id,
                                  progress=progress)
                break
            except (UsageError, TransferInterrupted):
                # About the target (no location helps), or resumable: the next run continues
                # from this location's bytes.
                raise
            except AncError as e:
                errors.append(e.line())
        if report is None:
            raise FormatError(db, one_line(f"no copy of {found.uuid} could be fetched "
                                           f"({'; '.join(errors) or 'no locations registered'})"))
    if register:
        from ..catalogue.register import register as register_files

        register_files(db, [report.path])
    return report
