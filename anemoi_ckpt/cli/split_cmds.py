"""``anemoi-ckpt split``: a fine-tune minus its base as a LoRA adapter or a freeze delta, or the
adapters attached to a file written out one per file."""

from __future__ import annotations

import click

from ..errors import UsageError, one_line
from .main import cli, emit_json


def _module_line(m, width: int) -> str:  # noqa: ANN001 - an adapters.split.ModuleSplit
    return one_line(f"  {m.name:<{width}}  rank {m.rank:>4}  energy {m.retained_energy:.6f}  "
                    f"rel. error {m.rel_error:.3e}")


@cli.command("split")
@click.argument("file", type=click.Path())
@click.option("--base", type=click.Path(), help="The base FILE was fine-tuned from.")
@click.option("--rank", type=int, help="Keep at most R singular values per module.")
@click.option("--energy", type=float,
              help="Keep the smallest rank retaining this fraction of sum S^2 (0 < E <= 1).")
@click.option("--targets", multiple=True, metavar="GLOB",
              help="Factorise only 2-D weights whose tensor or module name matches (repeatable; "
                   "default: every 2-D float *.weight).")
@click.option("--delta", "as_delta", is_flag=True,
              help="Write a freeze delta (kind delta: changed tensors whole) instead of a LoRA.")
@click.option("--exact-svd", is_flag=True, help="Full SVD even with --rank (default: randomized).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the randomized SVD.")
@click.option("--attached", is_flag=True, help="Write each adapter attached to FILE to -o DIR.")
@click.option("-o", "--out", type=click.Path(),
              help="Output file (default: <FILE stem>-lora.anc or -delta.anc), or folder with --attached.")
@click.option("--overwrite", is_flag=True, help="Replace output files that exist (default: refuse).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: on a terminal, for large files).")
def split_cmd(file: str, base: str | None, rank: int | None, energy: float | None,
              targets: tuple[str, ...], as_delta: bool, exact_svd: bool, seed: int, attached: bool,
              out: str | None, overwrite: bool, as_json: bool, progress: bool | None) -> None:
    """Extract FILE - BASE as a PEFT LoRA adapter (truncated SVD per module, in fp32).

    Unchanged tensors are left out; changed tensors that cannot be factorised (biases, norms,
    1-d tensors, weights not in --targets) are kept whole. With --attached, write each adapter
    attached to FILE as its own adapter .anc in the folder -o."""
    from ..adapters.split import split, split_attached

    if attached:
        if base or rank is not None or energy is not None or targets or as_delta:
            raise UsageError(None, "--attached takes only FILE and -o DIR")
        if not out:
            raise UsageError(None, "--attached needs -o DIR")
        paths = split_attached(file, out, overwrite=overwrite)
        if as_json:
            emit_json({"file": file, "written": paths})
        else:
            for p in paths:
                click.echo(one_line(p))
        return
    if not base:
        raise UsageError(None, "split needs --base BASE (or --attached)")
    kind = "delta" if as_delta else "lora"
    report = split(file, base, out, rank=rank, energy=energy, targets=targets or None, kind=kind,
                   randomized=False if exact_svd else None, seed=seed, progress=progress,
                   overwrite=overwrite)
    if as_json:
        emit_json(report.to_dict())
        return
    width = max([len(m.name) for m in report.modules] + [len(n) for n in report.whole], default=0)
    for m in report.modules:
        click.echo(_module_line(m, width))
    for name, how in report.whole.items():
        click.echo(one_line(f"  {name:<{width}}  kept whole ({how})"))
    d = report.to_dict()["totals"]
    click.echo(f"{d['modules']} factorised (max rank {d['max_rank']}, rel. error "
               f"{d['rel_error']:.3e}), {d['whole']} kept whole, {d['unchanged']} unchanged left out; "
               f"{d['adapter_params']:,} of {d['changed_params']:,} changed numbers stored")
    click.echo(one_line(f"wrote {report.out}"))
