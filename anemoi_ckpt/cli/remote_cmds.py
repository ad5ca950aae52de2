"""``anemoi-ckpt fetch``: a checkpoint by uuid (through the catalogue) or by URL, to a folder."""

from __future__ import annotations

import click

from .commands import json_option
from .main import cli, emit_json


@cli.command("fetch")
@click.argument("what", metavar="UUID|URL")
@click.option("-o", "--out", "out", required=True, type=click.Path(),
              help="Folder to put the file in (under its own name), or the file's path.")
@click.option("--catalogue", "catalogue", envvar="ANEMOI_CKPT_CATALOGUE", type=click.Path(),
              help="Catalogue resolving a uuid (default: $ANEMOI_CKPT_CATALOGUE, else "
                   "~/.anemoi-ckpt/catalogue.db).")
@click.option("--register", is_flag=True, help="Add the downloaded file to the catalogue as another location.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: on a terminal).")
@json_option
def fetch_cmd(what: str, out: str, catalogue: str | None, register: bool, progress: bool | None,
              as_json: bool) -> None:
    """Download a checkpoint: a UUID (or uuid:UUID, or a unique prefix) from the first of its
    catalogue locations that answers, or a URL. Resumable: an interrupted transfer keeps its bytes
    in .NAME.part and the same command continues from there. The file is verified (every digest,
    and the uuid and content id the catalogue records) before it appears under its name."""
    from ..remote.fetch import fetch

    report = fetch(what, out, catalogue=catalogue, register=register, progress=progress)
    if as_json:
        emit_json(report.to_dict())
        return
    if report.status == "present":
        click.echo(f"{report.path}: already present and intact ({report.uuid})")
        return
    resumed = f", resumed at byte {report.resumed_from:,}" if report.resumed_from else ""
    click.echo(f"{report.source} -> {report.path}: {report.size:,} bytes, {report.transferred:,} "
               f"transferred{resumed}; verified, uuid {report.uuid}, content id {report.content_id}")
