"""The signature options of ``verify`` (``--signature [SIG]`` and the trust options), kept apart
from ``sign_cmds`` so ``commands`` can use them without an import cycle. model-signing is imported
only when a signature is checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def signature_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--signature [SIG]`` and the trust options, for ``verify``."""
    options = [
        click.option("--signature", "signature", is_flag=False, flag_value="", default=None,
                     metavar="[SIG]", help="Check FILE's signature too: SIG (path or URL), by "
                     "default FILE.sig if it exists, else the embedded one."),
        click.option("--public-key", metavar="KEY", type=click.Path(dir_okay=False),
                     help="Trust signatures made with this public key (PEM)."),
        click.option("--certificate-chain", metavar="CA", multiple=True, type=click.Path(dir_okay=False),
                     help="Trust certificate signatures chaining to these CA certificates (PEM; repeatable)."),
        click.option("--identity", metavar="ID", help="Sigstore: the signer's identity (e-mail or URI)."),
        click.option("--issuer", metavar="URL", help="Sigstore: the identity's OIDC issuer."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def check_signature(file: Any, signature: str | None, public_key: str | None,
                    certificate_chain: tuple[str, ...], identity: str | None,
                    issuer: str | None) -> Any:
    """The :class:`~anemoi_ckpt.signing.Verified` for ``verify``'s options (``file``: a path or an
    open checkpoint), or None when no signature option was given. A trust option alone implies
    ``--signature``."""
    if signature is None and public_key is None and not certificate_chain and identity is None \
            and issuer is None:
        return None
    from ..signing import verify_signature

    return verify_signature(file, signature=signature or None, public_key=public_key,
                            certificate_chain=certificate_chain, identity=identity, issuer=issuer)


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
