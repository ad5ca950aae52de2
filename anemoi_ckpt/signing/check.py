"""``verify_signature`` (a trust decision) and ``signature_info`` (what a signature claims).

Verification is model-signing's: its verifier checks the bundle's signature with the key, CA
chain or Sigstore identity given and returns the signed statement; what is checked here is that
the statement describes these bytes. Detached: one resource ``.`` whose sha256 is the whole file's.
Embedded: one resource per zip member (signature member excepted), no member missing or extra,
each member's sha256 equal; the digests are taken by byte ranges, so a URL is checked remotely.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..container.urls import is_url, local_path
from ..container.zipappend import SIGNATURE_PATH
from ..errors import IntegrityError, UsageError
from . import backend, identity
from .members import MAX_BUNDLE, bases, embedded_bundle, file_digest, member_digests, single_base

if TYPE_CHECKING:
    from ..reader import Checkpoint


@dataclass
class Verified:
    path: str
    #: who signed: ``sha256:<hex>`` (key), the certificate subject, or ``identity (issuer)``
    signer: str
    #: ``key``, ``certificate`` or ``sigstore``
    method: str
    #: True for ``FILE.sig`` beside the file, False for the embedded member
    detached: bool
    #: where the signature was read from
    signature: str
    uuid: str
    content_id: str
    #: the base content id the signed bytes bind (adapters, deltas), else None
    base_content_id: str | None
    #: adapter name -> base content id, for every adapter the file holds
    bases: dict[str, str | None]
    #: an adapter or delta whose signature binds no base
    unbound: bool
    #: ``sha256:<hex>`` of the signature bundle's bytes: which signature this is (lineage records it)
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SignatureInfo:
    """What a signature claims, with no trust decision (for reports)."""
    method: str
    signer: str
    detached: bool
    signature: str
    #: ``sha256:<hex>`` of the bundle's bytes, as :attr:`Verified.digest`
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bundle_digest(data: bytes) -> str:
    """``sha256:<hex>`` of a signature bundle's bytes: names one signature (two signatures by the
    same signer over the same file differ, ECDSA being randomised)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _trust_method(public_key: Any, chain: Sequence[Any], ident: Any, issuer: Any) -> str:
    given = [m for m, on in (("key", public_key is not None), ("certificate", bool(chain)),
                             ("sigstore", ident is not None or issuer is not None)) if on]
    if not given:
        raise UsageError(None, "say whom to trust", "pass --public-key KEY, --certificate-chain CA, "
                         "or --identity ID --issuer URL")
    if len(given) > 1:
        raise UsageError(None, f"give one kind of trust, not {' and '.join(given)}")
    if given[0] == "sigstore" and (ident is None or issuer is None):
        raise UsageError(None, "a Sigstore signature is checked against both --identity and --issuer")
    return given[0]


def _read_signature(location: str) -> bytes:
    """A detached signature from a path or a URL."""
    if is_url(location) and local_path(location) is None:
        from ..container.rangefile import RangeFile

        rf = RangeFile(location)
        try:
            if rf.size > MAX_BUNDLE:
                raise IntegrityError(location, f"{rf.size} bytes is too large for a signature")
            return rf.pread(0, rf.size)
        finally:
            rf.close()
    path = local_path(location) or location
    try:
        if os.path.getsize(path) > MAX_BUNDLE:
            raise IntegrityError(location, "too large for a signature")
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise UsageError(location, "no such file") from None
    except IsADirectoryError:
        raise UsageError(location, "is a folder, not a signature") from None


def locate_signature(ck: "Checkpoint", signature: str | os.PathLike | None) -> tuple[bytes, str, bool]:
    """(bundle bytes, where, detached). Default: ``FILE.sig`` beside a local file, else the
    embedded member."""
    if signature is not None:
        where = os.fspath(signature)
        return _read_signature(where), where, True
    local = local_path(ck.path)
    if local is not None and os.path.isfile(local + ".sig"):
        return _read_signature(local + ".sig"), ck.path + ".sig", True
    data = embedded_bundle(ck)
    if data is None:
        raise IntegrityError(ck.path, "is not signed (no embedded signature and no "
                             f"{os.path.basename(ck.path)}.sig beside it)",
                             "sign it with 'anemoi-ckpt sign', or give the signature with --signature SIG")
    return data, f"{ck.path}: {SIGNATURE_PATH}", False


def _with_checkpoint(target: "str | os.PathLike | Checkpoint", fn: Any) -> Any:
    from ..reader import Checkpoint, open_checkpoint

    if isinstance(target, Checkpoint):
        return fn(target)
    with open_checkpoint(target) as ck:
        return fn(ck)


