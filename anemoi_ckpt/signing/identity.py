"""Who a Sigstore bundle says signed it, read from its verification material (no trust decision).

Pure functions over the bundle's JSON and certificates; ``cryptography`` (installed with
model-signing) is imported where a certificate must be decoded.

- a key signature carries the sha256 of the public key's PEM (model-signing's key "hint"): shown
  as ``sha256:<hex>``, the same fingerprint :func:`key_fingerprint` gives for a public key file;
- a certificate signature carries the signing certificate and its chain: shown as the leaf's
  subject, with its e-mail or URI subject alternative name if it has one;
- a Sigstore (keyless) signature carries a short-lived certificate whose SAN is the OIDC identity
  and whose Fulcio extension is the issuer: shown as ``identity (issuer)``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

#: Fulcio's certificate extensions for the OIDC issuer (v2: DER UTF8String; v1: raw bytes).
_FULCIO_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"
_FULCIO_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"


def method_of(bundle: dict[str, Any]) -> str:
    """``key``, ``certificate`` or ``sigstore``: how the bundle says it was signed."""
    vm = bundle.get("verificationMaterial") or {}
    if "publicKey" in vm:
        return "key"
    if "certificate" in vm or vm.get("tlogEntries"):
        return "sigstore"  # Sigstore's certificates are short-lived and logged in Rekor
    if "x509CertificateChain" in vm:
        return "certificate"
    return "unknown"


def certificates(bundle: dict[str, Any]) -> list[Any]:
    """The bundle's certificates, signing certificate first (cryptography ``x509.Certificate``)."""
    from cryptography import x509

    vm = bundle.get("verificationMaterial") or {}
    raw: list[str] = []
    if isinstance(vm.get("certificate"), dict):
        raw.append(vm["certificate"].get("rawBytes", ""))
    chain = vm.get("x509CertificateChain")
    if isinstance(chain, dict):
        raw += [c.get("rawBytes", "") for c in chain.get("certificates") or [] if isinstance(c, dict)]
    return [x509.load_der_x509_certificate(base64.b64decode(r)) for r in raw if r]


def signer_of(bundle: dict[str, Any]) -> str:
    """The display string for who signed (see the module docstring)."""
    method = method_of(bundle)
    if method == "key":
        hint = (bundle["verificationMaterial"].get("publicKey") or {}).get("hint")
        return f"sha256:{hint}" if hint else "a key (no fingerprint recorded)"
    try:
        certs = certificates(bundle)
    except Exception:  # noqa: BLE001 - a damaged certificate: still a report, not a crash
        return f"{method} (unreadable certificate)"
    if not certs:
        return f"{method} (no certificate)"
    leaf = certs[0]
    if method == "sigstore":
        ident = _san(leaf) or leaf.subject.rfc4514_string()
        issuer = _fulcio_issuer(leaf)
        return f"{ident} ({issuer})" if issuer else ident
    subject = leaf.subject.rfc4514_string()
    san = _san(leaf)
    return f"{subject} <{san}>" if san and san not in subject else subject


def _san(cert: Any) -> str | None:
    from cryptography import x509

    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = ext.get_values_for_type(x509.RFC822Name) + ext.get_values_for_type(
        x509.UniformResourceIdentifier)
    return names[0] if names else None


def _fulcio_issuer(cert: Any) -> str | None:
    from cryptography import x509

    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        if oid in (_FULCIO_ISSUER_V2, _FULCIO_ISSUER_V1) and isinstance(ext.value, x509.UnrecognizedExtension):
            value = ext.value.value
            if oid == _FULCIO_ISSUER_V2 and len(value) > 2 and value[0] == 0x0C:
                value = value[2:]  # DER UTF8String, short form length
            return value.decode("utf-8", "replace")
    return None


def key_fingerprint(public_key_pem: bytes) -> str:
    """``sha256:<hex>`` of a public key, as model-signing records it (sha256 of its PEM
    SubjectPublicKeyInfo encoding). Accepts a public key or a private key PEM."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        key = serialization.load_pem_private_key(public_key_pem, None).public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def expired(bundle: dict[str, Any], now: dt.datetime | None = None) -> tuple[str, dt.datetime] | None:
    """(subject, expiry) of the first certificate in the bundle's chain that has expired by
    ``now``, else None. A Sigstore certificate lives minutes; its validity at signing time is
    what Rekor's timestamp proves, so only ``certificate`` signatures are checked this way."""
    now = now or dt.datetime.now(dt.timezone.utc)
    for cert in certificates(bundle):
        if cert.not_valid_after_utc < now:
            return cert.subject.rfc4514_string(), cert.not_valid_after_utc
    return None
