"""Who signed a file, and whether that signer is trusted: what ``lineage --verify`` and
``catalogue show`` report for each ancestor, and what ``merge --require-signed`` demands.

The cryptography is :mod:`anemoi_ckpt.signing`'s (model-signing underneath). This module only
decides, per file, which of its verdicts applies:

- ``trusted``: the signature verifies with the trust material given (a public key whose
  fingerprint the signature names, a CA chain, a Sigstore identity);
- ``valid``: no trust material was given, and the signature verifies with the certificate the
  bundle carries: the bytes are what that certificate's key signed, but nobody vouched for the
  certificate;
- ``unchecked``: a key signature with no key given (a key bundle carries only the key's
  fingerprint, so nothing can be checked without the key), or Sigstore offline;
- ``untrusted``: signed by someone other than the given keys/CA (or an expired certificate),
  with a signature that is otherwise sound;
- ``invalid``: the signature does not verify, or does not describe these bytes;
- ``unsigned``: no embedded signature member and no ``FILE.sig`` beside the file.

The signature looked at is the one ``verify --signature`` checks by default: ``FILE.sig`` beside
a local file, else the embedded member.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..container.schema import SignatureRef
from ..container.urls import local_path
from ..errors import AncError, IntegrityError, UsageError, one_line

if TYPE_CHECKING:
    from ..reader import Checkpoint
    from ..signing import Verified
    from .verify import AncestorStatus

#: Verdicts that fail ``lineage --verify`` (``untrusted`` only counts when trust material was given).
BAD = ("invalid", "untrusted")


@dataclass(frozen=True)
class TrustPolicy:
    """Whom to trust. Several public keys may be given (a publisher's and a team's); a CA chain
    and a Sigstore identity may be given beside them: each file is checked with the material that
    matches how it was signed."""

    public_keys: tuple[str, ...] = ()
    certificate_chain: tuple[str, ...] = ()
    identity: str | None = None
    issuer: str | None = None

    def __post_init__(self) -> None:
        # Paths given as PathLike or a list become a tuple of str: hashable, printable.
        object.__setattr__(self, "public_keys", tuple(os.fspath(k) for k in self.public_keys))
        object.__setattr__(self, "certificate_chain", tuple(os.fspath(c) for c in self.certificate_chain))
        if (self.identity is None) != (self.issuer is None):
            raise UsageError(None, "a Sigstore signer is given by both --identity and --issuer")
        for p in (*self.public_keys, *self.certificate_chain):
            if not os.path.isfile(p):  # before any file is judged: a typo is not a verdict
                raise UsageError(p, "no such file")

    @property
    def given(self) -> bool:
        return bool(self.public_keys or self.certificate_chain or self.identity)


@dataclass
class SignerStatus:
    """One file's signature as the reports show it (see the module docstring for ``state``)."""

    state: str
    signer: str | None = None
    method: str | None = None  # key, certificate, sigstore
    form: str | None = None  # embedded, detached
    digest: str | None = None  # sha256:<hex> of the signature bundle's bytes
    signature: str | None = None  # where it was read
    why: str | None = None
    path: str | None = None  # the file judged
    verified: "Verified | None" = field(default=None, repr=False)
    error: AncError | None = field(default=None, repr=False)  # the one-line error behind ``why``

    def to_dict(self) -> dict[str, Any]:
        # Not asdict(): it would deep-copy the Verified and the exception kept beside the verdict.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("verified", "error")}

    def fail(self, state: str, e: AncError) -> None:
        self.state, self.why, self.error = state, e.line(), e

    def text(self) -> str:
        head = f"signed by {self.signer} ({self.form})"
        if self.state == "trusted":
            return one_line(f"{head}, valid, trusted")
        if self.state == "valid":
            return one_line(f"{head}, valid; the signer is not checked against a trust root "
                            "(give --public-key or --certificate-chain)")
        if self.state == "unchecked":
            return one_line(f"{head}, not checked: {self.why}")
        if self.state == "untrusted":
            return one_line(f"{head}, NOT trusted: {self.why}")
        if self.state == "invalid":
            return one_line(f"signature INVALID: {self.why}")
        return "unsigned"

    def ref(self) -> SignatureRef:
        """The lineage form of a trusted signature (``ParentRef.signature``)."""
        assert self.signer and self.method and self.form and self.digest
        return SignatureRef(signer=self.signer, method=self.method, form=self.form, digest=self.digest)


