"""Who signed each ancestor: ``lineage --verify`` and ``catalogue show --signatures`` on a real
chain base -> adapter -> merged -> fine-tune, where the base is signed by certificate (embedded,
our signer), the adapter by key (detached, the real ``model_signing`` CLI), the merge and the
fine-tune not at all; then with one file tampered, and with trust material that does not match."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import anemoi_ckpt
from anemoi_ckpt.adapters import merge
from anemoi_ckpt.lineage.signers import TrustPolicy
from anemoi_ckpt.signing import key_fingerprint
from tests.conftest import one_error_line, run_cli
from tests.signed_chain import embed_certificate, flip_tensor_byte, make_adapter, make_base, sign_with_cli
from tests.signing_pki import Keys, Pki, key_pair, make_pki

PUBLISHER = "CN=Model Publisher <models@example.org>"


@dataclass
class Chain:
    dir: Path
    pki: Pki
    team: Keys
    base: Path  # certificate, embedded
    lora: Path  # key, detached (model_signing CLI)
    merged: Path  # unsigned; its lineage records the two verified signatures
    final: Path  # unsigned fine-tune of merged

    def uuid(self, path: Path) -> str:
        with anemoi_ckpt.open(path) as ck:
            return ck.uuid

    def team_fp(self) -> str:
        return key_fingerprint(self.team.public.read_bytes())


@pytest.fixture(scope="module")
def chain_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chain")
    (d / "keys").mkdir()
    pki, team = make_pki(d / "keys"), key_pair(d / "keys", "team")
    files = d / "files"
    files.mkdir()
    base = embed_certificate(make_base(files / "base.anc"), pki)
    sign_with_cli(make_adapter(files / "lora.anc", base), team)
    merge(base, [files / "lora.anc"], files / "merged.anc",
          require_signed=TrustPolicy(public_keys=[team.public], certificate_chain=[pki.root]))
    with anemoi_ckpt.open(files / "merged.anc") as ck:
        weights = {k: v.clone() + 0.5 for k, v in ck.state_dict().items()}
    anemoi_ckpt.save(files / "final.anc", weights, parents=[files / "merged.anc"], operation="fine-tune")
    return d


@pytest.fixture
def chain(chain_once: Path, tmp_path: Path) -> Chain:
    d = tmp_path / "c"
    shutil.copytree(chain_once, d)
    k, f = d / "keys", d / "files"
    pki = Pki(k / "root.crt", k / "intermediate.crt", k / "leaf.crt", Keys(k / "publisher.pem", k / "publisher.pub"),
              k / "expired.crt", k / "other-root.crt")
    return Chain(d, pki, Keys(k / "team.pem", k / "team.pub"), f / "base.anc", f / "lora.anc",
                 f / "merged.anc", f / "final.anc")


def ancestors(out: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    return {a["uuid"]: a for a in json.loads(out.stdout)["ancestors"]}


def test_lineage_verify_reports_claimed_signers_without_trust(chain: Chain) -> None:
    out = run_cli("lineage", str(chain.final), "--verify", "--search", str(chain.base.parent))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # The tree shows the signatures merge verified (recorded in merged's lineage).
    assert any(f"signed by {PUBLISHER} (embedded)" in ln and "create" in ln for ln in lines[:4])
    report = lines[lines.index("") + 1:]
    at = {ln.split()[1]: i for i, ln in enumerate(report) if ln.startswith("  found")}
    sig = lambda path: report[at[chain.uuid(path)[:8]] + 1].strip()  # noqa: E731 - the line below
    assert sig(chain.merged) == "unsigned"
    assert sig(chain.base) == (f"signed by {PUBLISHER} (embedded), valid; the signer is not checked "
                               "against a trust root (give --public-key or --certificate-chain)")
    assert sig(chain.lora) == (f"signed by {chain.team_fp()} (detached), not checked: give --public-key "
                               "to check a key signature")
    assert report[-1].endswith("3 ancestors: 3 found, 0 different, 0 missing")


def test_lineage_verify_with_trust_material(chain: Chain) -> None:
    args = ["lineage", str(chain.final), "--verify", "--search", str(chain.base.parent), "--json",
            "--public-key", str(chain.team.public)]
    good = run_cli(*args, "--certificate-chain", str(chain.pki.root))
    assert good.returncode == 0, good.stderr
    got = {u: a["signature"] for u, a in ancestors(good).items()}
    assert got[chain.uuid(chain.merged)]["state"] == "unsigned"
    assert (got[chain.uuid(chain.base)]["state"], got[chain.uuid(chain.base)]["method"]) == ("trusted", "certificate")
    assert (got[chain.uuid(chain.lora)]["state"], got[chain.uuid(chain.lora)]["signer"]) == ("trusted", chain.team_fp())
    # A CA that issued none of it: the base's sound signature is by someone not trusted.
    bad = run_cli(*args, "--certificate-chain", str(chain.pki.other_root))
    one_error_line(bad, f"{chain.final}: 1 ancestor(s) have an invalid or untrusted signature: "
                        f"{chain.uuid(chain.base)[:8]}")
    base = ancestors(bad)[chain.uuid(chain.base)]["signature"]
    assert base["state"] == "untrusted" and "not trusted" in base["why"]


def test_lineage_verify_tampered_ancestor(chain: Chain) -> None:
    flip_tensor_byte(chain.lora)
    out = run_cli("lineage", str(chain.final), "--verify", "--search", str(chain.base.parent), "--json")
    line = one_error_line(out, "1 ancestor(s) differ from their record",
                          "1 ancestor(s) have an invalid or untrusted signature")
    assert line.count(chain.uuid(chain.lora)[:8]) == 2
    lora = ancestors(out)[chain.uuid(chain.lora)]
    assert lora["status"] == "different" and "damaged" in lora["why"]
    assert lora["signature"]["state"] == "invalid"
    assert "does not match its signature" in lora["signature"]["why"]


def test_catalogue_show_signatures(chain: Chain) -> None:
    db = chain.dir / "cat.db"
    files = [chain.base, chain.lora, chain.merged, chain.final]
    assert run_cli("catalogue", "register", *map(str, files), "--catalogue", str(db)).returncode == 0
    plain = run_cli("catalogue", "show", chain.uuid(chain.final), "--catalogue", str(db))
    assert plain.returncode == 0 and "signatures:" not in plain.stdout  # reads no file unless asked

    text = run_cli("catalogue", "show", chain.uuid(chain.final), "--catalogue", str(db), "--signatures")
    assert text.returncode == 0, text.stderr
    rows = text.stdout[text.stdout.index("signatures:"):].splitlines()[1:]
    row = {ln.split()[0]: ln for ln in rows}
    assert row[chain.uuid(chain.final)[:8]].split()[1:] == ["self", str(chain.final), "unsigned"]
    assert row[chain.uuid(chain.base)[:8]].endswith(f"signed by {PUBLISHER} (embedded), valid; the signer "
                                                    "is not checked against a trust root (give --public-key "
                                                    "or --certificate-chain)")

    trusted = run_cli("catalogue", "show", chain.uuid(chain.final), "--catalogue", str(db), "--json",
                      "--public-key", str(chain.team.public), "--certificate-chain", str(chain.pki.root))
    assert trusted.returncode == 0, trusted.stderr
    sigs = {d["uuid"]: d for d in json.loads(trusted.stdout)["signatures"]}
    assert [d["relation"] for d in json.loads(trusted.stdout)["signatures"]] == ["self", "ancestor", "ancestor", "ancestor"]
    assert {u: d["signature"]["state"] for u, d in sigs.items()} == {
        chain.uuid(chain.final): "unsigned", chain.uuid(chain.merged): "unsigned",
        chain.uuid(chain.base): "trusted", chain.uuid(chain.lora): "trusted"}

    # The adapter tampered where the catalogue locates it, the merge's file gone.
    flip_tensor_byte(chain.lora)
    merged_uuid = chain.uuid(chain.merged)
    chain.merged.unlink()
    out = run_cli("catalogue", "show", chain.uuid(chain.final), "--catalogue", str(db), "--json", "--signatures")
    one_error_line(out, f"{chain.uuid(chain.final)}: 1 checkpoint(s) with an invalid or untrusted signature: "
                        f"{chain.uuid(chain.lora)[:8]}")
    sigs = {d["uuid"]: d for d in json.loads(out.stdout)["signatures"]}
    assert sigs[chain.uuid(chain.lora)]["signature"]["state"] == "invalid"
    assert sigs[merged_uuid]["location"] is None and sigs[merged_uuid]["signature"] is None


def test_assess_without_a_catalogue(chain: Chain) -> None:
    """The Python API: a copy renamed still judged by its own signature; a detached signature of
    another file is invalid, not unsigned."""
    from anemoi_ckpt.lineage.signers import status_of

    policy = TrustPolicy(public_keys=[chain.team.public])
    assert status_of(chain.lora, policy).state == "trusted"
    assert status_of(chain.base, policy).state == "untrusted"  # a certificate, and no CA given
    shutil.copy(f"{chain.lora}.sig", f"{chain.merged}.sig")
    st = status_of(chain.merged, policy)
    assert st.state == "invalid" and st.signer == chain.team_fp() and st.form == "detached"
    with pytest.raises(anemoi_ckpt.UsageError, match="no such file"):
        status_of(chain.lora, TrustPolicy(public_keys=[chain.dir / "missing.pub"]))
