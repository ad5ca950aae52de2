"""``anemoi-ckpt catalogue ...``: a thin layer over :mod:`anemoi_ckpt.catalogue`.

Every value printed in text mode comes from a file or the catalogue, so it goes through
``one_line`` (no control character reaches the terminal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from .. import catalogue as cat
from ..errors import one_line
from ..lineage.view import short_cid, short_date, short_uuid
from ..summary import human_size as summary_size
from .main import cli, emit_json
from .trust_opts import policy_from, trust_options

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
DEFAULT_HELP = "$ANEMOI_CKPT_CATALOGUE, else ~/.anemoi-ckpt/catalogue.db"


def catalogue_option(f: Callable[..., Any]) -> Callable[..., Any]:
    # A callable default: the environment is read when the command runs, not at import.
    return click.option("--catalogue", "db", metavar="DB", default=cat.default_path,
                        show_default=DEFAULT_HELP,
                        help="The catalogue file (SQLite); created by register if missing.")(f)


def human_size(n: int | None) -> str:
    return "?" if n is None else summary_size(n)  # the units inspect prints


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r, widths)] + [r[-1]]).rstrip() for r in rows]


@cli.group()
def catalogue() -> None:
    """Register checkpoints in a catalogue (one SQLite file), tag, find, and clean them up.

    Every subcommand takes --catalogue DB; the default is $ANEMOI_CKPT_CATALOGUE, else
    ~/.anemoi-ckpt/catalogue.db. Several processes may use one catalogue at once (on a local
    disk: SQLite's WAL mode does not work over NFS). UUID arguments take a unique prefix of at
    least 8 hex digits."""


@catalogue.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--require-parents", is_flag=True,
              help="Refuse a file whose parents are not registered (earlier in this batch counts).")
@catalogue_option
@json_option
def register(files: tuple[str, ...], require_parents: bool, db: str, as_json: bool) -> None:
    """Register FILE... (paths or URLs): reads each manifest and lineage, never the tensors.

    Parents in the batch are registered before their children; re-registering a file records
    its location. Stops at the first refused file; those before it stay registered."""
    def echo(r: dict[str, Any]) -> None:
        line = f"{r['status']:<14}  {short_uuid(r['uuid'])}  {r['kind']:<9}  {one_line(r['location'])}"
        if r["replaced"]:
            line += f"  (was {', '.join(short_uuid(u) for u in r['replaced'])})"
        click.echo(line)

    results = cat.register(db, files, require_parents=require_parents,
                           on_entry=None if as_json else echo)
    if as_json:
        emit_json(results)


@catalogue.command()
@click.argument("uuid")
@click.argument("tag")
@catalogue_option
@json_option
def tag(uuid: str, tag: str, db: str, as_json: bool) -> None:
    """Add TAG to the checkpoint UUID (idempotent)."""
    r = cat.tag(db, uuid, tag)
    emit_json(r) if as_json else click.echo(
        f"{short_uuid(r['uuid'])}  {'tagged' if r['added'] else 'already tagged'} {one_line(tag)}")


@catalogue.command()
@click.argument("uuid")
@click.argument("tag")
@catalogue_option
@json_option
def untag(uuid: str, tag: str, db: str, as_json: bool) -> None:
    """Remove TAG from the checkpoint UUID."""
    r = cat.untag(db, uuid, tag)
    emit_json(r) if as_json else click.echo(f"{short_uuid(r['uuid'])}  untagged {one_line(tag)}")


def _entry_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["UUID", "KIND", "CREATED", "SIZE", "CONTENT", "TAGS", "LOCATION"]]
    for e in entries:
        locs = e["locations"]
        where = one_line(locs[0]) + (f" (+{len(locs) - 1})" if len(locs) > 1 else "") if locs else "-"
        rows.append([short_uuid(e["uuid"]), one_line(e["kind"]), short_date(e["created"]),
                     human_size(e["size"]), short_cid(e["content_id"]),
                     one_line(",".join(e["tags"])) or "-", where])
    return rows


@catalogue.command("list")
@click.option("--tag", help="Only checkpoints with this tag.")
@click.option("--kind", help="Only checkpoints of this kind (training, inference, adapter, delta).")
@catalogue_option
@json_option
def list_cmd(tag: str | None, kind: str | None, db: str, as_json: bool) -> None:
    """List the registered checkpoints, oldest first."""
    entries = cat.list_entries(db, tag=tag, kind=kind)
    if as_json:
        emit_json(entries)
        return
    for line in columns(_entry_rows(entries)):
        click.echo(line)
    click.echo(f"{len(entries)} checkpoint(s)")


@catalogue.command()
@click.argument("uuid")
@click.option("--signatures", "check_signatures", is_flag=True,
              help="Also say who signed UUID and each ancestor, from the first located copy of each "
                   "(reads every byte of each); implied by a trust option. Exit 1 when a signature "
                   "is invalid or, with trust options, not by a trusted signer.")
@trust_options
@catalogue_option
@json_option
def show(uuid: str, check_signatures: bool, public_keys: tuple[str, ...],
         certificate_chain: tuple[str, ...], identity: str | None, issuer: str | None, db: str,
         as_json: bool) -> None:
    """Everything the catalogue knows about UUID: identity, tags, locations, parents, children
    (and, with --signatures, signers)."""
    info = cat.show(db, uuid)
    policy = policy_from(public_keys, certificate_chain, identity, issuer)
    if check_signatures or policy.given:
        from ..catalogue.signers import signers

        info["signatures"] = signers(db, info["uuid"], policy)
    if as_json:
        emit_json(info)
        _fail_on_bad_signatures(info)
        return
    rows = [["uuid", one_line(info["uuid"])],
            ["registered", "yes" if info["registered"] else "no (known as an ancestor only)"],
            ["kind", one_line(str(info["kind"]))], ["operation", one_line(str(info["operation"]))],
            ["content id", one_line(info["content_id"])], ["created", one_line(str(info["created"]))],
            ["size", human_size(info["size"]) if info["registered"] else "-"],
            ["tags", one_line(", ".join(info["tags"])) or "-"]]
    for line in columns(rows):
        click.echo(line)
    for title, key in (("locations", "locations"), ("parents", "parents"), ("children", "children")):
        items = info[key]
        click.echo(f"{title}:" + ("" if items else " -"))
        if key == "locations":
            table = [[f"  {d['status']}", one_line(d["location"])] for d in items]
        else:
            table = [[f"  {short_uuid(d['uuid'])}", one_line(d["role"] or "parent") if key == "parents"
                      else one_line(d["role"] or "-"), one_line(str(d["kind"] or "?")),
                      "registered" if d["registered"] else "record only"] for d in items]
        for line in columns(table):
            click.echo(line)
    if "signatures" in info:
        from ..lineage.signers import signature_text

        click.echo("signatures:")
        table = [[f"  {short_uuid(d['uuid'])}", d["relation"], one_line(d["location"] or "-"),
                  signature_text(d["signature"]) if d["signature"] else "no copy located"]
                 for d in info["signatures"]]
        for line in columns(table):
            click.echo(line)
    _fail_on_bad_signatures(info)


def _fail_on_bad_signatures(info: dict[str, Any]) -> None:
    from ..lineage.signers import BAD

    bad = [d for d in info.get("signatures", []) if d["signature"] and d["signature"]["state"] in BAD]
    if bad:
        names = ", ".join(short_uuid(d["uuid"]) for d in bad[:5]) + (" ..." if len(bad) > 5 else "")
        click.echo(one_line(f"anemoi-ckpt: error: {info['uuid']}: {len(bad)} checkpoint(s) with an "
                            f"invalid or untrusted signature: {names}"), err=True)
        raise SystemExit(1)


@catalogue.command()
@click.argument("uuid")
@catalogue_option
@json_option
def locate(uuid: str, db: str, as_json: bool) -> None:
    """Print where UUID is: existing local files first, then URLs, then vanished paths."""
    found = cat.locate_detail(db, uuid)
    if as_json:
        emit_json(found)
        return
    if not found:
        raise cat.CatalogueError(db, f"checkpoint {uuid} has no known location")
    for d in found:
        note = "" if d["status"] == "exists" else f"  ({d['status']})"
        click.echo(one_line(d["location"]) + note)


@catalogue.command()
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG",
              help="Keep checkpoints with this tag and all their ancestors. Repeatable; at least one.")
@click.option("--yes", is_flag=True, help="Delete. Without it, only list what would be deleted.")
@catalogue_option
@json_option
def gc(keep_tags: tuple[str, ...], yes: bool, db: str, as_json: bool) -> None:
    """Delete checkpoints that no kept checkpoint needs: kept are those with a --keep-tag and all
    their ancestors; every other registered checkpoint's files are deleted (each one opened first
    and deleted only if it still is that checkpoint), then its catalogue entry."""
    from ..catalogue.gc import warnings_of

    report = cat.gc(db, keep_tags, delete=yes)
    if as_json:
        emit_json(report)
    else:
        plan = report["candidates"]
        for line in columns(_entry_rows(plan)) if plan else []:
            click.echo(line)
        for r in report["results"]:
            for loc in r["locations"]:
                if loc["action"] != "skipped":
                    click.echo(f"{loc['action']:<8}  {short_uuid(r['uuid'])}  {one_line(loc['location'])}")
        if yes:  # what happened, not the plan: files left in place are warned about below
            removed = sum(1 for r in report["results"] if r["removed"])
            deleted = sum(1 for r in report["results"] for loc in r["locations"] if loc["action"] == "deleted")
            click.echo(f"{deleted} file(s) deleted; {removed} of {len(plan)} catalogue entries removed")
        else:
            click.echo(f"{len(plan)} checkpoint(s), {human_size(report['bytes'])}, would be deleted"
                       + ("; run with --yes to delete them" if plan else ""))
    for w in warnings_of(report):
        click.echo(f"anemoi-ckpt: warning: {w}", err=True)
