"""Everything that touches the ``model-signing`` package: payloads, signers, verifiers, bundles.

Signing and the bundle format are model-signing's (OpenSSF Model Signing, OMS v1.0): an in-toto
statement listing (name, sha256) resources, in a DSSE envelope, in a Sigstore bundle. What it
cannot do is hash the inside of one file, so the manifest is built here from digests we compute
(each zip member by byte range) and handed to its payload, signer and verifier classes. Those live
in its private ``_signing`` modules (its public ``signing.Config.sign`` only takes a folder or file
path), which is why this module is the one place that names them; model-signing 1.1.x.

model-signing is an optional extra: it is imported inside the functions, and a missing install is
one line naming ``anemoi-ckpt[sign]``.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

from ..errors import AncError, IntegrityError, UsageError, one_line

#: What model-signing's own hashing ignores in a folder by default (its ``ignore_git_paths``);
#: recorded in the payload like it records them, so its verifier treats our manifest as its own.
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")

#: model-signing's serialization for a folder or a file: one sha256 per file.
SERIALIZATION = {"method": "files", "hash_type": "sha256", "allow_symlinks": False}

INSTALL_HINT = "install anemoi-ckpt[sign] (model-signing and pyopenssl)"


def require() -> Any:
    """The ``model_signing`` package, or one line saying how to install it."""
    try:
        # the private module too: an install too old (or too new) to have it is as good as none
        importlib.import_module("model_signing._signing.signing")
        return importlib.import_module("model_signing")
    except ImportError:
        raise AncError(None, "signatures need the model-signing package", INSTALL_HINT) from None


def _module(name: str) -> Any:
    """``model_signing._signing.<name>``; its certificate module needs pyopenssl, sigstore's needs
    sigstore: a missing one is the same one line."""
    require()
    try:
        return importlib.import_module(f"model_signing._signing.{name}")
    except ImportError as e:
        raise AncError(None, f"signatures need {e.name or 'a package model-signing uses'}",
                       INSTALL_HINT) from None


def payload(model_name: str, items: Sequence[tuple[str, str]], ignore: Sequence[str]) -> Any:
    """The OMS v1.0 payload over ``items`` ((identifier, sha256 hex) pairs), recorded with the
    serialization model-signing uses for a folder (or a file) ignoring ``ignore``."""
    require()
    from model_signing import manifest
    from model_signing._hashing import hashing
    from model_signing._signing import signing

    ser = manifest.SerializationType.from_args({**SERIALIZATION, "ignore_paths": sorted(ignore)})
    entries = [manifest.FileManifestItem(path=pathlib.PurePosixPath(name),
                                         digest=hashing.Digest("sha256", bytes.fromhex(hexd)))
               for name, hexd in items]
    return signing.Payload(manifest.Manifest(model_name, entries, ser))


def make_signer(path: str, *, private_key: str | None, certificate: str | None,
                certificate_chain: Sequence[str], sigstore: bool) -> tuple[Any, str]:
    """(model-signing signer, method name) for the chosen key material to sign ``path`` with. Bad
    key files are one line naming the key file."""
    require()
    if sigstore:
        if private_key or certificate:
            raise UsageError(path, "--sigstore signs with a short-lived certificate from Sigstore",
                             "drop --private-key/--certificate, or drop --sigstore")
        try:
            return _module("sign_sigstore").Signer(use_ambient_credentials=True), "sigstore"
        except AncError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, the TUF trust-root refresh fails first
            raise AncError(path, f"Sigstore keyless signing is unavailable ({one_line(str(e))[:200]})",
                           "it needs network access to Sigstore; sign with --private-key instead") from None
    if not private_key:
        raise UsageError(path, "nothing to sign with",
                         "pass --private-key KEY (with --certificate CERT for a certificate), or --sigstore")
    for p in (private_key, certificate, *certificate_chain):
        if p is not None and not os.path.isfile(p):
            raise UsageError(p, "no such file")
    try:
        if certificate:
            return _module("sign_certificate").Signer(pathlib.Path(private_key), pathlib.Path(certificate),
                                           [pathlib.Path(c) for c in certificate_chain]), "certificate"
        if certificate_chain:
            raise UsageError(path, "--certificate-chain needs --certificate (the signing certificate)")
        return _module("sign_ec_key").Signer(pathlib.Path(private_key)), "key"
    except AncError:
        raise
    except TypeError as e:  # an encrypted key without a password
        raise UsageError(private_key, f"cannot load the private key ({e})",
                         "give an unencrypted elliptic-curve PEM key") from None
    except ValueError as e:
        which = certificate if certificate and "certificate" in str(e).lower() else private_key
        raise UsageError(which, f"cannot use it for signing ({one_line(str(e))[:200]})",
                         "an elliptic-curve (P-256/384/521) PEM key, and its PEM certificate") from None


def sign_payload(signer: Any, pay: Any, path: str) -> bytes:
    """The Sigstore bundle (JSON bytes, as model-signing writes it) signing ``pay`` (for ``path``)."""
    try:
        signature = signer.sign(pay)
    except AncError:
        raise
    except Exception as e:  # noqa: BLE001 - sigstore: token or network failures
        raise AncError(path, f"signing failed ({one_line(str(e))[:200]})") from None
    return signature.bundle.to_json().encode("utf-8")


def _read_bundle(data: bytes, sigstore: bool, where: str) -> Any:
    """model-signing's signature object for bundle bytes (its readers take a path, so a private
    temporary file stands in). A bundle it cannot parse is one line."""
    cls = _module("sign_sigstore" if sigstore else "sign_sigstore_pb").Signature
    with tempfile.TemporaryDirectory(prefix="anc-sig-") as tmp:
        p = pathlib.Path(tmp, "bundle.sig")
        p.write_bytes(data)
        try:
            return cls.read(p)
        except Exception as e:  # noqa: BLE001 - pydantic, KeyError, ValueError on a damaged bundle
            raise IntegrityError(where, f"not a valid Sigstore bundle ({type(e).__name__}: "
                                 f"{one_line(str(e))[:160]})", "the signature is damaged") from None


def verified_manifest(data: bytes, where: str, *, method: str, public_key: str | None,
                      certificate_chain: Sequence[str], identity: str | None,
                      issuer: str | None) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Check the bundle's signature with the given trust material and return what it signs:
    (model name, identifier -> sha256 hex, serialization parameters). ``where`` names the
    signature in messages. Raises :class:`IntegrityError` when it does not verify."""
    for p in (public_key, *certificate_chain):
        if p is not None and not os.path.isfile(p):
            raise UsageError(p, "no such file")
    try:
        if method == "sigstore":
            verifier = _module("sign_sigstore").Verifier(identity=identity or "", oidc_issuer=issuer or "")
        elif method == "certificate":
            verifier = _module("sign_certificate").Verifier([pathlib.Path(c) for c in certificate_chain])
        else:
            verifier = _module("sign_ec_key").Verifier(pathlib.Path(public_key or ""))
    except AncError:
        raise
    except Exception as e:  # noqa: BLE001 - a bad key file, or offline Sigstore
        if method == "sigstore":
            raise AncError(where, f"cannot verify a Sigstore signature ({one_line(str(e))[:200]})",
                           "it needs network access to fetch Sigstore's trust root") from None
        raise UsageError(public_key or (certificate_chain[0] if certificate_chain else None),
                         f"cannot use it to verify ({one_line(str(e))[:200]})",
                         "an elliptic-curve PEM public key, or PEM CA certificates") from None
    bundle = _read_bundle(data, method == "sigstore", where)
    try:
        manifest = verifier.verify(bundle)
    except Exception as e:  # noqa: BLE001 - model-signing raises ValueError, OpenSSL and others
        raise IntegrityError(where, f"the signature does not verify: {_why(e, method)}") from None
    return manifest.model_name, _digests(manifest, where), dict(manifest.serialization_type)


