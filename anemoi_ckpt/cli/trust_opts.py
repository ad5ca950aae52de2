"""The trust options, one set for every command that checks signatures: ``verify --signature``,
``merge --require-signed``, ``lineage --verify``, ``catalogue show``. Several keys may be trusted,
and a CA chain or a Sigstore identity beside them, each signature being checked with what matches
how it was made. Kept apart from the commands (and from ``sign_cmds``) so that none of them
imports model-signing until a signature is checked, and without an import cycle."""

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


def signature_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``verify``'s ``--signature [SIG]`` and the trust options."""
    fn = trust_options(fn)
    return click.option("--signature", "signature", is_flag=False, flag_value="", default=None,
                        metavar="[SIG]", help="Check FILE's signature too: SIG (path or URL), by "
                        "default FILE.sig if it exists, else the embedded one.")(fn)


def check_signature(ck: Any, signature: str | None, public_keys: tuple[str, ...],
                    certificate_chain: tuple[str, ...], identity: str | None,
                    issuer: str | None) -> Any:
    """The :class:`~anemoi_ckpt.signing.Verified` for ``verify``'s options (``ck``: an open
    checkpoint), or None when no signature option was given. A trust option alone implies
    ``--signature``; with several, the signature must verify with the one matching how it was
    made (:func:`~anemoi_ckpt.lineage.signers.verify_trusted`)."""
    if signature is None and not public_keys and not certificate_chain and identity is None \
            and issuer is None:
        return None
    from ..lineage.signers import verify_trusted

    return verify_trusted(ck, policy_from(public_keys, certificate_chain, identity, issuer),
                          signature or None)


def signature_lines(verified: Any, signed_embedded: bool) -> list[str]:
    """Text lines for ``verify``: the checked signature, or a note that an embedded one was not
    checked."""
    if verified is None:
        if signed_embedded:
            return [f"  {'signature.sig':<40} signed (embedded), not checked: add --signature "
                    "and a trust option"]
        return []
    form = "detached" if verified.detached else "embedded"
    lines = [f"  signature ok ({verified.method}, {form}): signed by {verified.signer}"]
    if verified.unbound:
        lines.append("  signature binds no base (an adapter records no base content id)")
    elif verified.base_content_id:
        lines.append(f"  signature binds base {verified.base_content_id}")
    return lines
