"""Signatures with model-signing: detached and embedded, made and checked by our API and by the real
``model_signing`` command line both ways, on real files, with real keys and certificates."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

import anemoi_ckpt
from anemoi_ckpt.container.zipappend import SIGNATURE_PATH, write_with_member
from anemoi_ckpt.demo.data import demo_anemoi_metadata, demo_graph, demo_state_dict
from anemoi_ckpt.errors import IntegrityError, UsageError
from anemoi_ckpt.signing import key_fingerprint, sign, signature_info, verify_signature
from tests.conftest import one_error_line, run_cli
from tests.servers import RangeServer
from tests.signing_pki import MODEL_SIGNING, Keys, Pki, key_pair, make_pki


def model_signing(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MODEL_SIGNING, *map(str, args)], capture_output=True, text=True, timeout=120)


def statement(bundle: bytes) -> dict:
    """The in-toto statement a bundle signs, ignore_paths as a set (model-signing keeps them in a
    frozenset, so their order changes from run to run)."""
    st = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    ser = st["predicate"]["serialization"]
    ser["ignore_paths"] = sorted(ser.get("ignore_paths", []))
    return st


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("signing")


@pytest.fixture(scope="module")
def keys(folder: Path) -> Keys:
    return key_pair(folder, "signer")


@pytest.fixture(scope="module")
def pki(folder: Path) -> Pki:
    return make_pki(folder)


@pytest.fixture(scope="module")
def model(folder: Path) -> Path:
    """Every kind of member: weights, a graph section, metadata, lineage, anemoi metadata and
    supporting arrays."""
    md, arrays = demo_anemoi_metadata()
    path = folder / "model.anc"
    anemoi_ckpt.save(path, demo_state_dict(channels=8, layers=1, grid_points=32), anemoi_metadata=md,
                     supporting_arrays=arrays, sections={"graph": demo_graph(grid_points=32, hidden=8)},
                     metadata={"description": "signing tests"})
    return path


@pytest.fixture(scope="module")
def embedded(folder: Path, model: Path, keys: Keys) -> Path:
    out = folder / "embedded.anc"
    sign(model, private_key=keys.private, embed=True, output=out)
    return out


def test_detached_signature_is_model_signings_own(tmp_path: Path, model: Path, keys: Keys) -> None:
    """Ours is verified by `model_signing verify key` unchanged, signs the same statement as
    `model_signing sign key` makes, and theirs is verified by `anemoi-ckpt verify --signature`."""
    path = tmp_path / "m.anc"
    shutil.copy(model, path)
    res = sign(path, private_key=keys.private)
    assert res.output == f"{path}.sig" and not res.embedded and res.method == "key"
    assert res.signer == key_fingerprint(keys.public.read_bytes())
    ok = model_signing("verify", "key", path, "--signature", res.output, "--public_key", keys.public)
    assert ok.returncode == 0, ok.stderr

    theirs = tmp_path / "theirs.sig"
    made = model_signing("sign", "key", path, "--signature", theirs, "--private_key", keys.private)
    assert made.returncode == 0, made.stderr
    assert statement(theirs.read_bytes()) == statement(Path(res.output).read_bytes())
    out = run_cli("verify", str(path), "--signature", str(theirs), "--public-key", str(keys.public))
    assert out.returncode == 0, out.stderr
    assert f"signed by {res.signer}" in out.stdout and f"{path}: intact" in out.stdout
    # FILE.sig is the default signature
    v = verify_signature(path, public_key=keys.public)
    assert v.detached and v.signature == f"{path}.sig" and v.content_id == anemoi_ckpt.open(path).content_id


def test_embedded_signature_changes_no_member(model: Path, embedded: Path, keys: Keys) -> None:
    before, after = model.read_bytes(), embedded.read_bytes()
    directory_start = zipfile.ZipFile(model).start_dir
    assert after[:directory_start] == before[:directory_start]  # every member, header and pad kept
    with anemoi_ckpt.open(model) as a, anemoi_ckpt.open(embedded) as b:
        assert (a.uuid, a.content_id, a.manifest) == (b.uuid, b.content_id, b.manifest)
        assert set(b._members) - set(a._members) == {SIGNATURE_PATH}
        assert b.unlisted_members() == [] and b.signed_embedded and not a.signed_embedded
        report = b.verify()
        assert report.ok and report.signed_embedded
    v = verify_signature(embedded, public_key=keys.public)
    assert not v.detached and v.signer == key_fingerprint(keys.public.read_bytes())
    info = signature_info(embedded)
    assert info is not None and (info.method, info.signer, info.detached) == ("key", v.signer, False)
    assert signature_info(model) is None
    out = run_cli("verify", str(embedded))  # digests only: the signature is named, not checked
    assert out.returncode == 0 and "signed (embedded), not checked" in out.stdout


def test_resigning_replaces_the_embedded_signature(tmp_path: Path, embedded: Path, keys: Keys) -> None:
    path = tmp_path / "re.anc"
    shutil.copy(embedded, path)
    other = key_pair(tmp_path, "other")
    res = sign(path, private_key=other.private, embed=True, inplace=True)
    assert res.output == str(path)
    names = [n for n in zipfile.ZipFile(path).namelist() if n.endswith("/" + SIGNATURE_PATH)]
    assert len(names) == 1
    assert verify_signature(path, public_key=other.public).signer == key_fingerprint(other.public.read_bytes())
    with pytest.raises(IntegrityError, match="another key"):
        verify_signature(path, public_key=keys.public)


@pytest.mark.parametrize("mode", ["key", "certificate"])
def test_extracted_folder_verifies_with_model_signing(tmp_path: Path, model: Path, keys: Keys,
                                                      pki: Pki, mode: str) -> None:
    """`unzip FILE -d out && model_signing verify ... out/<root> --signature out/<root>/signature.sig`."""
    signed = tmp_path / "signed.anc"
    if mode == "key":
        sign(model, private_key=keys.private, embed=True, output=signed)
        trust = ["key", "--public_key", keys.public]
    else:
        res = sign(model, private_key=pki.signer.private, certificate=pki.leaf,
                   certificate_chain=[pki.intermediate], embed=True, output=signed)
        assert res.signer == "CN=Model Publisher <models@example.org>"
        trust = ["certificate", "--certificate_chain", pki.root]
    subprocess.run(["unzip", "-q", str(signed), "-d", str(tmp_path / "out")], check=True)
    (root,) = (tmp_path / "out").iterdir()
    check = model_signing("verify", trust[0], root, "--signature", root / SIGNATURE_PATH, *trust[1:])
    assert check.returncode == 0, check.stderr
    with (root / "metadata.json").open("r+b") as fh:  # the statement covers each member
        fh.seek(3)
        fh.write(b"#")
    check = model_signing("verify", trust[0], root, "--signature", root / SIGNATURE_PATH, *trust[1:])
    assert check.returncode != 0 and "metadata.json" in check.stderr


def test_certificate_signature_checked_against_the_ca(tmp_path: Path, model: Path, pki: Pki) -> None:
    path = tmp_path / "c.anc"
    shutil.copy(model, path)
    sign(path, private_key=pki.signer.private, certificate=pki.leaf, certificate_chain=[pki.intermediate])
    v = verify_signature(path, certificate_chain=[pki.root])
    assert (v.method, v.signer, v.detached) == ("certificate", "CN=Model Publisher <models@example.org>", True)
    ok = model_signing("verify", "certificate", path, "--signature", f"{path}.sig", "--certificate_chain", pki.root)
    assert ok.returncode == 0, ok.stderr


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def _members(path: Path) -> dict[str, tuple[int, int]]:
    with anemoi_ckpt.open(path) as ck:
        return {rel: (m.data_offset, m.size) for rel, m in ck._members.items()}


MEMBERS = ["weights.safetensors", "graph.safetensors", "metadata.json", "lineage.json", "manifest.json",
           "anemoi-metadata/anemoi.json", "SUPPORTING_ARRAY", SIGNATURE_PATH]


@pytest.mark.parametrize("member", MEMBERS)
def test_a_tampered_byte_in_any_member_is_one_line(tmp_path: Path, embedded: Path, keys: Keys,
                                                   member: str) -> None:
    path = tmp_path / "t.anc"
    shutil.copy(embedded, path)
    spans = _members(path)
    if member == "SUPPORTING_ARRAY":
        member = next(rel for rel in spans if rel.endswith(".numpy"))
    start, size = spans[member]
    if member == SIGNATURE_PATH:  # a byte of the signature value itself (inside the base64 text)
        raw = path.read_bytes()[start:start + size]
        sig = json.loads(raw)["dsseEnvelope"]["signatures"][0]["sig"]
        offset = start + raw.index(sig.encode()) + len(sig) // 2
    else:
        offset = start + size // 2
    _flip(path, offset)
    out = run_cli("verify", str(path), "--signature", "--public-key", str(keys.public))
    one_error_line(out, str(path))


def test_signature_info_and_reader_ignore_only_the_signature_member(tmp_path: Path, embedded: Path,
                                                                    keys: Keys) -> None:
    """A member added after signing is not covered: the signature check names it."""
    with anemoi_ckpt.open(embedded) as ck:
        members, root = dict(ck._members), ck.root
        bundle = ck.read_bytes(members[SIGNATURE_PATH].data_offset, members[SIGNATURE_PATH].size)
    extra = tmp_path / "extra.anc"
    write_with_member(embedded, members, root, extra, "notes.txt", b"added later")
    # put the original signature back as the last member
    with anemoi_ckpt.open(extra) as ck:
        members2 = dict(ck._members)
    final = tmp_path / "final.anc"
    write_with_member(extra, members2, root, final, SIGNATURE_PATH, bundle)
    with pytest.raises(IntegrityError, match="notes.txt is not covered by the signature"):
        verify_signature(final, public_key=keys.public)


def test_bad_signatures_are_one_line_each(tmp_path: Path, model: Path, embedded: Path, keys: Keys,
                                          pki: Pki) -> None:
    other_model = tmp_path / "other.anc"
    anemoi_ckpt.save(other_model, demo_state_dict(channels=4, layers=1, grid_points=16))
    stranger = key_pair(tmp_path, "stranger")

    # a wrong key
    out = run_cli("verify", str(embedded), "--signature", "--public-key", str(stranger.public))
    one_error_line(out, "does not verify", "another key")
    # the signature of another file: detached, and an embedded one moved into another file
    sig = tmp_path / "model.sig"
    sign(model, private_key=keys.private, output=sig)
    out = run_cli("verify", str(other_model), "--signature", str(sig), "--public-key", str(keys.public))
    one_error_line(out, str(other_model), "does not match its signature")
    with anemoi_ckpt.open(embedded) as ck:
        m = ck._members[SIGNATURE_PATH]
        bundle = ck.read_bytes(m.data_offset, m.size)
    with anemoi_ckpt.open(other_model) as ck:
        moved = tmp_path / "moved.anc"
        write_with_member(other_model, dict(ck._members), ck.root, moved, SIGNATURE_PATH, bundle)
    out = run_cli("verify", str(moved), "--signature", "--public-key", str(keys.public))
    one_error_line(out, str(moved), "the signature of another file")
    # an expired certificate, and one whose chain does not lead to the trusted CA
    expired = tmp_path / "expired.sig"
    sign(model, private_key=pki.signer.private, certificate=pki.expired_leaf,
         certificate_chain=[pki.intermediate], output=expired)
    out = run_cli("verify", str(model), "--signature", str(expired), "--certificate-chain", str(pki.root))
    one_error_line(out, "expired")
    good = tmp_path / "good.sig"
    sign(model, private_key=pki.signer.private, certificate=pki.leaf, certificate_chain=[pki.intermediate],
         output=good)
    out = run_cli("verify", str(model), "--signature", str(good), "--certificate-chain", str(pki.other_root))
    one_error_line(out, "not trusted")
    # a key signature checked as a certificate one, and an unsigned file
    out = run_cli("verify", str(embedded), "--signature", "--certificate-chain", str(pki.root))
    one_error_line(out, "signed with a key", "--public-key")
    out = run_cli("verify", str(other_model), "--signature", "--public-key", str(keys.public))
    one_error_line(out, str(other_model), "is not signed")


def _adapter(path: Path, base: Path | None) -> Path:
    """A kind-adapter file; it records ``base``'s content id when given."""
    import torch

    info: dict = {"name": "lora"}
    if base is not None:
        with anemoi_ckpt.open(base) as bk:
            info.update(base_content_id=bk.content_id, base_uuid=bk.uuid)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["layer"]}
    anemoi_ckpt.save(path, {"base_model.model.layer.lora_A.weight": torch.ones(2, 4),
                            "base_model.model.layer.lora_B.weight": torch.zeros(8, 2)},
                     kind="adapter", metadata={"peft_config": cfg, "adapter": info},
                     parents=[base] if base is not None else [])
    return path


