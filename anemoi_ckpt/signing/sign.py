"""``sign``: a detached Sigstore bundle beside an ``.anc``, or one embedded in it.

Detached (``FILE.sig``): model-signing's statement over the single file, exactly what
``model_signing sign key FILE --signature FILE.sig`` makes (resource ``.``, the file's sha256), so
``model_signing verify`` checks it unchanged. Embedded: a statement over every zip member, written
as the member ``<root>/signature.sig`` after all the others (docs/format.md, "Signatures (1.2)").

A file is checked (:func:`anemoi_ckpt.verify`) before it is signed: a signature vouches for the
content, and signing damage would make it look intended.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..container.atomic import atomic_output
from ..container.urls import local_path
from ..container.zipappend import SIGNATURE_PATH, write_with_member
from ..errors import IntegrityError, UsageError
from ..output_path import check_output
from ..reader import open_checkpoint
from . import backend, identity
from .members import bases, file_digest, member_digests, single_base


@dataclass
class SignResult:
    #: the file that was signed
    path: str
    #: where the signature went: ``PATH.sig`` (detached) or the signed ``.anc`` (embedded)
    output: str
    embedded: bool
    #: ``key``, ``certificate`` or ``sigstore``
    method: str
    #: who signed, as :func:`verify_signature` will report it (key fingerprint, certificate subject)
    signer: str
    uuid: str
    content_id: str
    #: the base content id the adapters record (one), None for a plain model or an unbound adapter
    base_content_id: str | None
    #: adapter name -> recorded base content id, for every adapter the file holds
    bases: dict[str, str | None]
    #: an adapter or delta signed although it records no base (``allow_unbound``)
    unbound: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign(path: str | os.PathLike, *, private_key: str | os.PathLike | None = None,
         certificate: str | os.PathLike | None = None,
         certificate_chain: Sequence[str | os.PathLike] = (), sigstore: bool = False,
         embed: bool = False, output: str | os.PathLike | None = None, inplace: bool = False,
         overwrite: bool = False, allow_unbound: bool = False) -> SignResult:
    """Sign the ``.anc`` at ``path``. Detached by default (``output`` defaults to ``PATH.sig``);
    ``embed=True`` writes a signed copy to ``output``, or replaces ``path`` atomically with
    ``inplace=True`` (or ``overwrite=True`` and no other ``output``). An existing output is kept
    unless ``overwrite``; re-signing replaces an embedded signature. An adapter or delta that
    records no base content id is refused unless ``allow_unbound``. Raises
    :class:`~anemoi_ckpt.errors.AncError` (one line) on bad input."""
    text = os.fspath(path)
    local = local_path(text)
    if local is None:
        raise UsageError(text, "only a local file can be signed", "download it first ('anemoi-ckpt fetch')")
    out = _output(text, embed, output, inplace, overwrite)
    signer, method = backend.make_signer(
        text, private_key=_s(private_key), certificate=_s(certificate),
        certificate_chain=[os.fspath(c) for c in certificate_chain], sigstore=sigstore)
    with open_checkpoint(local) as ck:
        report = ck.verify(progress=None)  # a bar on a terminal, for large files
        if not report.ok:
            bad = ", ".join(s.path for s in report.damaged) or "content id"
            raise IntegrityError(text, f"refusing to sign a damaged file ({bad})", "run 'anemoi-ckpt verify'")
        found = bases(ck)
        unbound = [name for name, base in found.items() if base is None]
        if unbound and not allow_unbound:
            raise UsageError(text, f"adapter {unbound[0]!r} records no base content id, so a "
                             "signature could not bind the base it applies to",
                             "pass --allow-unbound to sign it anyway")
        if embed:
            pay = backend.payload(ck.root, sorted(member_digests(ck).items()),
                                  (*backend.GIT_PATHS, SIGNATURE_PATH))
        else:
            pay = backend.payload(os.path.basename(local), [(".", file_digest(ck))], backend.GIT_PATHS)
        bundle = backend.sign_payload(signer, pay, text)
        members, root, uuid, cid = dict(ck._members), ck.root, ck.uuid, ck.content_id
    if embed:
        write_with_member(local, members, root, out, SIGNATURE_PATH, bundle)
    else:
        with atomic_output(out) as fh:
            fh.write(bundle)
    signer_text = identity.signer_of(backend.parse_bundle(bundle, out))
    return SignResult(text, out, embed, method, signer_text, uuid, cid, single_base(found),
                      found, bool(unbound))


def _s(p: str | os.PathLike | None) -> str | None:
    return None if p is None else os.fspath(p)


def _output(path: str, embed: bool, output: str | os.PathLike | None, inplace: bool,
            overwrite: bool) -> str:
    """Where the signature goes, checked before any work."""
    if inplace and not embed:
        raise UsageError(path, "--inplace applies to an embedded signature", "add --embed")
    if embed:
        same = output is None or os.path.abspath(os.fspath(output)) == os.path.abspath(path)
        if inplace and not same:
            raise UsageError(path, "give either -o OUT or --inplace, not both")
        # Replacing the input is consent enough when asked for either way: --inplace, or
        # --overwrite with no other output.
        if inplace or (same and overwrite):
            return path
        if output is None:
            raise UsageError(path, "an embedded signature makes a new file",
                             "give -o OUT.anc, or --inplace to replace this file")
        if same:
            raise UsageError(path, "the output is the input", "use --inplace to sign the file in place")
        return check_output(os.fspath(output), overwrite=overwrite)
    out = os.fspath(output) if output is not None else path + ".sig"
    return check_output(out, overwrite=overwrite)
