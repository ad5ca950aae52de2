"""Signatures at their edges: any corrupted byte of a signed file, Sigstore without a network,
model-signing missing, and ``import anemoi_ckpt`` staying free of it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import anemoi_ckpt
from anemoi_ckpt.container.zipappend import SIGNATURE_PATH, write_with_member
from anemoi_ckpt.errors import AncError
from anemoi_ckpt.signing import sign, verify_signature
from tests.conftest import one_error_line, run_cli
from tests.signing_pki import Keys, key_pair


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keys]:
    folder = tmp_path_factory.mktemp("edges")
    keys = key_pair(folder, "k")
    path = folder / "s.anc"
    anemoi_ckpt.save(path, {"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3)},
                     metadata={"description": "edges"})
    out = run_cli("sign", str(path), "--private-key", str(keys.private), "--embed", "--inplace", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["embedded"] is True
    return path, keys


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_of_a_signed_member_fails(tmp_path: Path, signed: tuple[Path, Keys],
                                                    data: st.DataObject) -> None:
    """A byte changed anywhere in a member the signature covers (every member but the signature)
    is never accepted: an AncError (the reader's, or the signature check's), nothing else."""
    path, keys = signed
    with anemoi_ckpt.open(path) as ck:
        spans = sorted((m.data_offset, m.size, rel) for rel, m in ck._members.items()
                       if rel != SIGNATURE_PATH and m.size)
    start, size, rel = data.draw(st.sampled_from(spans), label="member")
    offset = start + data.draw(st.integers(0, size - 1), label="offset")
    xor = data.draw(st.integers(1, 255), label="xor")
    raw = bytearray(path.read_bytes())
    raw[offset] ^= xor
    bad = tmp_path / "bad.anc"
    bad.write_bytes(bytes(raw))
    with pytest.raises(AncError):
        verify_signature(bad, public_key=keys.public)


def _network() -> bool:
    try:
        socket.create_connection(("tuf-repo-cdn.sigstore.dev", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network(), reason="checks the offline failure; this machine reaches Sigstore")
def test_sigstore_offline_is_one_line(signed: tuple[Path, Keys]) -> None:
    path, _ = signed
    out = run_cli("sign", str(path), "--sigstore", "-o", str(path.with_suffix(".sigstore.sig")))
    one_error_line(out, "Sigstore", "network")
    sig = path.with_suffix(".fake.sig")  # a well-formed keyless bundle is not needed to fail first
    sig.write_text(json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                               "verificationMaterial": {"certificate": {"rawBytes": ""},
                                                        "tlogEntries": []},
                               "dsseEnvelope": {"payload": "", "payloadType": "", "signatures": []}}))
    out = run_cli("verify", str(path), "--signature", str(sig), "--identity", "me@example.org",
                  "--issuer", "https://accounts.example.org")
    one_error_line(out, "Sigstore", "network")


def test_without_model_signing_one_line_names_the_extra(signed: tuple[Path, Keys]) -> None:
    path, keys = signed
    code = ("import sys; sys.modules['model_signing'] = None\n"  # as if not installed
            "from anemoi_ckpt.cli.main import main\n"
            f"sys.argv = ['anemoi-ckpt', 'verify', {str(path)!r}, '--signature', '--public-key', "
            f"{str(keys.public)!r}]\nmain()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    one_error_line(out, "model-signing", "anemoi-ckpt[sign]")
    out = run_cli("verify", str(path))  # digests alone never need it
    assert out.returncode == 0


def test_import_and_plain_verify_never_load_model_signing(signed: tuple[Path, Keys]) -> None:
    path, _ = signed
    code = (f"import sys, anemoi_ckpt, anemoi_ckpt.signing\n"
            f"ck = anemoi_ckpt.open({str(path)!r}); assert ck.verify().ok and ck.signed_embedded\n"
            f"info = anemoi_ckpt.signing.signature_info(ck)\n"
            f"assert info.method == 'key', info\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('model_signing', 'sigstore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_cli_sign_paths(tmp_path: Path, signed: tuple[Path, Keys]) -> None:
    path, keys = signed
    copy = tmp_path / "c.anc"
    shutil.copy(path, copy)
    out = run_cli("sign", str(copy), "--private-key", str(keys.private), "--embed")
    one_error_line(out, "makes a new file", "--inplace", rc=2)
    out = run_cli("sign", str(copy), "--private-key", str(keys.private), "--embed", "-o", str(path))
    one_error_line(out, "already exists", "--overwrite")
    out = run_cli("sign", str(copy), "--private-key", str(tmp_path / "missing.pem"))
    one_error_line(out, "missing.pem", rc=2)
    out = run_cli("sign", str(copy), "--private-key", str(keys.public))
    one_error_line(out, str(keys.public), rc=2)
    out = run_cli("sign", str(copy), "--private-key", str(keys.private), "-o", str(tmp_path / "x.sig"))
    assert out.returncode == 0 and "(detached, key sha256:" in out.stdout, out.stderr
    v = verify_signature(copy, signature=tmp_path / "x.sig", public_key=keys.public)
    assert v.detached


@pytest.mark.parametrize("content, problem", [
    (b"anything at all", "not a Sigstore bundle (invalid JSON)"),
    (b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "verificationMaterial": {},'
     b' "hidden": "data"}', "unexpected key 'hidden'"),
])
def test_plain_verify_refuses_a_signature_member_that_is_no_bundle(tmp_path: Path, signed: tuple[Path, Keys],
                                                                   content: bytes, problem: str) -> None:
    """The one member the manifest may omit is no hiding place: plain verify checks its shape."""
    path, _ = signed
    with anemoi_ckpt.open(path) as ck:
        members, root = dict(ck._members), ck.root
    bad = tmp_path / "smuggled.anc"
    write_with_member(path, members, root, bad, SIGNATURE_PATH, content)
    out = run_cli("verify", str(bad))
    one_error_line(out, f"section {SIGNATURE_PATH}: {problem}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tensors=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
                               st.lists(st.floats(allow_nan=False, width=32), min_size=0, max_size=9),
                               min_size=1, max_size=4),
       description=st.text(max_size=40))
def test_embedding_round_trip(tmp_path: Path, signed: tuple[Path, Keys], tensors: dict, description: str) -> None:
    """Any file signed with --embed keeps every member's bytes, reads the same and verifies."""
    _, keys = signed
    src, out = tmp_path / "src.anc", tmp_path / "out.anc"
    anemoi_ckpt.save(src, {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()},
                     metadata={"description": description})
    res = sign(src, private_key=keys.private, embed=True, output=out, overwrite=True)
    with anemoi_ckpt.open(src) as a, anemoi_ckpt.open(out) as b:
        for rel, m in a._members.items():
            n = b._members[rel]
            assert a.read_bytes(m.data_offset, m.size) == b.read_bytes(n.data_offset, n.size)
        assert (a.uuid, a.content_id) == (b.uuid, b.content_id) == (res.uuid, res.content_id)
        assert b.verify().ok
    assert verify_signature(out, public_key=keys.public).content_id == res.content_id


def test_signature_info_names_a_sigstore_identity() -> None:
    """A keyless bundle is reported as 'identity (issuer)' from its Fulcio-style certificate (the
    SAN and the issuer extension), with no network and no trust decision."""
    import base64
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ObjectIdentifier

    from anemoi_ckpt.signing.identity import method_of, signer_of

    key = ec.generate_private_key(ec.SECP256R1())
    issuer = b"https://token.actions.githubusercontent.com"
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(minutes=10))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                "https://github.com/ecmwf/models/.github/workflows/publish.yml@refs/heads/main")]), critical=True)
            .add_extension(x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.57264.1.8"),
                                                      bytes([0x0C, len(issuer)]) + issuer), critical=False)
            .sign(key, hashes.SHA256()))
    raw = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
              "verificationMaterial": {"certificate": {"rawBytes": raw}, "tlogEntries": [{}]},
              "dsseEnvelope": {}}
    assert method_of(bundle) == "sigstore"
    assert signer_of(bundle) == ("https://github.com/ecmwf/models/.github/workflows/publish.yml@refs/heads/main"
                                 " (https://token.actions.githubusercontent.com)")
