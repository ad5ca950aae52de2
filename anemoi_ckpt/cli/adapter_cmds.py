"""``anemoi-ckpt merge BASE ADAPTER...``: LoRA adapters and freeze deltas folded into a base.

Options are validated by :func:`anemoi_ckpt.adapters.merge.merge` itself (method, weights,
density, rank), so a bad value is one ``anemoi-ckpt: error:`` line with exit status 2, like every
other usage error of this tool, rather than click's multi-line usage text.
"""

from __future__ import annotations

import click

from ..errors import UsageError, one_line
from .main import cli, emit_json
from .trust_opts import policy_from, trust_options


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(None, f"--weights {text!r}: give numbers separated by commas, e.g. 1,0.5") from None


@cli.command("merge")
@click.argument("base", type=click.Path())
@click.argument("adapters", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", type=click.Path(),
              help="Output .anc (default: BASE+ADAPTER[+...].anc beside BASE).")
@click.option("--weights", metavar="W1,W2,...", help="One weight per adapter (default: 1 each).")
@click.option("--method", default="linear", show_default=True,
              help="linear | ties | dare_linear | dare_ties | svd.")
@click.option("--density", type=float, help="Fraction of entries kept (ties, dare_*), in (0, 1].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of DARE's random drops.")
@click.option("--rank", type=int, help="Rank of the combined delta (svd).")
@click.option("--force", is_flag=True, help="Merge adapters made for another base (recorded in the lineage).")
@click.option("--overwrite", is_flag=True, help="Replace the output if it exists (default: refuse).")
@click.option("--require-signed", is_flag=True,
              help="Refuse unless BASE and every ADAPTER carry a signature (FILE.sig or embedded) "
                   "by a signer trusted below, each adapter signed for BASE; the signers are "
                   "recorded in the output's lineage.")
@trust_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: on a terminal, for large files).")
def merge_cmd(base: str, adapters: tuple[str, ...], out: str | None, weights: str | None,
              method: str, density: float | None, seed: int, rank: int | None, force: bool,
              overwrite: bool, require_signed: bool, public_keys: tuple[str, ...],
              certificate_chain: tuple[str, ...], identity: str | None, issuer: str | None,
              as_json: bool, progress: bool | None) -> None:
    """Merge ADAPTER files (LoRA adapters, attached adapters, freeze deltas) into BASE and write
    a full inference .anc whose lineage lists BASE and every ADAPTER as parents.

    Each LoRA delta is scale * B @ A (rsLoRA, rank/alpha patterns and DoRA as PEFT defines
    them), combined per tensor by --method and added in fp32. Prints the output path."""
    policy = policy_from(public_keys, certificate_chain, identity, issuer)
    if policy.given and not require_signed:
        raise UsageError(None, "--public-key, --certificate-chain and --identity apply with --require-signed")
    if require_signed and not policy.given:
        raise UsageError(None, "--require-signed needs whom to trust",
                         "give --public-key KEY, --certificate-chain CA, or --identity ID --issuer URL")
    from ..adapters.merge import merge  # torch: only once the options make sense
    report = merge(base, list(adapters), out, weights=_weights(weights), method=method,
                   density=density, seed=seed, rank=rank, force=force, progress=progress,
                   overwrite=overwrite, require_signed=policy if require_signed else None)
    if as_json:
        emit_json(report.to_dict())
        return
    if report.forced:
        click.echo(f"anemoi-ckpt: warning: merged onto another base: {', '.join(report.forced)}", err=True)
    for s in report.signed:  # on stderr: stdout stays the output path, for scripts
        click.echo(one_line(f"signed by {s['signer']} ({s['form']}), trusted: {s['path']}"), err=True)
    click.echo(one_line(report.path))
