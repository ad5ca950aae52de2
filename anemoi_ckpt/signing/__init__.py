"""Signatures for ``.anc`` files, made and checked with OpenSSF Model Signing (``model-signing``).

The API (docs/signing.md for the user's view, docs/format.md "Signatures (1.2)" for the bytes):

``sign(path, *, private_key=None, certificate=None, certificate_chain=(), sigstore=False,
embed=False, output=None, inplace=False, overwrite=False, allow_unbound=False) -> SignResult``
    Detached by default: ``PATH.sig`` (or ``output``), the Sigstore bundle
    ``model_signing sign key PATH --signature PATH.sig`` would make. ``embed=True``: a copy of the
    file with the member ``<root>/signature.sig`` added (to ``output``, or replacing ``path`` with
    ``inplace=True``); uuid, content id and every member byte unchanged. Key material: an EC
    private key (PEM); with ``certificate`` (+ ``certificate_chain``) a certificate signature;
    ``sigstore=True`` keyless (needs network). Refuses a damaged file, and an adapter or delta
    that records no base content id unless ``allow_unbound``.

``verify_signature(path_or_checkpoint, *, signature=None, public_key=None, certificate_chain=(),
identity=None, issuer=None) -> Verified``
    A trust decision with exactly one of: ``public_key``; ``certificate_chain`` (CA
    certificates; expired chains refused); ``identity`` + ``issuer`` (Sigstore). ``signature``
    defaults to ``FILE.sig`` beside a local file, else the embedded member. Works on URLs (byte
    ranges). ``Verified``: ``.signer`` (``sha256:<hex>`` key fingerprint, certificate subject, or
    ``identity (issuer)``), ``.method`` (key/certificate/sigstore), ``.detached``, ``.signature``,
    ``.uuid``, ``.content_id``, ``.base_content_id`` (the base an adapter/delta binds, else None),
    ``.bases`` (adapter name -> base id), ``.unbound``, ``.digest`` (``sha256:<hex>`` of the
    bundle's bytes: which signature it was), ``.to_dict()``.
    Raises ``IntegrityError`` (unsigned, altered member, wrong key, other file's signature,
    untrusted or expired certificate) or ``UsageError`` (bad arguments), one line each.

``signature_info(path_or_checkpoint, *, detached=True) -> SignatureInfo | None``
    What the signature claims (``.method``, ``.signer``, ``.detached``, ``.signature``,
    ``.digest``) with no trust decision, for reports; None for an unsigned file.

``key_fingerprint(pem_bytes) -> "sha256:<hex>"``: a public (or private) key's fingerprint, the
form ``Verified.signer`` takes for key signatures.

``SIGNATURE_PATH``: the embedded member's path under the root folder (``signature.sig``).

Nothing here imports model-signing until a signature is made or checked; without it, one line
says to install ``anemoi-ckpt[sign]``.
"""

from __future__ import annotations

from ..container.zipappend import SIGNATURE_PATH
from .check import SignatureInfo, Verified, signature_info, verify_signature
from .identity import key_fingerprint
from .sign import SignResult, sign

__all__ = ["SIGNATURE_PATH", "SignResult", "SignatureInfo", "Verified", "key_fingerprint", "sign",
           "signature_info", "verify_signature"]
