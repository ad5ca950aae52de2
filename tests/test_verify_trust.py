"""``verify --signature`` takes the same repeatable trust options as ``merge --require-signed``,
``lineage --verify`` and ``catalogue show``: with several, the signature must verify with the one
matching how it was made. Real keys, the real CLI, the frozen signed golden files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, one_error_line, run_cli
from tests.signing_pki import Keys, key_pair, make_pki

SIGNED = FIXTURES / "format-1.2" / "signed"
KEY = str(SIGNED / "signing-key.pub")
SIGNER = json.loads((SIGNED / "expected.json").read_text())["minimal-signed.anc"]["signer"]


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> list[Keys]:
    folder = tmp_path_factory.mktemp("strangers")
    return [key_pair(folder, "a"), key_pair(folder, "b")]


def verify(*args: str) -> tuple[int, str, str]:
    out = run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--signature", *args)
    return out.returncode, out.stdout, out.stderr


def test_one_of_several_keys_is_the_signers(strangers: list[Keys]) -> None:
    for order in ([str(strangers[0].public), KEY, str(strangers[1].public)], [KEY, str(strangers[0].public)]):
        rc, stdout, stderr = verify(*[a for k in order for a in ("--public-key", k)])
        assert rc == 0, stderr
        assert f"signature ok (key, embedded): signed by {SIGNER}" in stdout


def test_none_of_several_keys_is_one_line(strangers: list[Keys]) -> None:
    out = run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--public-key", str(strangers[0].public),
                  "--public-key", str(strangers[1].public))
    one_error_line(out, "signature.sig", SIGNER, "none of the 2 public keys given")
    # one wrong key: model-signing's own check says so, as before
    one_error_line(run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--public-key",
                           str(strangers[0].public)), "minimal-signed.anc")


def test_key_and_certificate_chain_together(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    rc, stdout, stderr = verify("--public-key", KEY, "--certificate-chain", str(pki.root))
    assert rc == 0 and f"signed by {SIGNER}" in stdout, stderr
    # the CA alone does not vouch for a key signature
    out = run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--certificate-chain", str(pki.root),
                  "--identity", "me@example.org", "--issuer", "https://accounts.example.org")
    one_error_line(out, "signed with a key", "no --public-key was given")


def test_a_missing_key_file_is_a_usage_error(tmp_path: Path) -> None:
    out = run_cli("verify", str(SIGNED / "minimal-signed.anc"), "--public-key", KEY,
                  "--public-key", str(tmp_path / "nope.pub"))
    one_error_line(out, "nope.pub", "no such file", rc=2)
