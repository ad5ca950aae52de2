"""The demo's last part: every file the demo wrote goes into a catalogue, is tagged, found and
fetched by uuid, and a garbage-collection plan is listed (nothing is deleted).

The fetch reads its source by byte ranges through fsspec (a ``file://`` URL here: the demo has no
server), the same code path an ``s3://`` or ``https://`` location takes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def run_catalogue_story(out: Path, echo: Callable[[str], None] = print) -> bool:
    from .. import catalogue as cat
    from ..remote.download import as_url
    from ..remote.fetch import fetch
    from ..lineage.view import render_tree

    db = out / "catalogue.db"
    for suffix in ("", "-wal", "-shm"):  # a fresh catalogue on every run of the demo
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    files = sorted(p for p in out.rglob("*.anc") if "fetched" not in p.parts)
    done = cat.register(db, files)
    ok = len(done) == len(files) and all(r["status"] == "new" for r in done)
    echo(f"\ncatalogue a. anemoi-ckpt catalogue register ... --catalogue {db}: {len(done)} files "
         f"(parents first), {sum(os.path.getsize(f) for f in files):,} bytes, tensors never read")
    # The lineage tip: the file with the most ancestors (the merged LoRA fine-tune, when trained).
    tip = max(done, key=lambda r: len(cat.resolve_lineage(db, r["uuid"]).records))
    cat.tag(db, tip["uuid"], "production")
    listed = cat.list_entries(db, tag="production")
    ok &= [e["uuid"] for e in listed] == [tip["uuid"]]
    echo(f"catalogue b. tag {tip['uuid'][:8]} production; list --tag production: "
         f"{Path(tip['location']).name}")
    block, info = cat.lineage_through_catalogue(db, tip["uuid"][:8])
    echo(f"catalogue c. anemoi-ckpt lineage {tip['uuid'][:8]} --catalogue {db.name} "
         f"(no file given: {len(info['from_catalogue'])} records from the catalogue)\n"
         + render_tree(block))
    fetched = out / "fetched"
    fetched.mkdir(exist_ok=True)
    target = fetched / Path(tip["location"]).name
    with contextlib.suppress(FileNotFoundError):
        target.unlink()
    report = fetch(tip["uuid"][:8], fetched, catalogue=db, register=True)
    same = target.read_bytes() == Path(tip["location"]).read_bytes()
    ok &= same and report.uuid == tip["uuid"]
    echo(f"catalogue d. anemoi-ckpt fetch {tip['uuid'][:8]} -o {fetched}: {report.transferred:,} bytes "
         f"by range from {as_url(report.source)[:60]}..., verified (digests, content id) before the "
         f"rename; {'identical' if same else 'DIFFERENT'}; registered as a second location")
    plan = cat.gc_plan(db, ["production"])
    ok &= all(c["uuid"] != tip["uuid"] for c in plan)
    echo(f"catalogue e. anemoi-ckpt catalogue gc --keep-tag production (without --yes: a plan): "
         f"{len(plan)} checkpoints could go; the production model and its ancestors stay")
    return bool(ok)
