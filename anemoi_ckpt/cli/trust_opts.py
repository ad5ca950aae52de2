"""The trust options of the commands that judge several files' signatures at once (``merge
--require-signed``, ``lineage --verify``, ``catalogue show``): several keys may be trusted, and a
CA chain or a Sigstore identity beside them, each file being checked with what matches how it was
signed. Kept apart from the commands so none of them imports model-signing until it is used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..lineage.signers import TrustPolicy


def trust_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--public-key`` (repeatable), ``--certificate-chain`` (repeatable), ``--identity``, ``--issuer``."""
    options = [
        click.option("--public-key", "public_keys", metavar="KEY", multiple=True,
                     type=click.Path(dir_okay=False),
                     help="Trust signatures made with this public key (PEM); repeatable."),
        click.option("--certificate-chain", "certificate_chain", metavar="CA", multiple=True,
                     type=click.Path(dir_okay=False),
                     help="Trust certificate signatures chaining to these CA certificates (PEM); repeatable."),
        click.option("--identity", metavar="ID", help="Trust this Sigstore identity (with --issuer)."),
        click.option("--issuer", metavar="URL", help="The Sigstore identity's OIDC issuer."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def policy_from(public_keys: tuple[str, ...], certificate_chain: tuple[str, ...],
                identity: str | None, issuer: str | None) -> TrustPolicy:
    return TrustPolicy(public_keys, certificate_chain, identity, issuer)
