"""``anemoi-ckpt adapters list|export|attach|detach``: PEFT adapters kept unmerged in ``.anc`` files.

Outputs are always new files or folders: attach and detach never modify their inputs, and
refuse to run without ``-o`` (a copy of a model is large: its name should be chosen, not guessed).
"""

from __future__ import annotations

import click

from ..errors import one_line
from .main import cli, emit_json


@cli.group()
def adapters() -> None:
    """PEFT adapters in .anc files: list, export to a PEFT folder, attach, detach."""


@adapters.command("list")
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def list_cmd(file: str, as_json: bool) -> None:
    """The adapters FILE holds: its own (an adapter file) and those attached to it."""
    from ..adapters.attach import list_adapters

    rows = list_adapters(file)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo(f"{file}: no adapters")
        return
    for r in rows:
        base = r["base_content_id"] or "none recorded"
        match = {True: " (this file)", False: " (another model)", None: ""}[r["matches_file"]]
        click.echo(one_line(f"  {r['name']}  [{r['kind']}, section {r['section']}]  {r['peft_type']} "
                            f"r={r['r']} alpha={r['lora_alpha']} targets={r['target_modules']}  "
                            f"{r['tensors']} tensors, {r['bytes']:,} bytes  base {base}{match}"))
    click.echo(f"{file}: {len(rows)} adapter{'s' * (len(rows) != 1)}")


@adapters.command("export")
@click.argument("file", type=click.Path())
@click.argument("out_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--name", help="Which adapter, when FILE holds several.")
def export_cmd(file: str, out_dir: str, name: str | None) -> None:
    """Write an adapter of FILE as a PEFT folder (adapter_model.safetensors, adapter_config.json)
    that PeftModel.from_pretrained loads."""
    from ..adapters.export import export_peft

    done = export_peft(file, out_dir, name)
    click.echo(one_line(f"{file} -> {out_dir}: adapter {done['name']}, {done['tensors']} tensors"))


@adapters.command("attach")
@click.argument("file", type=click.Path())
@click.argument("adapter", type=click.Path())
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The new file (FILE is never modified).")
@click.option("--name", help="Name of the attached adapter (default: the adapter's own name).")
@click.option("--force", is_flag=True, help="Attach even if the adapter records another base model, or none.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (default: refuse).")
def attach_cmd(file: str, adapter: str, out: str, name: str | None, force: bool, overwrite: bool) -> None:
    """Write OUT = FILE plus ADAPTER as a named, unmerged adapter section. The weights and
    content id stay the same."""
    from ..adapters.attach import attach
    from ..convert.anc_source import check_not_same
    from ..output_path import check_output

    for src in (file, adapter):
        check_not_same(src, out)  # "the output is the input file" says more than "exists"
    check_output(out, overwrite=overwrite)

    dst = attach(file, adapter, out, name, force=force)
    click.echo(one_line(f"{file} + {adapter} -> {dst}"))


@adapters.command("detach")
@click.argument("file", type=click.Path())
@click.argument("name")
@click.option("-o", "--out", required=True, type=click.Path(),
              help="The new file (FILE is never modified).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (default: refuse).")
def detach_cmd(file: str, name: str, out: str, overwrite: bool) -> None:
    """Write OUT = FILE without the attached adapter NAME."""
    from ..adapters.attach import detach
    from ..convert.anc_source import check_not_same
    from ..output_path import check_output

    check_not_same(file, out)
    check_output(out, overwrite=overwrite)

    dst = detach(file, name, out)
    click.echo(one_line(f"{file} - {name} -> {dst}"))
