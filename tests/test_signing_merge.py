"""``merge --require-signed``: real signed files (our embedded signatures by key and by
certificate, a detached one made by the real ``model_signing`` CLI), a real merge; each refusal is
one line, exit 1, nothing written; the output's lineage names the verified signers."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import anemoi_ckpt
from anemoi_ckpt.adapters import merge
from anemoi_ckpt.errors import IntegrityError, UsageError
from anemoi_ckpt.lineage.signers import TrustPolicy
from anemoi_ckpt.signing import key_fingerprint, sign
from tests.conftest import one_error_line, run_cli
from tests.signed_chain import (bundle_digest, embed_certificate, embed_key, flip_tensor_byte,
                                make_adapter, make_base, sign_with_cli)
from tests.signing_pki import Keys, Pki, key_pair, make_pki


@dataclass
class Signed:
    dir: Path
    publisher: Keys  # signs the base (embedded)
    team: Keys  # signs adapters (detached, with model_signing's CLI)
    base: Path
    lora: Path  # made for base, signed by team
    stranger: Path  # made for another base, signed by team
    unsigned: Path  # made for base, never signed

    def pub(self, *keys: Keys) -> list[str]:
        return [a for k in keys for a in ("--public-key", str(k.public))]


@pytest.fixture(scope="module")
def signed_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signed")
    publisher, team = key_pair(d, "publisher"), key_pair(d, "team")
    base = embed_key(make_base(d / "base.anc"), publisher)
    sign_with_cli(make_adapter(d / "lora.anc", base), team)
    other = make_base(d / "other-base.anc", seed=5)
    sign_with_cli(make_adapter(d / "stranger.anc", other, name="stranger"), team)
    make_adapter(d / "unsigned.anc", base, name="unsigned", seed=3)
    return d


@pytest.fixture
def signed(signed_once: Path, tmp_path: Path) -> Signed:
    """A private copy of the signed files (tests alter them)."""
    d = tmp_path / "files"
    shutil.copytree(signed_once, d)
    return Signed(d, Keys(d / "publisher.pem", d / "publisher.pub"), Keys(d / "team.pem", d / "team.pub"),
                  d / "base.anc", d / "lora.anc", d / "stranger.anc", d / "unsigned.anc")


def test_merged_lineage_names_the_verified_signers(signed: Signed) -> None:
    out = signed.dir / "merged.anc"
    res = run_cli("merge", str(signed.base), str(signed.lora), "-o", str(out), "--require-signed",
                  *signed.pub(signed.publisher, signed.team), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert [(s["path"], s["state"], s["form"]) for s in report["signed"]] == \
        [(str(signed.base), "trusted", "embedded"), (str(signed.lora), "trusted", "detached")]
    with anemoi_ckpt.open(out) as ck:
        refs = ck.lineage.records[0].parents
        got = [(r.signature.signer, r.signature.method, r.signature.form, r.signature.digest) for r in refs]
    assert got == [(key_fingerprint(signed.publisher.public.read_bytes()), "key", "embedded",
                    bundle_digest(signed.base)),
                   (key_fingerprint(signed.team.public.read_bytes()), "key", "detached",
                    bundle_digest(signed.lora))]
    # Same weights as a merge that asked for nothing: signatures change the lineage only.
    plain = merge(signed.base, [signed.lora], signed.dir / "plain.anc")
    assert plain.content_id == report["content_id"]
    with anemoi_ckpt.open(signed.dir / "plain.anc") as ck:
        assert [r.signature for r in ck.lineage.records[0].parents] == [None, None]
    tree = run_cli("lineage", str(out)).stdout.splitlines()
    assert tree[1].endswith(f"signed by {key_fingerprint(signed.publisher.public.read_bytes())[:19]} (embedded)")


def test_python_api_with_a_certificate_and_a_key(signed: Signed) -> None:
    (signed.dir / "pki").mkdir()
    pki: Pki = make_pki(signed.dir / "pki")
    cert_base = embed_certificate(make_base(signed.dir / "cert-base.anc"), pki)  # same weights as base
    policy = TrustPolicy(public_keys=[signed.team.public], certificate_chain=[pki.root])
    report = merge(cert_base, [signed.lora], signed.dir / "m.anc", require_signed=policy)
    with anemoi_ckpt.open(report.path) as ck:
        sig = ck.lineage.records[0].parents[0].signature
    assert (sig.method, sig.form) == ("certificate", "embedded")
    assert "CN=Model Publisher" in sig.signer and "models@example.org" in sig.signer
    # A CA that issued none of these: the base's signer is not trusted.
    untrusted = TrustPolicy(public_keys=[signed.team.public], certificate_chain=[pki.other_root])
    with pytest.raises(IntegrityError, match="cert-base.anc: is signed by CN=Model Publisher"):
        merge(cert_base, [signed.lora], signed.dir / "n.anc", require_signed=untrusted)
    assert not (signed.dir / "n.anc").exists()
    # The right CA, but the certificate has expired: a sound signature, not trusted.
    expired = make_base(signed.dir / "expired-base.anc")
    sign(expired, private_key=pki.signer.private, certificate=pki.expired_leaf,
         certificate_chain=[pki.intermediate], embed=True, inplace=True)
    with pytest.raises(IntegrityError, match=r"expired-base.anc: is signed by CN=Model Publisher "
                                             r"\(embedded\), the signing certificate chain has expired"):
        merge(expired, [signed.lora], signed.dir / "n.anc", require_signed=policy)
    assert not (signed.dir / "n.anc").exists()
    with pytest.raises(UsageError, match="--force and --require-signed"):
        merge(cert_base, [signed.lora], signed.dir / "n.anc", require_signed=policy, force=True)


def _refused(signed: Signed, *args: str, fragments: tuple[str, ...]) -> str:
    out = signed.dir / "out.anc"
    line = one_error_line(run_cli("merge", *args, "-o", str(out)), *fragments)
    assert not out.exists()
    return line


def test_refused_unsigned_adapter(signed: Signed) -> None:
    _refused(signed, str(signed.base), str(signed.unsigned), "--require-signed",
             *signed.pub(signed.publisher, signed.team),
             fragments=(f"{signed.unsigned}: is not signed",))


def test_refused_unsigned_base(signed: Signed) -> None:
    plain = make_base(signed.dir / "plain-base.anc")  # the same weights, so lora was made for it
    _refused(signed, str(plain), str(signed.lora), "--require-signed", *signed.pub(signed.publisher, signed.team),
             fragments=(f"{plain}: is not signed",))


def test_refused_tampered_adapter(signed: Signed) -> None:
    flip_tensor_byte(signed.lora)
    _refused(signed, str(signed.base), str(signed.lora), "--require-signed", *signed.pub(signed.publisher, signed.team),
             fragments=(f"{signed.lora}: does not match its signature",))


def test_refused_signature_of_another_file(signed: Signed) -> None:
    shutil.copy(f"{signed.stranger}.sig", f"{signed.lora}.sig")  # valid, by team, over stranger.anc
    _refused(signed, str(signed.base), str(signed.lora), "--require-signed", *signed.pub(signed.publisher, signed.team),
             fragments=(str(signed.lora), "signature"))


def test_refused_adapter_signed_for_another_base(signed: Signed) -> None:
    with anemoi_ckpt.open(signed.base) as ck:
        base_cid = ck.content_id
    line = _refused(signed, str(signed.base), str(signed.stranger), "--require-signed",
                    *signed.pub(signed.publisher, signed.team),
                    fragments=(f"{signed.stranger}: adapter 'stranger' is signed for base content id",
                               f"not {base_cid} (base.anc)"))
    assert "--force" not in line  # the unsigned merge's way out does not apply


def test_refused_signer_not_trusted(signed: Signed) -> None:
    team = key_fingerprint(signed.team.public.read_bytes())
    _refused(signed, str(signed.base), str(signed.lora), "--require-signed", *signed.pub(signed.publisher),
             fragments=(f"{signed.lora}: is signed by {team} (detached), not one of the given public keys",))


def test_usage_errors(signed: Signed) -> None:
    base, lora = str(signed.base), str(signed.lora)
    _refused_usage = lambda *a: one_error_line(run_cli("merge", base, lora, *a), rc=2)  # noqa: E731
    assert "needs whom to trust" in _refused_usage("--require-signed")
    assert "apply with --require-signed" in _refused_usage(*signed.pub(signed.team))