def verify_signature(target: "str | os.PathLike | Checkpoint", *,
                     signature: str | os.PathLike | None = None,
                     public_key: str | os.PathLike | None = None,
                     certificate_chain: Sequence[str | os.PathLike] = (),
                     identity: str | None = None, issuer: str | None = None) -> Verified:
    """Check the signature of an ``.anc`` (path, URL or open :class:`Checkpoint`) against one kind
    of trust: a public key, CA certificates, or a Sigstore identity and issuer. ``signature``: a
    detached bundle (path or URL); default ``FILE.sig`` if it exists, else the embedded member.
    Raises :class:`IntegrityError` (not signed, altered, wrong key, untrusted or expired
    certificate, another file's signature) or :class:`UsageError`, each one line."""
    want = _trust_method(public_key, certificate_chain, identity, issuer)
    chain = [os.fspath(c) for c in certificate_chain]
    pub = None if public_key is None else os.fspath(public_key)
    return _with_checkpoint(target, lambda ck: _verify(ck, signature, want, pub, chain, identity, issuer))


def _verify(ck: "Checkpoint", signature: Any, want: str, pub: str | None, chain: list[str],
            ident: str | None, issuer: str | None) -> Verified:
    data, where, detached = locate_signature(ck, signature)
    bundle = backend.parse_bundle(data, where)
    have = identity.method_of(bundle)
    if have != want:
        flag = {"key": "--public-key", "certificate": "--certificate-chain",
                "sigstore": "--identity/--issuer"}.get(have)
        raise IntegrityError(where, f"signed with {_article(have)} ({identity.signer_of(bundle)}), "
                             f"not {_article(want)}", f"check it with {flag}" if flag else None)
    if have == "certificate":
        gone = identity.expired(bundle)
        if gone is not None:
            raise IntegrityError(where, f"the signing certificate chain has expired ({gone[0]} "
                                 f"expired {gone[1]:%Y-%m-%d %H:%M} UTC)", "re-sign with a valid certificate")
    _name, signed, ser = backend.verified_manifest(data, where, method=want, public_key=pub,
                                                   certificate_chain=chain, identity=ident, issuer=issuer)
    if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
        raise IntegrityError(where, f"signed with serialization {ser.get('method')}/"
                             f"{ser.get('hash_type')}; anemoi-ckpt checks files/sha256")
    if detached:
        match_file(ck, signed, where)
    else:
        match_members(ck, signed, where)
    found = bases(ck)
    return Verified(ck.path, identity.signer_of(bundle), have, detached, where, ck.uuid, ck.content_id,
                    single_base(found), found, any(b is None for b in found.values()), bundle_digest(data))


def _article(method: str) -> str:
    return {"key": "a key", "certificate": "a certificate", "sigstore": "Sigstore"}.get(method, method)


def match_file(ck: "Checkpoint", signed: dict[str, str], where: str) -> None:
    if set(signed) != {"."}:
        raise IntegrityError(where, f"signs a folder of {len(signed)} file(s), not this one file",
                             "the signature of another model")
    if file_digest(ck) != signed["."]:
        raise IntegrityError(ck.path, "does not match its signature (the file was altered, or the "
                             f"signature {where} is another file's)")


def match_members(ck: "Checkpoint", signed: dict[str, str], where: str) -> None:
    actual = member_digests(ck)
    extra = sorted(set(actual) - set(signed))
    if extra:
        raise IntegrityError(ck.path, f"member {extra[0]} is not covered by the signature",
                             "a member was added after signing")
    missing = sorted(set(signed) - set(actual))
    if missing:
        raise IntegrityError(ck.path, f"the signature covers {missing[0]}, which the file lacks",
                             "the signature of another file, or a member was removed")
    for rel in sorted(actual):
        if actual[rel] != signed[rel]:
            raise IntegrityError(ck.path, "differs from the signed bytes (altered after signing, or "
                                 "the signature of another file)", section=rel)


def signature_info(target: "str | os.PathLike | Checkpoint", *, detached: bool = True) -> SignatureInfo | None:
    """What the file's signature claims (method, signer), without checking it: ``FILE.sig``
    beside a local file (``detached``), else the embedded member, the order
    :func:`verify_signature` uses; None when unsigned. A damaged bundle is one
    :class:`IntegrityError` line."""
    def info(ck: "Checkpoint") -> SignatureInfo | None:
        data, where, is_detached = None, "", False
        local = local_path(ck.path)
        if detached and local is not None and os.path.isfile(local + ".sig"):
            data, where, is_detached = _read_signature(local + ".sig"), ck.path + ".sig", True
        if data is None:
            data, where = embedded_bundle(ck), f"{ck.path}: {SIGNATURE_PATH}"
        if data is None:
            return None
        bundle = backend.parse_bundle(data, where)
        return SignatureInfo(identity.method_of(bundle), identity.signer_of(bundle), is_detached, where,
                             bundle_digest(data))

    return _with_checkpoint(target, info)