def claimed_digests(bundle: dict[str, Any], where: str) -> dict[str, str]:
    """What the bundle's statement lists (identifier -> sha256 hex) WITHOUT checking the
    signature: for reports that compare a file with its signature when no key is given."""
    require()
    dsse_payload_to_manifest = _module("signing").dsse_payload_to_manifest
    try:
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        manifest = dsse_payload_to_manifest(statement)
    except Exception as e:  # noqa: BLE001 - model-signing raises ValueError, KeyError and others
        raise IntegrityError(where, f"the signed statement is unreadable ({one_line(str(e))[:120]})") from None
    return _digests(manifest, where)


def _digests(manifest: Any, where: str) -> dict[str, str]:
    """identifier -> sha256 hex of a model-signing manifest; other algorithms are refused."""
    digests = {rd.identifier: rd.digest.digest_hex for rd in manifest.resource_descriptors()}
    algos = {rd.digest.algorithm for rd in manifest.resource_descriptors()}
    if algos - {"sha256"}:
        raise IntegrityError(where, f"signs {', '.join(sorted(algos))} digests; anemoi-ckpt checks sha256")
    return digests


def _why(e: Exception, method: str) -> str:
    text = one_line(str(e)).strip()
    name = type(e).__name__
    if "Key mismatch" in text:
        return "it was made with another key than the given public key"
    if name == "InvalidSignature":
        return "bad signature (the signed manifest or the signature was altered, or another key)"
    if name == "X509StoreContextError":
        return f"the certificate is not trusted: {text[:200]} (its chain does not lead to the given CA)"
    if "Predicate" in text or "payload" in text.lower() or "Manifest is inconsistent" in text:
        return text[:200]
    return f"{name}: {text[:200]}" if text else name


def parse_bundle(data: bytes, where: str) -> dict[str, Any]:
    """The bundle's JSON object, or one line saying it is not one (no trust decision)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IntegrityError(where, "not a Sigstore bundle (invalid JSON)",
                             "the signature is damaged") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("verificationMaterial"), dict) \
            or not isinstance(obj.get("dsseEnvelope"), dict):
        raise IntegrityError(where, "not a Sigstore bundle with a DSSE envelope",
                             "the signature is damaged, or not made by model-signing")
    return obj
