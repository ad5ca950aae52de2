"""Checks of a signature that need no trust root, for the reports of :mod:`.signers`:

- a certificate (or Sigstore) signature is checked with the key of the certificate the bundle
  carries: the bytes are what that certificate's key signed (anyone can make a certificate, so
  this is no trust decision);
- a key signature carries only the key's fingerprint, so without the key nothing cryptographic
  can be checked; but the signed statement can be compared with the file, which shows a file
  altered since signing, or another file's signature.

Both use model-signing's own verifier and statement parser (through :mod:`anemoi_ckpt.signing`);
the comparison with the file's bytes is :mod:`anemoi_ckpt.signing.check`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AncError, UsageError, one_line

if TYPE_CHECKING:
    from ..reader import Checkpoint
    from .signers import SignerStatus


def sound(ck: "Checkpoint", st: "SignerStatus", data: bytes, bundle: dict[str, Any]) -> bool:
    """Does the signature hold together without a trust root (see the module docstring)? Sets
    ``st.why`` and ``st.error`` when not."""
    if st.method == "key":
        return _claims_match(ck, st, bundle)
    return _own_certificate_verifies(ck, st, data, bundle)


def key_named(keys: Sequence[str], fingerprint: str | None) -> str | None:
    """The given public key whose fingerprint the signature names (model-signing's key hint)."""
    from ..signing import key_fingerprint

    for k in keys:
        try:
            with open(k, "rb") as fh:
                if key_fingerprint(fh.read()) == fingerprint:
                    return k
        except FileNotFoundError:
            raise UsageError(k, "no such file") from None
        except (OSError, ValueError) as e:
            raise UsageError(k, f"not a PEM public key ({one_line(str(e))[:120]})") from None
    return None


def _own_certificate_verifies(ck: "Checkpoint", st: SignerStatus, data: bytes,
                               bundle: dict[str, Any]) -> bool:
    """Does the signature verify with the public key of the certificate the bundle carries, and
    describe these bytes? (No trust decision: anyone can make a certificate.) Sets ``st.why``."""
    from cryptography.hazmat.primitives import serialization

    from ..signing import backend, identity
    from ..signing.check import match_file, match_members

    try:
        certs = identity.certificates(bundle)
    except Exception as e:  # noqa: BLE001 - a damaged certificate is a verdict, not a crash
        st.why = f"{st.signature}: unreadable certificate ({one_line(str(e))[:120]})"
        return False
    if not certs:
        st.why = f"{st.signature}: no certificate in the signature"
        return False
    pem = certs[0].public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    # The DSSE signature covers the statement only, not the verification material: the same
    # bundle with the certificate's key named in place of the certificates is what model-signing's
    # key verifier checks, with that key.
    as_key = dict(bundle, verificationMaterial={"publicKey": {"hint": hashlib.sha256(pem).hexdigest()},
                                                "tlogEntries": []})
    rebound = json.dumps(as_key).encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="anc-leaf-") as tmp:
        key = os.path.join(tmp, "leaf.pub")
        with open(key, "wb") as fh:
            fh.write(pem)
        try:
            _name, signed, _ser = backend.verified_manifest(
                rebound, st.signature or ck.path, method="key", public_key=key, certificate_chain=(),
                identity=None, issuer=None)
            (match_file if st.form == "detached" else match_members)(ck, signed, st.signature or ck.path)
        except AncError as e:
            st.why, st.error = e.line(), e
            return False
    return True


def _claims_match(ck: "Checkpoint", st: SignerStatus, bundle: dict[str, Any]) -> bool:
    """Do the bytes match what the signed statement lists? Without the key the signature itself
    cannot be checked, but a file altered since signing (or another file's signature) shows.
    Sets ``st.why``/``st.error`` when not."""
    from ..signing import backend
    from ..signing.check import match_file, match_members

    where = st.signature or ck.path
    try:  # a damaged statement is a verdict, not a crash
        signed = backend.claimed_digests(bundle, where)
        (match_file if st.form == "detached" else match_members)(ck, signed, where)
    except AncError as e:
        st.why, st.error = e.line(), e
        return False
    return True
