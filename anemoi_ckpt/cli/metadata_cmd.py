"""``anemoi-ckpt metadata``: view or edit a file's anemoi metadata, or record an outside edit."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from typing import Any

import click

from .. import metadata_edit as E
from ..errors import UsageError
from ..output_path import check_output
from ..reader import open_checkpoint
from .main import cli, emit_json


def _edit_in_editor(md: dict[str, Any]) -> dict[str, Any]:
    """``--edit``: the metadata in ``$VISUAL``/``$EDITOR`` on a temp JSON file, read back."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        raise UsageError(None, "--edit needs an editor, and neither $VISUAL nor $EDITOR is set",
                         "set EDITOR, or use --set KEY=VALUE or --load FILE.json")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(None, "--edit needs a terminal", "use --set KEY=VALUE or --load FILE.json")
    fd, tmp = tempfile.mkstemp(suffix=".json", prefix="anemoi-metadata-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in md.items() if k not in E.WRITER_KEYS}, f, indent=2,
                      ensure_ascii=False)
        rc = subprocess.call([*shlex.split(editor), tmp])
        if rc != 0:
            raise UsageError(None, f"the editor {editor!r} exited with status {rc}", "nothing was written")
        edited = E.load_json(tmp)
    finally:
        os.unlink(tmp)
    # the writer's own keys were hidden from the editor: keep the file's arrays
    return {**edited, **{k: md[k] for k in E.WRITER_KEYS if k in md and k not in edited}}


def _print_arrays(arrays: dict[str, Any], prefix: str = "") -> None:
    for name, value in arrays.items():
        if isinstance(value, dict):  # per-dataset arrays (anemoi-training 0.17: "data/latitudes")
            _print_arrays(value, f"{prefix}{name}/")
        else:
            click.echo(f"{prefix}{name}: shape={tuple(value.shape)} dtype={value.dtype}")


@cli.command("metadata")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON (the default is too).")
@click.option("--supporting-arrays", "arrays", is_flag=True,
              help="List the supporting arrays (nested per dataset) instead of the metadata.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Set a key (dots for nesting, VALUE read as YAML); repeatable.")
@click.option("--edit", is_flag=True, help="Edit the metadata in $EDITOR (needs a terminal).")
@click.option("--load", "load", type=click.Path(dir_okay=False), metavar="JSON",
              help="Replace the metadata with this JSON file's object.")
@click.option("--reseal", is_flag=True,
              help="Record an edit made outside anemoi-ckpt (anemoi-utils metadata --inplace).")
@click.option("-o", "--output", "out", type=click.Path(), help="Write the edited file here (a new file).")
@click.option("--inplace", is_flag=True, help="Replace FILE itself (atomically).")
@click.option("--overwrite", is_flag=True, help="Replace an -o file that exists.")
def metadata(file: str, as_json: bool, arrays: bool, sets: tuple[str, ...], edit: bool,
             load: str | None, reseal: bool, out: str | None, inplace: bool, overwrite: bool) -> None:
    """Show FILE's anemoi metadata, or write it edited with a new uuid and a lineage record.

    Editing: --set KEY=VALUE, --edit or --load JSON, with -o OUT or --inplace. --reseal records
    an edit another tool made (anemoi-utils metadata --inplace) so that FILE verifies again."""
    modes = [m for m, on in (("--set", bool(sets)), ("--edit", edit), ("--load", bool(load)),
                             ("--reseal", reseal)) if on]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} cannot be combined; make one edit at a time")
    if not modes:
        if out or inplace:
            raise click.UsageError("-o/--inplace need an edit: --set, --edit, --load or --reseal")
        _show(file, arrays)
        return
    if arrays:
        raise click.UsageError("--supporting-arrays only lists; it cannot be combined with an edit")
    if bool(out) == inplace and not (reseal and not out):
        raise click.UsageError("give exactly one of -o OUT and --inplace")
    if out:
        check_output(out, overwrite=overwrite)  # before any work
        if os.path.exists(out) and E.same_path(out, file):
            raise UsageError(out, "the output is the input file", "use --inplace to replace it")
    dst = out or file  # --reseal alone replaces FILE, as the hint in 'verify' says
    with open_checkpoint(file) as ck:
        if reseal:
            params = E.reseal_parameters(ck)
            md = ck.raw_anemoi_metadata() or {}
        else:
            old = ck.anemoi_metadata
            if old is None:
                raise UsageError(file, "has no anemoi metadata to edit",
                                 "only files converted from or written for anemoi carry it")
            if sets:
                md = E.apply_sets(old, sets)
            elif load:
                md = {**E.load_json(load)}
                md.setdefault("supporting_arrays_paths", old.get("supporting_arrays_paths", {}))
            else:
                md = _edit_in_editor(old)
            changed = E.changed_keys(old, md)
            if not changed:
                raise UsageError(file, "the edit changes nothing", "nothing was written")
            params = {"changed": changed}
        uuid, _ = E.rewrite(ck, dst, md, params)
    click.echo(f"{dst}: new uuid {uuid} ({E.OPERATION}: "
               f"{'resealed ' + params['member'] if reseal else ', '.join(params['changed'])})")


def _show(file: str, arrays: bool) -> None:
    with open_checkpoint(file) as ck:
        if arrays:
            _print_arrays(ck.supporting_arrays)
            return
        md = ck.anemoi_metadata
    if md is None:
        raise UsageError(file, "has no anemoi metadata", "'anemoi-ckpt inspect' shows what it holds")
    emit_json(md)