def _signed(ck: "Checkpoint") -> bool:
    from ..signing import SIGNATURE_PATH

    local = local_path(ck.path)
    return SIGNATURE_PATH in ck._members or (local is not None and os.path.isfile(local + ".sig"))


def assess(ck: "Checkpoint", policy: TrustPolicy | None = None) -> SignerStatus:
    """The verdict on ``ck``'s signature under ``policy`` (None: no trust material). Never raises
    for a problem with the file or its signature: that is the ``invalid`` verdict."""
    if not _signed(ck):
        return SignerStatus("unsigned", path=ck.path)
    from ..signing import backend, identity
    from ..signing.check import bundle_digest, locate_signature

    try:
        data, where, detached = locate_signature(ck, None)
        bundle = backend.parse_bundle(data, where)
    except AncError as e:
        return SignerStatus("invalid", why=e.line(), path=ck.path, error=e)
    st = SignerStatus("unchecked", identity.signer_of(bundle), identity.method_of(bundle),
                      "detached" if detached else "embedded",
                      bundle_digest(data), where, path=ck.path)
    policy = policy or TrustPolicy()
    try:
        _decide(ck, st, policy, data, bundle, where if detached else None)
    except UsageError:
        raise  # a bad key or CA file given by the caller: not a verdict on this file
    except AncError as e:
        st.fail("invalid", e)
    return st


def _decide(ck: "Checkpoint", st: SignerStatus, policy: TrustPolicy, data: bytes,
            bundle: dict[str, Any], sig: str | None) -> None:
    from ..signing import verify_signature
    from .signature_checks import key_named, sound

    def verify(**trust: Any) -> None:
        st.verified = verify_signature(ck, signature=sig, **trust)
        # The digest a trusted verdict (and merge's lineage) records is that of the bundle that
        # verified, not of the one read before, should the signature file change in between.
        st.state, st.digest = "trusted", st.verified.digest

    def untrusted(why: str) -> None:
        # Not the signer asked for; but a signature that does not describe these bytes, or does
        # not verify with its own certificate, is invalid whoever made it.
        if sound(ck, st, data, bundle):
            st.state, st.why = "untrusted", why
        else:
            st.state = "invalid"

    if not policy.given:
        if sound(ck, st, data, bundle):
            st.state, st.why = ("unchecked", "give --public-key to check a key signature") \
                if st.method == "key" else ("valid", None)
        else:
            st.state = "invalid"
        return
    if st.method == "key":
        key = key_named(policy.public_keys, st.signer)
        if key is None:
            untrusted("not one of the given public keys")
            return
        try:
            verify(public_key=key)
        except IntegrityError as e:
            st.fail("invalid", e)
    elif st.method == "certificate":
        if not policy.certificate_chain:
            untrusted("signed with a certificate and no --certificate-chain was given")
            return
        try:
            verify(certificate_chain=policy.certificate_chain)
        except IntegrityError as e:
            # A sound signature by a certificate the CA did not issue (or an expired one) is
            # untrusted; one that does not verify even with its own certificate is invalid.
            if sound(ck, st, data, bundle):
                what = e.what.removeprefix("the signature does not verify: ")
                st.fail("untrusted", IntegrityError(e.file, what, e.hint, section=e.section))
            else:
                st.state = "invalid"  # why and error: the check with the certificate's own key
    elif st.method == "sigstore":
        if policy.identity is None:
            untrusted("signed with Sigstore and no --identity/--issuer was given")
            return
        try:
            verify(identity=policy.identity, issuer=policy.issuer)
        except IntegrityError as e:
            st.fail("invalid", e)
        except UsageError:
            raise
        except AncError as e:  # offline: Sigstore's trust root cannot be fetched
            st.fail("unchecked", e)
    else:
        st.state, st.why = "invalid", f"{st.signature}: a signature of unknown kind"


def status_of(location: str | os.PathLike, policy: TrustPolicy | None = None) -> SignerStatus:
    """:func:`assess` on a file given by path or URL; an unreadable file is ``invalid``."""
    from ..reader import open_checkpoint

    try:
        with open_checkpoint(location) as ck:
            return assess(ck, policy)
    except UsageError:
        raise
    except AncError as e:
        return SignerStatus("invalid", why=e.line(), path=os.fspath(location), error=e)