def test_adapter_signature_binds_its_base(tmp_path: Path, model: Path, keys: Keys) -> None:
    bound = _adapter(tmp_path / "bound.anc", model)
    res = sign(bound, private_key=keys.private, embed=True, inplace=True)
    base_id = anemoi_ckpt.open(model).content_id
    assert res.base_content_id == base_id and not res.unbound
    v = verify_signature(bound, public_key=keys.public)
    assert v.base_content_id == base_id and v.bases == {"lora": base_id} and not v.unbound
    out = run_cli("verify", str(bound), "--signature", "--public-key", str(keys.public))
    assert f"signature binds base {base_id}" in out.stdout, out.stderr

    loose = _adapter(tmp_path / "loose.anc", None)
    out = run_cli("sign", str(loose), "--private-key", str(keys.private))
    one_error_line(out, "records no base content id", "--allow-unbound", rc=2)
    assert not Path(f"{loose}.sig").exists()
    out = run_cli("sign", str(loose), "--private-key", str(keys.private), "--allow-unbound", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["unbound"] is True
    v = verify_signature(loose, public_key=keys.public)
    assert v.unbound and v.base_content_id is None


def test_embedded_signature_checked_over_http_by_ranges(tmp_path: Path, embedded: Path, keys: Keys) -> None:
    shutil.copy(embedded, tmp_path / "remote.anc")
    with RangeServer(tmp_path) as server:
        v = verify_signature(server.url("remote.anc"), public_key=keys.public)
        assert not v.detached and v.signer == key_fingerprint(keys.public.read_bytes())
        sign(tmp_path / "remote.anc", private_key=keys.private)  # a detached one, read from a URL too
        v = verify_signature(server.url("remote.anc"), signature=server.url("remote.anc.sig"),
                             public_key=keys.public)
        assert v.detached and v.signature == server.url("remote.anc.sig")
    start, size = _members(tmp_path / "remote.anc")["weights.safetensors"]
    _flip(tmp_path / "remote.anc", start + size // 3)
    with RangeServer(tmp_path) as server, pytest.raises(IntegrityError, match="weights.safetensors"):
        verify_signature(server.url("remote.anc"), public_key=keys.public)


def test_sign_refuses_bad_requests(tmp_path: Path, model: Path, keys: Keys) -> None:
    with pytest.raises(UsageError, match="makes a new file"):
        sign(model, private_key=keys.private, embed=True)
    with pytest.raises(UsageError, match="nothing to sign with"):
        sign(model)
    damaged = tmp_path / "damaged.anc"
    shutil.copy(model, damaged)
    start, size = _members(damaged)["weights.safetensors"]
    _flip(damaged, start + size - 1)
    out = run_cli("sign", str(damaged), "--private-key", str(keys.private))
    one_error_line(out, "refusing to sign a damaged file")
    existing = tmp_path / "e.anc"
    shutil.copy(model, existing)
    Path(f"{existing}.sig").write_text("keep me")
    out = run_cli("sign", str(existing), "--private-key", str(keys.private))
    one_error_line(out, "already exists", "--overwrite")
    assert Path(f"{existing}.sig").read_text() == "keep me"
