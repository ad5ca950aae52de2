"""``anemoi-ckpt export FILE OUT``: a section back out as safetensors, ``.pt``, a sharded folder or
anemoi-inference's pickled checkpoint."""

from __future__ import annotations

import click

from ..export import DEFAULT_SHARD_SIZE, FORMATS
from .commands import json_option
from .main import cli, emit_json


@cli.command("export")
@click.argument("file", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format (default: from OUT's suffix: .safetensors, .pt/.pth, .ckpt = "
                   "anemoi-ckpt; a folder or no suffix = sharded).")
@click.option("--section", default="weights", show_default=True, metavar="S",
              help="Tensor section to export.")
@click.option("--aliases", type=click.Choice(["materialize", "metadata"]), default="materialize",
              show_default=True, help="Aliased tensors as full copies, or stored once with "
              "the aliases recorded as metadata (safetensors __metadata__, index metadata; .pt: "
              "shared storage).")
@click.option("--max-shard-size", default=DEFAULT_SHARD_SIZE, show_default=True, metavar="SIZE",
              help="Largest shard of --format sharded (bytes, or e.g. 500MB, 2GiB).")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (default: refuse, and write nothing).")
@json_option
def export_cmd(file: str, out: str, fmt: str | None, section: str, aliases: str,
               max_shard_size: str, overwrite: bool, as_json: bool) -> None:
    """Write FILE's tensors to OUT as plain files other tools read.

    Every tensor of the section is written, aliases included. --format anemoi-ckpt builds the
    model with the installed anemoi-models and writes anemoi-inference's inference checkpoint:
    that file is a PICKLE (torch.save of the model), for sites without the 'anc' runner."""
    from ..export import export

    report = export(file, out, format=fmt, section=section, aliases=aliases,
                    max_shard_size=max_shard_size, overwrite=overwrite)
    if as_json:
        emit_json(report.to_dict())
        return
    kept = "" if report.stored == report.tensors else f" ({report.stored} stored, aliases as metadata)"
    where = f"{len(report.files)} files" if report.format == "sharded" else report.files[0]
    click.echo(f"exported {report.tensors} tensors{kept} of section {report.section} to {report.output} "
               f"({report.format}, {where}, {report.bytes} bytes)")