def require_trusted(ck: "Checkpoint", policy: TrustPolicy) -> SignerStatus:
    """The ``trusted`` verdict on ``ck``, or one line saying why not (unsigned, bad signature,
    signer not trusted): what ``merge --require-signed`` asks of every input."""
    st = assess(ck, policy)
    if st.state == "trusted":
        return st
    if st.state == "unsigned":
        raise IntegrityError(ck.path, "is not signed, and --require-signed needs every input signed",
                             "sign it with 'anemoi-ckpt sign', or put its FILE.sig beside it")
    if st.state == "invalid":
        if st.error is not None:
            raise st.error  # already one line naming the file or its signature
        raise IntegrityError(ck.path, f"bad signature: {st.why}")
    what = "is signed" if st.state == "untrusted" else "has a signature that could not be checked"
    why = st.error.what if st.error is not None else st.why
    raise IntegrityError(ck.path, f"{what} by {st.signer} ({st.form}), {why}",
                         "give the signer's key with --public-key, or its CA with --certificate-chain")


def verify_trusted(ck: "Checkpoint", policy: TrustPolicy, signature: str | None = None) -> "Verified":
    """:func:`~anemoi_ckpt.signing.verify_signature` of ``ck``'s signature (``signature``, or the
    default one) with the material in ``policy`` that matches how it was signed: among several
    public keys the one whose fingerprint it names, else the CA chain or the Sigstore identity.
    What ``verify --signature`` does with its (repeatable) trust options. Raises as
    ``verify_signature`` does, and :class:`IntegrityError` when none of the material applies."""
    from ..signing import backend, identity, verify_signature
    from ..signing.check import locate_signature
    from .signature_checks import key_named

    trust: dict[str, Any] = {"public_key": None, "certificate_chain": policy.certificate_chain,
                             "identity": policy.identity, "issuer": policy.issuer}
    kinds = sum((bool(policy.public_keys), bool(policy.certificate_chain), policy.identity is not None))
    if kinds <= 1 and len(policy.public_keys) <= 1:
        # One kind, one key (or none: verify_signature says whom to trust): its own checks and
        # messages apply unchanged, a wrong key included.
        trust["public_key"] = policy.public_keys[0] if policy.public_keys else None
        return verify_signature(ck, signature=signature, **trust)
    data, where, _ = locate_signature(ck, signature)
    bundle = backend.parse_bundle(data, where)
    method, signer = identity.method_of(bundle), identity.signer_of(bundle)
    flag = {"key": "--public-key", "certificate": "--certificate-chain", "sigstore": "--identity/--issuer"}
    if method == "key" and policy.public_keys:
        trust = {"public_key": key_named(policy.public_keys, signer)}
        if trust["public_key"] is None:
            raise IntegrityError(where, f"signed by {signer}, which is none of the "
                                 f"{len(policy.public_keys)} public keys given",
                                 "give the signer's key with --public-key")
    elif method == "certificate" and policy.certificate_chain:
        trust = {"certificate_chain": policy.certificate_chain}
    elif method == "sigstore" and policy.identity is not None:
        trust = {"identity": policy.identity, "issuer": policy.issuer}
    else:
        what = {"key": "a key", "certificate": "a certificate", "sigstore": "Sigstore"}.get(method, method)
        raise IntegrityError(where, f"signed with {what} ({signer}), and no {flag.get(method, 'trust option')} "
                             "was given for it")
    return verify_signature(ck, signature=signature, **trust)


def judge_ancestors(statuses: Sequence["AncestorStatus"], policy: TrustPolicy | None = None) -> list["AncestorStatus"]:
    """Fill ``signature`` (a :class:`SignerStatus` dict) of each ``.anc`` ancestor found on disk
    (as recorded, or different: a tampered file's signature is worth reporting too); return those
    whose signature is invalid, or not trusted under the given trust material."""
    bad = []
    for s in statuses:
        if s.uuid is None or s.path is None or s.status not in ("found", "different"):
            continue  # legacy sources are not .anc files; missing ones have nothing to check
        st = status_of(s.path, policy)
        s.signature = st.to_dict()
        if st.state in BAD:
            bad.append(s)
    return bad


def signature_text(signature: dict[str, Any]) -> str:
    """:meth:`SignerStatus.text` of a status's dict form."""
    return SignerStatus(**signature).text()
