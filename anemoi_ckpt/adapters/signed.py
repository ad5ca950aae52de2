"""``merge --require-signed``: every input carries a signature that verifies with the trust
material given, and every adapter's signature binds the base it is merged into.

The signature of an adapter or delta covers its ``metadata.json``, where the base content id it
was made for is recorded (:mod:`anemoi_ckpt.signing`), so a signed adapter cannot be presented
as made for another base without breaking its signature. What passes is recorded in the output's
lineage: each parent reference carries the verified signer, method, form and bundle digest
(``ParentRef.signature``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import IntegrityError
from ..lineage.build import SignedParent
from ..lineage.signers import SignerStatus, TrustPolicy, require_trusted

if TYPE_CHECKING:
    from ..reader import Checkpoint


def check_signed_inputs(base: "Checkpoint", files: Sequence["Checkpoint"],
                        policy: TrustPolicy) -> list[SignerStatus]:
    """The trusted verdicts on ``base`` and each of ``files``, in that order; or one line naming
    the first file that is unsigned, badly signed, signed by someone not trusted, or an adapter
    whose signature binds another base (or none)."""
    out = [require_trusted(base, policy)]
    for ck in files:
        st = require_trusted(ck, policy)
        assert st.verified is not None
        for name, bound in st.verified.bases.items():
            if bound is None:
                raise IntegrityError(ck.path, f"adapter {name!r} is signed without binding a base "
                                     "(it records no base content id)",
                                     "--require-signed needs each adapter signed for its base")
            if bound != base.content_id:
                raise IntegrityError(ck.path, f"adapter {name!r} is signed for base content id "
                                     f"{bound}, not {base.content_id} ({os.path.basename(base.path)})",
                                     "it was made and signed for another base")
        out.append(st)
    return out


def lineage_parents(base: "Checkpoint", files: Sequence["Checkpoint"],
                    signed: Sequence[SignerStatus] | None) -> list[Any]:
    """The merge's parents for its lineage block, each with its verified signature if any."""
    parents: list[Any] = [base, *files]
    if signed is None:
        return parents
    return [SignedParent(p, st.ref()) for p, st in zip(parents, signed)]
