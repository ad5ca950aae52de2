"""``anemoi-ckpt sign FILE``: a detached or embedded signature (``verify --signature`` checks it).

Thin over :mod:`anemoi_ckpt.signing`; model-signing is imported only when a signature is made.
"""

from __future__ import annotations

import click

from .commands import json_option, overwrite_option
from .main import cli, emit_json


@cli.command("sign")
@click.argument("file", type=click.Path())
@click.option("--private-key", metavar="KEY", type=click.Path(dir_okay=False),
              help="Elliptic-curve private key (PEM) to sign with.")
@click.option("--certificate", metavar="CERT", type=click.Path(dir_okay=False),
              help="Signing certificate (PEM) for --private-key: a certificate signature.")
@click.option("--certificate-chain", metavar="CA", multiple=True, type=click.Path(dir_okay=False),
              help="Intermediate certificates (PEM) to embed with --certificate (repeatable).")
@click.option("--sigstore", is_flag=True,
              help="Sigstore keyless signing (OIDC identity, short-lived certificate; needs network).")
@click.option("--embed", is_flag=True,
              help="Embed the signature in the file (a member after the manifest) instead of "
                   "writing FILE.sig beside it; needs -o OUT or --inplace.")
@click.option("-o", "--output", metavar="OUT", type=click.Path(dir_okay=False),
              help="Where to write: the signature (default FILE.sig) or, with --embed, the signed copy.")
@click.option("--inplace", is_flag=True, help="With --embed: replace FILE by its signed copy (atomically).")
@click.option("--allow-unbound", is_flag=True,
              help="Sign an adapter or delta that records no base content id (reported as unbound).")
@overwrite_option
@json_option
def sign_cmd(file: str, private_key: str | None, certificate: str | None,
             certificate_chain: tuple[str, ...], sigstore: bool, embed: bool, output: str | None,
             inplace: bool, allow_unbound: bool, overwrite: bool, as_json: bool) -> None:
    """Sign FILE with model-signing (OpenSSF Model Signing, a Sigstore bundle).

    Detached (default): FILE.sig, which 'model_signing verify' also checks on FILE unchanged.
    --embed: a signature member over every member of the file; an extracted copy of the file
    verifies with model_signing too (docs/signing.md). The file is verified first; an adapter or
    delta must record the base it applies to, which the signature then binds."""
    from ..signing import sign

    res = sign(file, private_key=private_key, certificate=certificate,
               certificate_chain=certificate_chain, sigstore=sigstore, embed=embed, output=output,
               inplace=inplace, overwrite=overwrite, allow_unbound=allow_unbound)
    if as_json:
        emit_json(res.to_dict())
        return
    form = "embedded" if res.embedded else "detached"
    click.echo(f"signed {res.path} -> {res.output} ({form}, {res.method} {res.signer})")
    if res.unbound:
        click.echo("  unbound: an adapter records no base content id; the signature binds no base")
    elif res.base_content_id:
        click.echo(f"  binds base {res.base_content_id}")
